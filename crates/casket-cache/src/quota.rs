//! A disk store's quota: every write reserves its room first; when the store would go over,
//! least-recently-used objects are evicted (down to a low-water mark, so that eviction runs
//! rarely); when eviction cannot make room, the write fails with [`StoreError::NoRoom`].
//!
//! [`QuotaStore`] is the decorator frontends serve: a [`BlobStore`] whose writes, batches and
//! ingested files hold a [`Reservation`] until they end. Accounting is exact
//! ([`DiskStore::track_usage`]: allocated blocks of every object linked or removed), and
//! in-flight writes hold reservations, so usage never exceeds the quota. Eviction is
//! [`casket_tree::maintenance::gc`]: it never removes an object used within the grace period —
//! which covers blobs just uploaded, found by FindMissingBlobs, or referenced by an action
//! result, ref or asset that was just stored or read — nor the trees of recently used refs. A
//! blob being read is never cut short: readers hold the file open, and an unlinked file stays
//! readable until they close it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use casket_store::{
    BlobStore, BlobStream, BlobWriter, DiskRefs, DiskStore, ListedBlob, NewBlob, ReadRange, SpaceBudget,
    SpaceHold, StoreError, Usage,
};
use casket_tree::TreeError;
use casket_tree::maintenance::{GcOptions, gc};
use futures::stream::BoxStream;

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
    /// Above this fraction of the limit, writes start an eviction in the background (and do
    /// not wait for it); writes wait only when the limit itself is reached.
    pub cleanup_at: Option<f64>,
    /// Objects used since then are never evicted either (BuildStream's protected session).
    pub session_start: Option<SystemTime>,
    /// Leave at least this many bytes free on the file system: the limit shrinks, when the
    /// quota is opened, to what the store uses plus what is free beyond this headroom.
    pub keep_free: Option<u64>,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        QuotaOptions {
            limit: None,
            grace: Duration::from_secs(600),
            low_water: 0.9,
            cleanup_at: None,
            session_start: None,
            keep_free: None,
        }
    }
}

/// A store's exact usage and limit, as `/status` and the metrics show them: a disk store's
/// [`Quota`], or a block store, which keeps its own.
pub trait Capacity: Send + Sync + std::fmt::Debug {
    /// Exact usage now.
    fn usage(&self) -> Usage;
    /// The most bytes the store may take on disk, if limited.
    fn limit(&self) -> Option<u64>;
}

impl Capacity for Quota {
    fn usage(&self) -> Usage {
        Quota::usage(self)
    }

    fn limit(&self) -> Option<u64> {
        Quota::limit(self)
    }
}

impl Capacity for casket_store::BlockStore {
    fn usage(&self) -> Usage {
        self.current_usage()
    }

    fn limit(&self) -> Option<u64> {
        self.options().capacity
    }
}

/// Told of every eviction (the server's metrics).
pub trait EvictionListener: Send + Sync + std::fmt::Debug {
    /// `blobs` objects, `bytes` allocated, were evicted.
    fn evicted(&self, blobs: u64, bytes: u64);
}

impl EvictionListener for () {
    fn evicted(&self, _blobs: u64, _bytes: u64) {}
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
    listener: Arc<dyn EvictionListener>,
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
    /// Starts exact accounting of `store` (one scan) under `options`; evictions are reported
    /// to `listener`.
    pub async fn new(
        store: &DiskStore,
        mut options: QuotaOptions,
        listener: Arc<dyn EvictionListener>,
    ) -> Result<Self, StoreError> {
        let scanning = store.clone();
        tokio::task::spawn_blocking(move || scanning.track_usage())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(keep_free) = options.keep_free {
            let used = store.tracked_usage().unwrap_or_default().stored_bytes;
            let room = used + free_space(store.root())?.saturating_sub(keep_free);
            options.limit = Some(options.limit.map_or(room, |limit| limit.min(room)));
        }
        Ok(Quota {
            store: store.clone(),
            refs: DiskRefs::new(store),
            options,
            reserved: Arc::default(),
            evicting: tokio::sync::Mutex::new(()),
            listener,
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

    /// Bytes held by writes in flight.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Reserves room for `bytes` of new data, evicting first if needed: `ExceedsCapacity` for
    /// more than the whole quota, `NoRoom` when nothing more can be evicted.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, StoreError> {
        let need = bytes.div_ceil(BLOCK) * BLOCK;
        let Some(limit) = self.options.limit else {
            return Ok(self.hold(need));
        };
        if need > limit {
            return Err(StoreError::ExceedsCapacity {
                bytes,
                capacity: limit,
            });
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
            StoreError::NoRoom(format!(
                "the store is full ({} of {limit} bytes used, {} reserved) and everything left \
                 was used within the last {} s",
                self.usage().stored_bytes,
                self.reserved(),
                self.options.grace.as_secs()
            ))
        })
    }

    /// Starts an eviction in the background when usage is over the cleanup threshold and
    /// none is running; returns at once.
    pub fn expire_early(self: &Arc<Self>) {
        let (Some(limit), Some(threshold)) = (self.options.limit, self.options.cleanup_at) else {
            return;
        };
        if ((self.usage().stored_bytes + self.reserved()) as f64) < limit as f64 * threshold {
            return;
        }
        let quota = self.clone();
        tokio::spawn(async move {
            let Ok(_one_at_a_time) = quota.evicting.try_lock() else {
                return;
            };
            if let Err(e) = quota.evict(0, limit).await {
                tracing::warn!("background eviction failed: {e}");
            }
        });
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
        (self.usage().stored_bytes + self.reserved() <= limit).then_some(reservation)
    }

    /// Evicts least-recently-used objects until `need` more bytes fit below the low-water mark.
    async fn evict(&self, need: u64, limit: u64) -> Result<(), StoreError> {
        let low_water = (limit as f64 * self.options.low_water) as u64;
        let target = low_water.min(limit.saturating_sub(self.reserved() + need));
        let session = self
            .options
            .session_start
            .and_then(|start| SystemTime::now().duration_since(start).ok());
        let options = GcOptions {
            quota: target,
            grace: session.map_or(self.options.grace, |session| session.max(self.options.grace)),
        };
        let report = gc(&self.store, &self.refs, &options, &())
            .await
            .map_err(|e| match e {
                TreeError::Store { source, .. } => *source,
                other => StoreError::Task(format!("eviction failed: {other}")),
            })?;
        let freed = report
            .before
            .stored_bytes
            .saturating_sub(report.after.stored_bytes);
        self.listener.evicted(report.removed_blobs, freed);
        tracing::info!(
            removed = report.removed_blobs,
            freed,
            kept_recent = report.kept_recent,
            kept_protected = report.kept_protected,
            "evicted least recently used objects"
        );
        Ok(())
    }
}

/// Bytes free for unprivileged users on the file system holding `path`.
fn free_space(path: &Path) -> Result<u64, StoreError> {
    let stat = rustix::fs::statvfs(path).map_err(|e| StoreError::Io {
        op: "statvfs",
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The quota of a tiered store's near disk: blobs are kept near only when they fit.
#[async_trait]
impl SpaceBudget for Quota {
    async fn reserve(&self, bytes: u64) -> Result<SpaceHold, StoreError> {
        Ok(Box::new(Quota::reserve(self, bytes).await?))
    }
}

/// A disk store under a [`Quota`]: writes reserve their room before they start and hold it
/// until they end; everything else goes straight to the store.
#[derive(Clone, Debug)]
pub struct QuotaStore {
    store: DiskStore,
    quota: Arc<Quota>,
}

impl QuotaStore {
    /// The quota's own store, under the quota.
    pub fn new(quota: Arc<Quota>) -> Self {
        QuotaStore {
            store: quota.store.clone(),
            quota,
        }
    }

    /// Bytes a batch needs: the distinct declared blobs the store lacks, and every blob that
    /// declares no digest (finding the others touches them, which a store does anyway).
    /// Reserves room for a write, then starts a background eviction if usage is over the
    /// cleanup threshold.
    async fn reserve(&self, bytes: u64) -> Result<Reservation, StoreError> {
        let reservation = self.quota.reserve(bytes).await?;
        self.quota.expire_early();
        Ok(reservation)
    }

    async fn new_bytes(&self, blobs: &[NewBlob]) -> Result<u64, StoreError> {
        let declared: HashSet<Digest> = blobs.iter().filter_map(|b| b.expected).collect();
        let declared: Vec<Digest> = declared.into_iter().collect();
        let missing = self.store.find_missing(&declared).await?;
        let undeclared = blobs.iter().filter(|b| b.expected.is_none());
        Ok(missing.iter().map(Digest::size).sum::<u64>()
            + undeclared.map(|b| b.data.len() as u64).sum::<u64>())
    }
}

/// A write holding its room.
struct ReservedWriter {
    inner: Box<dyn BlobWriter>,
    _reservation: Reservation,
}

#[async_trait]
impl BlobWriter for ReservedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.inner.write(chunk).await
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.inner.commit().await
    }
}

#[async_trait]
impl BlobStore for QuotaStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        self.store.find_missing(digests).await
    }

    async fn stored_digest(
        &self,
        function: DigestFunction,
        hash: &[u8; 32],
    ) -> Result<Option<Digest>, StoreError> {
        self.store.stored_digest(function, hash).await
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>, StoreError> {
        self.store.read(digest, range).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, StoreError> {
        let reservation = self.reserve(digest.size()).await?;
        Ok(Box::new(ReservedWriter {
            inner: self.store.begin_write(digest).await?,
            _reservation: reservation,
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.store.delete(digest).await
    }

    async fn usage(&self) -> Result<Usage, StoreError> {
        Ok(self.quota.usage())
    }

    /// The whole batch fails with `NoRoom` (nothing stored) when its new blobs do not fit.
    async fn put_many(
        &self,
        function: DigestFunction,
        blobs: Vec<NewBlob>,
    ) -> Result<Vec<Result<Digest, StoreError>>, StoreError> {
        // Without a limit nothing can be refused: spare the existence check.
        let bytes = match self.quota.limit() {
            Some(_) => self.new_bytes(&blobs).await?,
            None => blobs.iter().map(|b| b.data.len() as u64).sum(),
        };
        let _reservation = self.reserve(bytes).await?;
        self.store.put_many(function, blobs).await
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.store.get_many(digests).await
    }

    async fn ingest_file(&self, path: &Path, function: DigestFunction) -> Result<Digest, StoreError> {
        let bytes = tokio::fs::metadata(path)
            .await
            .map_err(|source| StoreError::Io {
                op: "stat",
                path: path.to_owned(),
                source,
            })?
            .len();
        let _reservation = self.reserve(bytes).await?;
        self.store.ingest_file(path, function).await
    }

    fn local_file(&self, digest: &Digest, executable: bool) -> Result<Option<PathBuf>, StoreError> {
        self.store.local_file(digest, executable)
    }

    fn list_blobs(&self) -> BoxStream<'_, Result<ListedBlob, StoreError>> {
        self.store.list_blobs()
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<(), StoreError> {
        self.store.delete_many(digests).await
    }
}
