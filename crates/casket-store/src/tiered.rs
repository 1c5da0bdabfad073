//! `TieredStore`: a local store (near: a disk or block store) in front of a shared store of record (far), so a
//! frontend serves hot blobs from its own disk while every frontend sees the same blobs.
//!
//! * Reads are read-through: a blob absent near is copied in from far (verified by the disk
//!   store's commit) and served from near; concurrent reads of the same absent blob share one
//!   copy. When near has no room, or the copy fails, the read streams from far instead.
//! * Writes are write-through: every chunk goes to both; far's commit decides success, and
//!   near keeps the blob only if far accepted it. Near is a cache: losing it loses nothing.
//! * Existence: near first, then far for what near lacks. Checks that must not be wrong
//!   ([`BlobStore::find_missing_uncached`]) ask far alone, since near may hold blobs that were
//!   removed from far, which other frontends could not serve.
//! * Near's room is governed by a [`SpaceBudget`] (the server's quota evicts near's least
//!   recently used blobs); without room, blobs simply are not kept near.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::blob_store::{BlobStore, BlobStream, BlobWriter, NewBlob, ReadRange, Usage};
use crate::error::Result;

/// Room held for data being written near; released when dropped.
pub type SpaceHold = Box<dyn Send + Sync>;

/// Room for new data in a store with a limit.
#[async_trait]
pub trait SpaceBudget: Send + Sync + fmt::Debug {
    /// Holds room for `bytes` more, making room first if it must; `StoreError::NoRoom` if
    /// there is none.
    async fn reserve(&self, bytes: u64) -> Result<SpaceHold>;
}

type Fill = Shared<BoxFuture<'static, bool>>;

/// A local store in front of a store of record. See the module documentation.
#[derive(Clone)]
pub struct TieredStore {
    near: Arc<dyn BlobStore>,
    far: Arc<dyn BlobStore>,
    budget: Option<Arc<dyn SpaceBudget>>,
    /// Copies from far to near under way, by digest.
    fills: Arc<Mutex<HashMap<Digest, Fill>>>,
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("near", &self.near)
            .field("far", &self.far)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl TieredStore {
    /// Keeps copies of `far`'s blobs in `near`, within `budget` if there is one.
    pub fn new(
        near: Arc<dyn BlobStore>,
        far: Arc<dyn BlobStore>,
        budget: Option<Arc<dyn SpaceBudget>>,
    ) -> Self {
        TieredStore {
            near,
            far,
            budget,
            fills: Arc::default(),
        }
    }

    /// The near store.
    pub fn near(&self) -> &Arc<dyn BlobStore> {
        &self.near
    }

    /// The store of record.
    pub fn far(&self) -> &Arc<dyn BlobStore> {
        &self.far
    }

    async fn hold(&self, bytes: u64) -> Option<Option<SpaceHold>> {
        match &self.budget {
            None => Some(None),
            Some(budget) => match budget.reserve(bytes).await {
                Ok(hold) => Some(Some(hold)),
                Err(e) => {
                    tracing::debug!(error = %e, bytes, "not kept near");
                    None
                }
            },
        }
    }

    /// Copies `digest` from far to near, sharing the copy with concurrent callers; false if it
    /// was not copied (absent far, no room near, or a failure, which is logged).
    async fn fill(&self, digest: &Digest) -> bool {
        let fill = {
            let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
            fills
                .entry(*digest)
                .or_insert_with(|| {
                    let (tiered, digest) = (self.clone(), *digest);
                    // A task of its own: the copy finishes even if the first reader goes away.
                    let task = tokio::spawn(async move {
                        let copied = tiered.copy_in(&digest).await;
                        tiered
                            .fills
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&digest);
                        copied.unwrap_or_else(|e| {
                            tracing::warn!(error = %e, %digest, "could not copy a blob near; serving it from far");
                            false
                        })
                    });
                    async move { task.await.unwrap_or(false) }.boxed().shared()
                })
                .clone()
        };
        fill.await
    }

    async fn copy_in(&self, digest: &Digest) -> Result<bool> {
        let Some(_hold) = self.hold(digest.size()).await else {
            return Ok(false);
        };
        let Some(mut stream) = self.far.read(digest, ReadRange::ALL).await? else {
            return Ok(false);
        };
        let mut writer = self.near.begin_write(digest).await?;
        while let Some(chunk) = stream.next().await {
            writer.write(chunk?).await?;
        }
        writer.commit().await?;
        Ok(true)
    }

    /// Keeps copies of blobs far accepted, if there is room.
    async fn keep_near(&self, function: DigestFunction, blobs: Vec<NewBlob>) {
        if blobs.is_empty() {
            return;
        }
        let bytes = blobs.iter().map(|b| b.data.len() as u64).sum();
        let Some(_hold) = self.hold(bytes).await else {
            return;
        };
        if let Err(e) = self.near.put_many(function, blobs).await {
            tracing::warn!(error = %e, "could not keep blobs near");
        }
    }
}

#[async_trait]
impl BlobStore for TieredStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let not_near = self.near.find_missing(digests).await?;
        if not_near.is_empty() {
            return Ok(not_near);
        }
        self.far.find_missing(&not_near).await
    }

    async fn find_missing_uncached(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.far.find_missing_uncached(digests).await
    }

    async fn stored_digest(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        match self.near.stored_digest(function, hash).await? {
            Some(digest) => Ok(Some(digest)),
            None => self.far.stored_digest(function, hash).await,
        }
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        if let Some(stream) = self.near.read(digest, range).await? {
            return Ok(Some(stream));
        }
        if self.fill(digest).await
            && let Some(stream) = self.near.read(digest, range).await?
        {
            return Ok(Some(stream));
        }
        self.far.read(digest, range).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let far = self.far.begin_write(digest).await?;
        let near = match self.hold(digest.size()).await {
            Some(hold) => match self.near.begin_write(digest).await {
                Ok(writer) => Some((writer, hold)),
                Err(e) => {
                    tracing::warn!(error = %e, %digest, "not kept near");
                    None
                }
            },
            None => None,
        };
        Ok(Box::new(TieredWriter { far, near }))
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        let results = self.far.put_many(function, blobs.clone()).await?;
        let accepted = blobs
            .into_iter()
            .zip(&results)
            .filter_map(|(blob, result)| {
                let digest = result.as_ref().ok()?;
                Some(NewBlob {
                    data: blob.data,
                    expected: Some(*digest),
                })
            })
            .collect();
        self.keep_near(function, accepted).await;
        Ok(results)
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        let mut found = self.near.get_many(digests).await?;
        let absent: Vec<(usize, Digest)> = found
            .iter()
            .zip(digests)
            .enumerate()
            .filter(|(_, (data, _))| data.is_none())
            .map(|(i, (_, digest))| (i, *digest))
            .collect();
        if absent.is_empty() {
            return Ok(found);
        }
        let wanted: Vec<Digest> = absent.iter().map(|(_, d)| *d).collect();
        let fetched = self.far.get_many(&wanted).await?;
        let mut copies: HashMap<DigestFunction, Vec<NewBlob>> = HashMap::new();
        for ((i, digest), data) in absent.into_iter().zip(fetched) {
            if let Some(data) = &data {
                copies.entry(digest.function()).or_default().push(NewBlob {
                    data: data.clone(),
                    expected: Some(digest),
                });
            }
            found[i] = data;
        }
        for (function, blobs) in copies {
            self.keep_near(function, blobs).await;
        }
        Ok(found)
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let near = self.near.delete(digest).await?;
        Ok(self.far.delete(digest).await? || near)
    }

    async fn usage(&self) -> Result<Usage> {
        self.far.usage().await
    }
}

/// Every chunk to far and near; far's commit decides.
struct TieredWriter {
    far: Box<dyn BlobWriter>,
    near: Option<(Box<dyn BlobWriter>, Option<SpaceHold>)>,
}

#[async_trait]
impl BlobWriter for TieredWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.far.write(chunk.clone()).await?;
        if let Some((near, _)) = &mut self.near
            && let Err(e) = near.write(chunk).await
        {
            tracing::warn!(error = %e, "not kept near");
            self.near = None;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.far.written()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.far.commit().await?;
        if let Some((near, _hold)) = self.near
            && let Err(e) = near.commit().await
        {
            tracing::warn!(error = %e, "not kept near");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobStoreExt, BlockOptions, BlockStore, DiskOptions, DiskStore, MemoryStore};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tiered(
        dir: &std::path::Path,
        far: Arc<dyn BlobStore>,
        budget: Option<Arc<dyn SpaceBudget>>,
    ) -> TieredStore {
        let near = DiskStore::open(dir, DiskOptions::default()).expect("open");
        TieredStore::new(Arc::new(near), far, budget)
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::conformance::run_all(&tiered(dir.path(), Arc::new(MemoryStore::new()), None)).await;
    }

    #[tokio::test]
    async fn conformance_with_a_block_store_near() {
        let dir = tempfile::tempdir().expect("tempdir");
        let near = BlockStore::open(dir.path(), BlockOptions::default()).expect("open");
        let store = TieredStore::new(Arc::new(near), Arc::new(MemoryStore::new()), None);
        crate::conformance::run_all(&store).await;
    }

    /// Counts reads that reach far.
    #[derive(Debug)]
    struct CountingFar {
        inner: MemoryStore,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl BlobStore for CountingFar {
        async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
            self.inner.find_missing(digests).await
        }
        async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.inner.read(digest, range).await
        }
        async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
            self.inner.begin_write(digest).await
        }
        async fn delete(&self, digest: &Digest) -> Result<bool> {
            self.inner.delete(digest).await
        }
        async fn usage(&self) -> Result<Usage> {
            self.inner.usage().await
        }
    }

    #[tokio::test]
    async fn concurrent_reads_of_a_far_blob_share_one_copy_and_later_reads_stay_near() {
        let dir = tempfile::tempdir().expect("tempdir");
        let far = Arc::new(CountingFar {
            inner: MemoryStore::new(),
            reads: AtomicUsize::new(0),
        });
        let data = Bytes::from(vec![3u8; 3 << 20]);
        let digest = far
            .inner
            .put_bytes(DigestFunction::Sha256, data.clone())
            .await
            .expect("put");
        let store = tiered(dir.path(), far.clone(), None);
        let reads = (0..8).map(|_| store.get_bytes(&digest));
        for read in futures::future::join_all(reads).await {
            assert_eq!(read.expect("read"), Some(data.clone()));
        }
        assert_eq!(far.reads.load(Ordering::SeqCst), 1, "one copy for eight readers");
        assert!(store.near().contains(&digest).await.expect("near"));
        store.get_bytes(&digest).await.expect("read");
        assert_eq!(far.reads.load(Ordering::SeqCst), 1, "served near");
    }

    #[derive(Debug)]
    struct NoRoom;

    #[async_trait]
    impl SpaceBudget for NoRoom {
        async fn reserve(&self, _bytes: u64) -> Result<SpaceHold> {
            Err(crate::StoreError::NoRoom("test".into()))
        }
    }

    #[tokio::test]
    async fn without_room_near_everything_still_works_through_far() {
        let dir = tempfile::tempdir().expect("tempdir");
        let far = Arc::new(MemoryStore::new());
        let store = tiered(dir.path(), far.clone(), Some(Arc::new(NoRoom)));
        let written = store
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"one"))
            .await
            .expect("put");
        let batch = store
            .put_many(
                DigestFunction::Sha256,
                vec![NewBlob::new(Bytes::from_static(b"two"))],
            )
            .await
            .expect("put_many");
        let batched = batch.into_iter().next().expect("one").expect("stored");
        for digest in [written, batched] {
            assert!(far.contains(&digest).await.expect("far"));
            assert!(!store.near().contains(&digest).await.expect("near"));
            assert!(store.get_bytes(&digest).await.expect("read").is_some());
            assert!(!store.near().contains(&digest).await.expect("near"));
        }
        assert_eq!(
            store.get_many(&[written]).await.expect("get_many")[0],
            Some(Bytes::from_static(b"one"))
        );
    }

    #[tokio::test]
    async fn a_blob_gone_from_far_is_missing_for_uncached_checks_even_if_kept_near() {
        let dir = tempfile::tempdir().expect("tempdir");
        let far = Arc::new(MemoryStore::new());
        let store = tiered(dir.path(), far.clone(), None);
        let digest = store
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"x"))
            .await
            .expect("put");
        far.delete(&digest).await.expect("delete far");
        assert!(
            store.find_missing(&[digest]).await.expect("find").is_empty(),
            "near serves it"
        );
        assert_eq!(
            store.find_missing_uncached(&[digest]).await.expect("find"),
            vec![digest]
        );
    }
}
