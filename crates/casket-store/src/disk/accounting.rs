//! Exact, incremental usage accounting for a long-running user of a store (the server's
//! quota): once enabled, every object or variant this process links into place or removes
//! adjusts the totals by its allocated blocks, so no rescan is ever needed.
//!
//! Objects written by other processes are not seen; a quota enforced on such a store should
//! run `casket gc` there too.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::DiskStore;
use crate::blob_store::Usage;
use crate::error::Result;

/// Running totals, shared by a store and its clones.
#[derive(Debug, Default)]
pub(super) struct Accounting {
    enabled: AtomicBool,
    blobs: AtomicI64,
    bytes: AtomicI64,
    stored_bytes: AtomicI64,
}

/// What was linked or removed: an object counts as a blob, a variant only as blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    Object,
    Variant,
}

impl Accounting {
    fn change(&self, entry: Entry, size: u64, stored: u64, sign: i64) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if entry == Entry::Object {
            self.blobs.fetch_add(sign, Ordering::Relaxed);
            self.bytes.fetch_add(sign * size as i64, Ordering::Relaxed);
        }
        self.stored_bytes
            .fetch_add(sign * stored as i64, Ordering::Relaxed);
    }

    /// `file` was linked in as `entry` of `size` bytes.
    pub(super) fn linked(&self, entry: Entry, size: u64, file: &File) {
        if self.enabled.load(Ordering::Relaxed) {
            let stored = file.metadata().map_or(0, |m| m.blocks() * 512);
            self.change(entry, size, stored, 1);
        }
    }

    /// `entry`, whose metadata was `meta`, was removed.
    pub(super) fn removed(&self, entry: Entry, meta: &std::fs::Metadata) {
        self.change(entry, meta.len(), meta.blocks() * 512, -1);
    }

    /// Whether removals need the removed file's metadata.
    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

impl DiskStore {
    /// Starts exact accounting (one full scan) and returns the usage found. From then on,
    /// [`DiskStore::tracked_usage`] is exact for everything this process does.
    pub fn track_usage(&self) -> Result<Usage> {
        let accounting = &self.accounting;
        accounting.enabled.store(true, Ordering::Relaxed);
        let usage = self.scan_objects()?.usage();
        accounting.blobs.fetch_add(usage.blobs as i64, Ordering::Relaxed);
        accounting.bytes.fetch_add(usage.bytes as i64, Ordering::Relaxed);
        accounting
            .stored_bytes
            .fetch_add(usage.stored_bytes as i64, Ordering::Relaxed);
        Ok(usage)
    }

    /// The current usage, if [`DiskStore::track_usage`] was called.
    pub fn tracked_usage(&self) -> Option<Usage> {
        let accounting = &self.accounting;
        let get = |n: &AtomicI64| n.load(Ordering::Relaxed).max(0) as u64;
        accounting.enabled().then(|| Usage {
            blobs: get(&accounting.blobs),
            bytes: get(&accounting.bytes),
            stored_bytes: get(&accounting.stored_bytes),
        })
    }

    /// Removes `path` (an `entry`), keeping the accounting exact; `Ok(false)` if it was absent.
    pub(super) fn remove_entry(&self, entry: Entry, path: &Path) -> std::io::Result<bool> {
        let meta = if self.accounting.enabled() {
            match std::fs::symlink_metadata(path) {
                Ok(meta) => Some(meta),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        match std::fs::remove_file(path) {
            Ok(()) => {
                if let Some(meta) = meta {
                    self.accounting.removed(entry, &meta);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use casket_model::{Digest, DigestFunction};

    use crate::{BlobStore, BlobStoreExt, DiskOptions, DiskStore};

    #[tokio::test]
    async fn tracked_usage_matches_a_scan_after_writes_variants_and_deletes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = DiskStore::open(dir.path(), DiskOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        store
            .put_bytes(DigestFunction::Sha256, b"before".as_slice().into())
            .await
            .ok();
        store.track_usage().unwrap_or_else(|e| panic!("{e}"));
        let mut digests = Vec::new();
        for size in [1usize, 5000, 300_000, 3 << 20] {
            let data = vec![size as u8; size];
            let digest = Digest::of(DigestFunction::Sha256, &data);
            store
                .put_bytes(DigestFunction::Sha256, data.clone().into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // A second write of the same blob adds nothing.
            store
                .put_bytes(DigestFunction::Sha256, data.into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            digests.push(digest);
        }
        store
            .local_file(&digests[1], true)
            .unwrap_or_else(|e| panic!("{e}"));
        let scanned = || store.scan_objects().unwrap_or_else(|e| panic!("{e}")).usage();
        assert_eq!(store.tracked_usage(), Some(scanned()));
        for digest in &digests[..2] {
            assert!(store.delete(digest).await.unwrap_or_else(|e| panic!("{e}")));
            assert!(!store.delete(digest).await.unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(store.tracked_usage(), Some(scanned()));
    }
}
