//! `ExistenceCache`: the digests an object store was recently seen to hold.
//!
//! Positive only: a blob that was absent is never remembered as absent, so an upload through
//! another frontend is visible at once. Entries expire after a fixed time to live, so a blob
//! removed behind the cache's back (by `casket gc` or a lifecycle rule) stops being reported
//! after at most that long; decisions that must never be wrong bypass the cache
//! ([`crate::BlobStore::find_missing_uncached`]). The cache is bounded in entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use casket_model::Digest;

/// How large the cache is and how long it trusts what it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistenceCacheOptions {
    /// The most digests remembered; 0 disables the cache.
    pub entries: u64,
    /// How long a digest seen present is believed present without asking again.
    pub ttl: Duration,
}

impl Default for ExistenceCacheOptions {
    fn default() -> Self {
        ExistenceCacheOptions {
            entries: 1 << 20,
            ttl: Duration::from_secs(300),
        }
    }
}

/// Hits and misses since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExistenceStats {
    /// Digests answered from the cache.
    pub hits: u64,
    /// Digests the object store was asked about.
    pub misses: u64,
}

/// A bounded, expiring set of digests known to be present. See the module documentation.
#[derive(Debug)]
pub(crate) struct ExistenceCache {
    present: Option<moka::sync::Cache<Digest, ()>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ExistenceCache {
    pub(crate) fn new(options: ExistenceCacheOptions) -> Self {
        let present = (options.entries > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(options.entries)
                .time_to_live(options.ttl)
                .build()
        });
        ExistenceCache {
            present,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// True if `digest` was seen present within the time to live; counts a hit or a miss.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        let hit = self.present.as_ref().is_some_and(|p| p.contains_key(digest));
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Remembers that `digest` is present now.
    pub(crate) fn insert(&self, digest: Digest) {
        if let Some(present) = &self.present {
            present.insert(digest, ());
        }
    }

    /// Forgets `digest` (it was deleted through this store).
    pub(crate) fn remove(&self, digest: &Digest) {
        if let Some(present) = &self.present {
            present.invalidate(digest);
        }
    }

    pub(crate) fn stats(&self) -> ExistenceStats {
        ExistenceStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casket_model::DigestFunction;

    #[test]
    fn remembers_presence_until_it_expires_and_never_absence() {
        let cache = ExistenceCache::new(ExistenceCacheOptions {
            entries: 10,
            ttl: Duration::from_millis(200),
        });
        let d = Digest::of(DigestFunction::Sha256, b"x");
        assert!(!cache.contains(&d));
        cache.insert(d);
        assert!(cache.contains(&d));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!cache.contains(&d), "entries expire");
        cache.insert(d);
        cache.remove(&d);
        assert!(!cache.contains(&d));
        assert_eq!(cache.stats(), ExistenceStats { hits: 1, misses: 3 });
    }

    #[test]
    fn is_bounded() {
        let cache = ExistenceCache::new(ExistenceCacheOptions {
            entries: 100,
            ttl: Duration::from_secs(60),
        });
        for i in 0..10_000u32 {
            cache.insert(Digest::of(DigestFunction::Sha256, &i.to_le_bytes()));
        }
        if let Some(present) = &cache.present {
            present.run_pending_tasks();
            assert!(present.entry_count() <= 100, "{}", present.entry_count());
        }
    }
}
