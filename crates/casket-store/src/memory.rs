//! `MemoryStore`: blobs in a hash map, for tests and small ephemeral caches.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use casket_model::{Digest, DigestFunction, DigestHasher};
use futures::StreamExt;

use crate::blob_store::{BlobStore, BlobStream, BlobWriter, ReadRange, Usage, empty_blob_of};
use crate::error::{Result, StoreError};

type Key = (DigestFunction, [u8; 32]);

/// A store that keeps every blob in memory. Cheap to clone; clones share the blobs.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    blobs: Arc<RwLock<HashMap<Key, Bytes>>>,
}

fn key(digest: &Digest) -> Key {
    (digest.function(), *digest.hash())
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.blobs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key(digest))
            .cloned()
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let blobs = self.blobs.read().unwrap_or_else(PoisonError::into_inner);
        Ok(digests
            .iter()
            .filter(|d| {
                !d.is_empty_blob()
                    && blobs
                        .get(&key(d))
                        .is_none_or(|data| data.len() as u64 != d.size())
            })
            .copied()
            .collect())
    }

    async fn stored_digest(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        let blobs = self.blobs.read().unwrap_or_else(PoisonError::into_inner);
        Ok(match blobs.get(&(function, *hash)) {
            Some(data) => Digest::new(function, *hash, data.len() as u64).ok(),
            None => empty_blob_of(function, hash),
        })
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        let data = match self.get(digest) {
            Some(data) => data,
            None if digest.is_empty_blob() => Bytes::new(),
            None => return Ok(None),
        };
        if data.len() as u64 != digest.size() {
            return Err(StoreError::SizeMismatch {
                digest: *digest,
                actual: data.len() as u64,
            });
        }
        let len = range.len_in(digest)?;
        let start = range.offset as usize;
        let chunk = data.slice(start..start + len as usize);
        Ok(Some(
            futures::stream::iter((len > 0).then_some(Ok(chunk))).boxed(),
        ))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            digest: *digest,
            data: BytesMut::new(),
            hasher: DigestHasher::new(digest.function()),
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let mut blobs = self.blobs.write().unwrap_or_else(PoisonError::into_inner);
        Ok(blobs.remove(&key(digest)).is_some())
    }

    async fn usage(&self) -> Result<Usage> {
        let blobs = self.blobs.read().unwrap_or_else(PoisonError::into_inner);
        let bytes = blobs.values().map(|b| b.len() as u64).sum();
        Ok(Usage {
            blobs: blobs.len() as u64,
            bytes,
            stored_bytes: bytes,
        })
    }
}

struct MemoryWriter {
    store: MemoryStore,
    digest: Digest,
    data: BytesMut,
    hasher: DigestHasher,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.data.len() as u64 + chunk.len() as u64 > self.digest.size() {
            return Err(StoreError::TooLong(self.digest));
        }
        self.hasher.update(&chunk);
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.data.len() as u64
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let actual = self.hasher.finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let mut blobs = self.store.blobs.write().unwrap_or_else(PoisonError::into_inner);
        blobs.insert(key(&self.digest), self.data.freeze());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(&super::MemoryStore::new()).await;
    }
}
