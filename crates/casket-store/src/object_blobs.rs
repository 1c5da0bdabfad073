//! `ObjectStoreBlobs`: blobs in any `object_store` backend (S3, GCS, Azure, local files, memory).
//!
//! Keys are `PREFIX/cas/FUNCTION/HASH`, so every digest function has its own key space. Small
//! blobs are one `PUT`; blobs larger than one part stream through a multipart upload whose hash
//! is checked before it is completed, so a mismatching upload is aborted and never visible.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestHasher};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::blob_store::{BlobStore, BlobStream, BlobWriter, ReadRange, Usage};
use crate::error::{Result, StoreError};

/// Existence checks sent at once by [`BlobStore::find_missing`].
const HEAD_CONCURRENCY: usize = 32;

/// Multipart part size; S3 requires at least 5 MiB for all parts but the last.
const PART_SIZE: usize = 8 << 20;

/// Parts uploaded concurrently per blob; bounds a writer's memory to about this many parts.
const PART_CONCURRENCY: usize = 4;

/// A [`BlobStore`] over an `object_store::ObjectStore`.
#[derive(Clone, Debug)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl ObjectStoreBlobs {
    /// Stores blobs in `store` under `prefix` (which may be empty).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectStoreBlobs {
            store,
            prefix: Path::from(prefix),
        }
    }

    fn key(&self, digest: &Digest) -> Path {
        self.cas_prefix()
            .join(digest.function().name())
            .join(digest.hash_hex().as_str())
    }

    fn cas_prefix(&self) -> Path {
        self.prefix.clone().join("cas")
    }

    /// The stored object's size, or `None` if absent.
    async fn stored_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.store.head(&self.key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl BlobStore for ObjectStoreBlobs {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let present: Vec<bool> = futures::stream::iter(digests.iter().copied())
            .map(|d| {
                let blobs = self.clone();
                async move {
                    if d.is_empty_blob() {
                        return Ok::<_, StoreError>(true);
                    }
                    Ok(blobs.stored_size(&d).await? == Some(d.size()))
                }
            })
            .buffered(HEAD_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(digests
            .iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(d, _)| *d)
            .collect())
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        let len = range.len_in(digest)?;
        if digest.is_empty_blob() {
            return Ok(Some(futures::stream::empty().boxed()));
        }
        let options = GetOptions {
            range: (len > 0).then_some(GetRange::Bounded(range.offset..range.offset + len)),
            head: len == 0,
            ..Default::default()
        };
        let result = match self.store.get_opts(&self.key(digest), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if result.meta.size != digest.size() {
            return Err(StoreError::SizeMismatch {
                digest: *digest,
                actual: result.meta.size,
            });
        }
        if len == 0 {
            return Ok(Some(futures::stream::empty().boxed()));
        }
        Ok(Some(result.into_stream().map_err(StoreError::from).boxed()))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(ObjectStoreWriter {
            blobs: self.clone(),
            digest: *digest,
            hasher: DigestHasher::new(digest.function()),
            written: 0,
            sink: Sink::Buffer(Vec::new()),
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        if self.stored_size(digest).await?.is_none() {
            return Ok(false);
        }
        match self.store.delete(&self.key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn usage(&self) -> Result<Usage> {
        let prefix = self.cas_prefix();
        self.store
            .list(Some(&prefix))
            .map_err(StoreError::from)
            .try_fold(Usage::default(), |u, meta| async move {
                Ok(Usage {
                    blobs: u.blobs + 1,
                    bytes: u.bytes + meta.size,
                    stored_bytes: u.stored_bytes + meta.size,
                })
            })
            .await
    }
}

enum Sink {
    /// Chunks held until they exceed one part; a small blob is then a single `PUT`.
    Buffer(Vec<Bytes>),
    /// A multipart upload under way; completed only after the hash is checked.
    Multipart(Box<WriteMultipart>),
}

struct ObjectStoreWriter {
    blobs: ObjectStoreBlobs,
    digest: Digest,
    hasher: DigestHasher,
    written: u64,
    sink: Sink,
}

#[async_trait]
impl BlobWriter for ObjectStoreWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.written + chunk.len() as u64 > self.digest.size() {
            return Err(StoreError::TooLong(self.digest));
        }
        self.hasher.update(&chunk);
        self.written += chunk.len() as u64;
        match &mut self.sink {
            Sink::Buffer(chunks) => {
                chunks.push(chunk);
                if self.written > PART_SIZE as u64 {
                    let upload = self
                        .blobs
                        .store
                        .put_multipart(&self.blobs.key(&self.digest))
                        .await?;
                    let mut multipart = Box::new(WriteMultipart::new_with_chunk_size(upload, PART_SIZE));
                    for chunk in std::mem::take(chunks) {
                        multipart.put(chunk);
                    }
                    self.sink = Sink::Multipart(multipart);
                }
            }
            Sink::Multipart(multipart) => {
                multipart.wait_for_capacity(PART_CONCURRENCY).await?;
                multipart.put(chunk);
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let actual = self.hasher.finish();
        if actual != self.digest {
            if let Sink::Multipart(multipart) = self.sink {
                // The upload was never completed, so nothing is visible either way.
                let _ = multipart.abort().await;
            }
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let key = self.blobs.key(&self.digest);
        match self.sink {
            Sink::Buffer(chunks) => {
                self.blobs.store.put(&key, PutPayload::from_iter(chunks)).await?;
            }
            Sink::Multipart(multipart) => {
                multipart.finish().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_in_memory() {
        let store = ObjectStoreBlobs::new(Arc::new(object_store::memory::InMemory::new()), "casket");
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn conformance_local_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local");
        crate::conformance::run_all(&ObjectStoreBlobs::new(Arc::new(local), "")).await;
    }

    #[tokio::test]
    async fn large_mismatching_upload_leaves_nothing() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let store = ObjectStoreBlobs::new(memory.clone(), "");
        let data = Bytes::from(vec![7u8; 2 * PART_SIZE + 1]);
        let wrong = Digest::of(casket_model::DigestFunction::Sha256, &data[1..]);
        let wrong = Digest::new(wrong.function(), *wrong.hash(), data.len() as u64).expect("digest");
        let mut writer = store.begin_write(&wrong).await.expect("begin");
        for chunk in data.chunks(1 << 20) {
            writer.write(Bytes::copy_from_slice(chunk)).await.expect("write");
        }
        assert!(matches!(
            writer.commit().await,
            Err(StoreError::DigestMismatch { .. })
        ));
        let listed: Vec<_> = memory.list(None).try_collect().await.expect("list");
        assert!(listed.is_empty(), "{listed:?}");
    }
}
