//! What a client did: RPCs by method, and retries.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`super::RemoteCas`] (shared by its clones).
#[derive(Debug, Default)]
pub struct Stats {
    rpcs: Mutex<BTreeMap<&'static str, u64>>,
    retries: AtomicU64,
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
}
