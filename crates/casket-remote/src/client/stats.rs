//! What a client did: RPCs by method, retries, blobs and bytes each way.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`super::RemoteCas`] (shared by its clones).
#[derive(Debug, Default)]
pub struct Stats {
    rpcs: Mutex<BTreeMap<&'static str, u64>>,
    retries: AtomicU64,
    blobs_sent: AtomicU64,
    bytes_sent: AtomicU64,
    blobs_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl Stats {
    pub(crate) fn rpc(&self, method: &'static str) {
        *self
            .rpcs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(method)
            .or_default() += 1;
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self, blobs: u64, bytes: u64) {
        self.blobs_sent.fetch_add(blobs, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, blobs: u64, bytes: u64) {
        self.blobs_received.fetch_add(blobs, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// RPCs sent, by method (retries included).
    pub fn rpcs(&self) -> BTreeMap<&'static str, u64> {
        self.rpcs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many RPCs were retries.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Blobs and bytes uploaded.
    pub fn sent_totals(&self) -> (u64, u64) {
        (
            self.blobs_sent.load(Ordering::Relaxed),
            self.bytes_sent.load(Ordering::Relaxed),
        )
    }

    /// Blobs and bytes downloaded.
    pub fn received_totals(&self) -> (u64, u64) {
        (
            self.blobs_received.load(Ordering::Relaxed),
            self.bytes_received.load(Ordering::Relaxed),
        )
    }
}
