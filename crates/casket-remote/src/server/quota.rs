//! The server's quota on a disk store: every write reserves its room first; when the store
//! would go over, least-recently-used objects are evicted (down to a low-water mark, so that
//! eviction runs rarely); when eviction cannot make room, the write gets RESOURCE_EXHAUSTED.
//!
//! Accounting is exact ([`DiskStore::track_usage`]: allocated blocks of every object linked or
//! removed), and in-flight writes hold reservations, so usage never exceeds the quota. Eviction
//! is [`casket_tree::maintenance::gc`]: it never removes an object used within the grace period — which
//! covers blobs just uploaded, found by FindMissingBlobs, or referenced by an action result,
//! ref or asset that was just stored or read — nor the trees of recently used refs. A blob
//! being read is never cut short: readers hold the file open, and an unlinked file stays
//! readable until they close it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use casket_store::{DiskRefs, DiskStore, SpaceBudget, SpaceHold, StoreError, Usage};
use casket_tree::maintenance::{GcOptions, gc};
use tonic::Status;

use super::metrics::Metrics;
use crate::status::from_tree;

/// Space is reserved in whole file-system blocks.
const BLOCK: u64 = 4096;

/// How a quota behaves.
#[derive(Clone, Copy, Debug)]
pub struct QuotaOptions {
    /// Most bytes (allocated on disk) the store may use; `None` only tracks usage.
    pub limit: Option<u64>,
    /// Objects used within this period are never evicted.
    pub grace: Duration,
    /// Eviction frees down to this fraction of the limit, so it runs rarely.
    pub low_water: f64,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        QuotaOptions {
            limit: None,
            grace: Duration::from_secs(600),
            low_water: 0.9,
        }
    }
}

/// A disk store's quota. See the module documentation.
#[derive(Debug)]
pub struct Quota {
    store: DiskStore,
    refs: DiskRefs,
    options: QuotaOptions,
    /// Bytes reserved by writes in flight.
    reserved: Arc<AtomicU64>,
    /// One eviction at a time.
    evicting: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

/// Room held for a write in flight; released when dropped (the write's blocks are then in
/// the store's usage, or it failed).
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    reserved: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Quota {
    /// Starts exact accounting of `store` (one scan) under `options`.
    pub async fn new(
        store: &DiskStore,
        options: QuotaOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, casket_store::StoreError> {
        let scanning = store.clone();
        tokio::task::spawn_blocking(move || scanning.track_usage())
            .await
            .map_err(|e| casket_store::StoreError::Task(e.to_string()))??;
        Ok(Quota {
            store: store.clone(),
            refs: DiskRefs::new(store),
            options,
            reserved: Arc::default(),
            evicting: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// The store's exact usage now.
    pub fn usage(&self) -> Usage {
        self.store.tracked_usage().unwrap_or_default()
    }

    /// The limit, if there is one.
    pub fn limit(&self) -> Option<u64> {
        self.options.limit
    }

    /// Reserves room for `bytes` of new data, evicting first if needed.
    pub(crate) async fn reserve(&self, bytes: u64) -> Result<Reservation, Status> {
        let need = bytes.div_ceil(BLOCK) * BLOCK;
        let Some(limit) = self.options.limit else {
            return Ok(self.hold(need));
        };
        if need > limit {
            // Over max_cas_blob_size_bytes, which Capabilities advertises as the quota.
            return Err(Status::invalid_argument(format!(
                "a {bytes}-byte blob does not fit in the {limit}-byte quota"
            )));
        }
        if let Some(reservation) = self.try_hold(need, limit) {
            return Ok(reservation);
        }
        let _one_at_a_time = self.evicting.lock().await;
        if let Some(reservation) = self.try_hold(need, limit) {
            return Ok(reservation);
        }
        self.evict(need, limit).await?;
        self.try_hold(need, limit).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "the store is full ({} of {limit} bytes used, {} reserved) and everything left \
                 was used within the last {} s",
                self.usage().stored_bytes,
                self.reserved.load(Ordering::Relaxed),
                self.options.grace.as_secs()
            ))
        })
    }

    fn hold(&self, need: u64) -> Reservation {
        self.reserved.fetch_add(need, Ordering::Relaxed);
        Reservation {
            bytes: need,
            reserved: self.reserved.clone(),
        }
    }

    /// Reserves `need` if usage, reservations and `need` fit in `limit`.
    fn try_hold(&self, need: u64, limit: u64) -> Option<Reservation> {
        let reservation = self.hold(need);
        let reserved = self.reserved.load(Ordering::Relaxed);
        (self.usage().stored_bytes + reserved <= limit).then_some(reservation)
    }

    /// Evicts least-recently-used objects until `need` more bytes fit below the low-water mark.
    async fn evict(&self, need: u64, limit: u64) -> Result<(), Status> {
        let low_water = (limit as f64 * self.options.low_water) as u64;
        let reserved = self.reserved.load(Ordering::Relaxed);
        let target = low_water.min(limit.saturating_sub(reserved + need));
        let options = GcOptions {
            quota: target,
            grace: self.options.grace,
        };
        let report = gc(&self.store, &self.refs, &options, &())
            .await
            .map_err(from_tree)?;
        self.metrics.evicted(
            report.removed_blobs,
            report
                .before
                .stored_bytes
                .saturating_sub(report.after.stored_bytes),
        );
        tracing::info!(
            removed = report.removed_blobs,
            freed = report
                .before
                .stored_bytes
                .saturating_sub(report.after.stored_bytes),
            kept_recent = report.kept_recent,
            kept_protected = report.kept_protected,
            "evicted least recently used objects"
        );
        Ok(())
    }
}

/// The quota of a tiered store's near disk: blobs are kept near only when they fit.
#[async_trait]
impl SpaceBudget for Quota {
    async fn reserve(&self, bytes: u64) -> Result<SpaceHold, StoreError> {
        match Quota::reserve(self, bytes).await {
            Ok(reservation) => Ok(Box::new(reservation)),
            Err(status) => Err(StoreError::NoRoom(status.message().to_owned())),
        }
    }
}
