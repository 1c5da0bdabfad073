//! `ObjectStoreBlobs`: blobs in any `object_store` backend (S3, GCS, Azure, local files, memory).
//!
//! Keys are `PREFIX/cas/FUNCTION/HASH`, so every digest function has its own key space. Small
//! blobs are one `PUT`; blobs larger than one part stream through a multipart upload whose hash
//! is checked before it is completed, so a mismatching upload is aborted and never visible, and
//! a writer dropped before its commit aborts its upload too. Reads are ranged `GET`s, streamed.
//!
//! Existence is the expensive question on an object store, which has no batch `HEAD`. Digests
//! seen present recently are answered from a positive-only [`ExistenceCache`]; the rest are
//! asked concurrently, with one `HEAD` each for a few, or by listing the key range they fall in
//! when they are many and close together (one `LIST` answers up to 1,000 keys; see
//! [`ObjectStoreBlobs::find_missing`]).

use std::cmp::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, DigestHasher};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};

use super::existence::{ExistenceCache, ExistenceCacheOptions, ExistenceStats};
use crate::blob_store::{
    BlobStore, BlobStream, BlobWriter, ListedBlob, NewBlob, ReadRange, Usage, empty_blob_of, hash_key,
};
use crate::error::{Result, StoreError};

/// Requests sent at once by one batch operation (existence checks, batched puts and gets).
const REQUEST_CONCURRENCY: usize = 64;

/// Listings run at once by one existence check.
const LIST_CONCURRENCY: usize = 8;

/// Below this many unknown digests, existence is asked with `HEAD`s only.
const LIST_MIN_BATCH: usize = 32;

/// Keys per `LIST` response (S3's maximum and default).
const LIST_PAGE: usize = 1000;

/// The most digests one listing resolves, so that a large batch is listed in parallel.
const LIST_RUN_MAX: usize = 1000;

/// Multipart part size; S3 requires at least 5 MiB for all parts but the last.
const PART_SIZE: usize = 8 << 20;

/// Parts uploaded concurrently per blob; bounds a writer's memory to about this many parts.
const PART_CONCURRENCY: usize = 4;

/// A [`BlobStore`] over an `object_store::ObjectStore`.
#[derive(Clone, Debug)]
pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    existence: Arc<ExistenceCache>,
}

impl ObjectStoreBlobs {
    /// Stores blobs in `store` under `prefix` (which may be empty), with the default existence
    /// cache.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self::with_existence_cache(store, prefix, ExistenceCacheOptions::default())
    }

    /// Like [`ObjectStoreBlobs::new`], with an existence cache of the given size and lifetime.
    pub fn with_existence_cache(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        cache: ExistenceCacheOptions,
    ) -> Self {
        ObjectStoreBlobs {
            store,
            prefix: Path::from(prefix),
            existence: Arc::new(ExistenceCache::new(cache)),
        }
    }

    /// The existence cache's hits and misses so far.
    pub fn existence_stats(&self) -> ExistenceStats {
        self.existence.stats()
    }

    fn function_prefix(&self, function: DigestFunction) -> Path {
        self.cas_prefix().join(function.name())
    }

    fn key(&self, digest: &Digest) -> Path {
        self.function_prefix(digest.function())
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

    /// Which of `digests` are absent, asking the object store about every one (no cache).
    async fn ask_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut unknown: Vec<Digest> = digests.iter().copied().filter(|d| !d.is_empty_blob()).collect();
        unknown.sort_unstable_by(|a, b| {
            (a.function(), a.hash(), a.size()).cmp(&(b.function(), b.hash(), b.size()))
        });
        unknown.dedup();
        let present = if unknown.len() < LIST_MIN_BATCH {
            self.head_present(unknown).await?
        } else {
            let mut present = Vec::new();
            for group in unknown.chunk_by(|a, b| a.function() == b.function()) {
                present.extend(self.list_present(group).await?);
            }
            present
        };
        for digest in &present {
            self.existence.insert(*digest);
        }
        let present: std::collections::HashSet<Digest> = present.into_iter().collect();
        Ok(digests
            .iter()
            .filter(|d| !d.is_empty_blob() && !present.contains(d))
            .copied()
            .collect())
    }

    /// The present ones among `digests`, one concurrent `HEAD` each.
    async fn head_present(&self, digests: Vec<Digest>) -> Result<Vec<Digest>> {
        futures::stream::iter(digests)
            .map(|d| {
                let blobs = self.clone();
                async move { Ok::<_, StoreError>((blobs.stored_size(&d).await? == Some(d.size())).then_some(d)) }
            })
            .buffer_unordered(REQUEST_CONCURRENCY)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await
    }

    /// The present ones among `wanted` (one digest function, sorted, unique), by listing.
    ///
    /// A first listing from the smallest hash resolves what it covers and shows how densely
    /// the bucket's keys fill the hash space. The rest are cut into runs whose neighbours are
    /// expected within half a page of each other: each run is one listing (from just before
    /// its first hash to its last), runs of one digest are a `HEAD`. So a batch that is dense
    /// among the stored keys costs about one request per 1,000 keys listed, and a sparse one
    /// costs no more than one `HEAD` per digest, plus the probe.
    async fn list_present(&self, wanted: &[Digest]) -> Result<Vec<Digest>> {
        let Some(first) = wanted.first() else {
            return Ok(Vec::new());
        };
        let prefix = self.function_prefix(first.function());
        let probe: Vec<ObjectMeta> = self
            .store
            .list_with_offset(Some(&prefix), &offset_before(&prefix, first))
            .take(LIST_PAGE)
            .try_collect()
            .await?;
        let complete = probe.len() < LIST_PAGE;
        let covered = probe
            .last()
            .and_then(|m| m.location.filename())
            .map(str::to_owned);
        let (resolved, rest) = match (&covered, complete) {
            (_, true) => (wanted, &wanted[wanted.len()..]),
            (Some(last), false) => {
                wanted.split_at(wanted.partition_point(|d| d.hash_hex().as_str() <= last.as_str()))
            }
            (None, false) => (&wanted[..0], wanted),
        };
        let mut present = merge_listing(resolved, &probe);
        if rest.is_empty() {
            return Ok(present);
        }
        // Keys per unit of hash space (the first 8 bytes of the hash), from the probe.
        let span = covered
            .as_deref()
            .and_then(hex_prefix)
            .map_or(1, |last| last.saturating_sub(hash_prefix(first)).max(1));
        let density = probe.len() as f64 / span as f64;
        let mut runs: Vec<&[Digest]> = Vec::new();
        let mut start = 0;
        for i in 1..=rest.len() {
            let close = i < rest.len()
                && i - start < LIST_RUN_MAX
                && density * (hash_prefix(&rest[i]).saturating_sub(hash_prefix(&rest[i - 1]))) as f64
                    <= (LIST_PAGE / 2) as f64;
            if !close {
                runs.push(&rest[start..i]);
                start = i;
            }
        }
        let (singles, runs): (Vec<&[Digest]>, Vec<&[Digest]>) = runs.into_iter().partition(|r| r.len() == 1);
        present.extend(self.head_present(singles.concat()).await?);
        let runs: Vec<Vec<Digest>> = runs.into_iter().map(<[Digest]>::to_vec).collect();
        let listed: Vec<Vec<Digest>> = futures::stream::iter(runs)
            .map(|run| {
                let (blobs, prefix) = (self.clone(), prefix.clone());
                async move { blobs.list_run(&prefix, &run).await }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_collect()
            .await?;
        present.extend(listed.into_iter().flatten());
        Ok(present)
    }

    /// The present ones among `run` (sorted), from one listing over its hash range.
    async fn list_run(&self, prefix: &Path, run: &[Digest]) -> Result<Vec<Digest>> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(Vec::new());
        };
        let last = last.hash_hex();
        let listed: Vec<ObjectMeta> = self
            .store
            .list_with_offset(Some(prefix), &offset_before(prefix, first))
            .try_take_while(|m| {
                let within = m.location.filename().is_some_and(|h| h <= last.as_str());
                async move { Ok(within) }
            })
            .try_collect()
            .await?;
        Ok(merge_listing(run, &listed))
    }
}

/// The digest a listed key names, if it is a well-formed blob key under `prefix`.
fn listed_digest(prefix: &Path, meta: &ObjectMeta) -> Option<Digest> {
    let mut parts = meta.location.prefix_match(prefix)?;
    let function = DigestFunction::from_name(parts.next()?.as_ref())?;
    let hash = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Digest::parse(function, &format!("{}/{}", hash.as_ref(), meta.size)).ok()
}

/// A listing offset just before `digest`'s key: its hash without the last digit sorts before
/// every key that starts with it, and after every smaller one.
fn offset_before(prefix: &Path, digest: &Digest) -> Path {
    let hash = digest.hash_hex();
    prefix.clone().join(&hash[..hash.len() - 1])
}

/// The first 8 bytes of a hash, as a position in the hash space.
fn hash_prefix(digest: &Digest) -> u64 {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&digest.hash()[..8]);
    u64::from_be_bytes(bytes)
}

fn hex_prefix(hash_hex: &str) -> Option<u64> {
    u64::from_str_radix(hash_hex.get(..16)?, 16).ok()
}

/// The digests of `wanted` (sorted by hash) that `listed` (sorted by key) holds with their size.
fn merge_listing(wanted: &[Digest], listed: &[ObjectMeta]) -> Vec<Digest> {
    let mut present = Vec::new();
    let mut keys = listed
        .iter()
        .filter_map(|m| Some((m.location.filename()?, m.size)))
        .peekable();
    for digest in wanted {
        let hash = digest.hash_hex();
        while keys.next_if(|(key, _)| *key < hash.as_str()).is_some() {}
        if let Some((key, size)) = keys.peek()
            && key.cmp(&hash.as_str()) == Ordering::Equal
            && *size == digest.size()
        {
            present.push(*digest);
        }
    }
    present
}

#[async_trait]
impl BlobStore for ObjectStoreBlobs {
    /// In key order.
    fn list_blobs(&self) -> BoxStream<'_, Result<ListedBlob>> {
        let prefix = self.cas_prefix();
        self.store
            .list(Some(&prefix))
            .map_err(StoreError::from)
            .try_filter_map(move |meta| {
                let listed = listed_digest(&prefix, &meta).map(|digest| ListedBlob {
                    digest,
                    written: meta.last_modified.into(),
                });
                async move { Ok(listed) }
            })
            .boxed()
    }

    /// Bulk deletes: up to 1,000 keys per request on S3.
    async fn delete_many(&self, digests: &[Digest]) -> Result<()> {
        for digest in digests {
            self.existence.remove(digest);
        }
        let keys: Vec<object_store::Result<Path>> = digests.iter().map(|d| Ok(self.key(d))).collect();
        self.store
            .delete_stream(futures::stream::iter(keys).boxed())
            .try_for_each(|_| async { Ok(()) })
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(e.into()),
            })
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let unknown: Vec<Digest> = digests
            .iter()
            .filter(|d| !d.is_empty_blob() && !self.existence.contains(d))
            .copied()
            .collect();
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let missing: std::collections::HashSet<Digest> =
            self.ask_missing(&unknown).await?.into_iter().collect();
        Ok(digests.iter().filter(|d| missing.contains(d)).copied().collect())
    }

    async fn find_missing_uncached(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.ask_missing(digests).await
    }

    /// One `HEAD`.
    async fn stored_digest(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        Ok(match self.stored_size(&hash_key(function, hash)).await? {
            Some(size) => Digest::new(function, *hash, size).ok(),
            None => empty_blob_of(function, hash),
        })
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
        self.existence.insert(*digest);
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

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        let puts = blobs.into_iter().map(|blob| async move {
            let digest = blob.verify(function)?;
            if !digest.is_empty_blob() {
                self.store
                    .put(&self.key(&digest), PutPayload::from(blob.data))
                    .await?;
                self.existence.insert(digest);
            }
            Ok(digest)
        });
        Ok(futures::stream::iter(puts)
            .buffered(REQUEST_CONCURRENCY)
            .collect()
            .await)
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        futures::stream::iter(digests.to_vec())
            .map(|digest| {
                let blobs = self.clone();
                async move {
                    match crate::BlobStoreExt::get_bytes(&blobs, &digest).await {
                        Err(StoreError::SizeMismatch { .. }) => Ok(None),
                        other => other,
                    }
                }
            })
            .buffered(REQUEST_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.existence.remove(digest);
        if self.stored_size(digest).await?.is_none() {
            return Ok(false);
        }
        match self.store.delete(&self.key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn usage(&self) -> Result<Usage> {
        self.list_blobs()
            .try_fold(Usage::default(), |u, listed| async move {
                let size = listed.digest.size();
                Ok(Usage {
                    blobs: u.blobs + 1,
                    bytes: u.bytes + size,
                    stored_bytes: u.stored_bytes + size,
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
    /// Committed or aborted.
    Done,
}

struct ObjectStoreWriter {
    blobs: ObjectStoreBlobs,
    digest: Digest,
    hasher: DigestHasher,
    written: u64,
    sink: Sink,
}

impl ObjectStoreWriter {
    fn abort(&mut self) -> Option<impl Future<Output = ()> + use<>> {
        match std::mem::replace(&mut self.sink, Sink::Done) {
            // Never completed, so nothing is visible either way; aborting frees the parts.
            Sink::Multipart(multipart) => Some(async move {
                if let Err(e) = multipart.abort().await {
                    tracing::warn!(error = %e, "could not abort a multipart upload; it stays invisible until the bucket's cleanup of incomplete uploads");
                }
            }),
            _ => None,
        }
    }
}

/// A writer dropped before its commit (a client gone, a refused chunk) aborts its upload.
impl Drop for ObjectStoreWriter {
    fn drop(&mut self) {
        if let Some(abort) = self.abort()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(abort);
        }
    }
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
            Sink::Done => unreachable!("a writer is consumed by commit"),
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let function = self.digest.function();
        let actual = std::mem::replace(&mut self.hasher, DigestHasher::new(function)).finish();
        if actual != self.digest {
            if let Some(abort) = self.abort() {
                abort.await;
            }
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let key = self.blobs.key(&self.digest);
        match std::mem::replace(&mut self.sink, Sink::Done) {
            Sink::Buffer(chunks) => {
                self.blobs.store.put(&key, PutPayload::from_iter(chunks)).await?;
            }
            // `finish` aborts the upload itself if a part or the completion fails.
            Sink::Multipart(multipart) => {
                multipart.finish().await?;
            }
            Sink::Done => {}
        }
        self.blobs.existence.insert(self.digest);
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

    /// Batches checked by listing agree with one `HEAD` per digest, however dense or sparse
    /// the batch is among the stored keys, with sizes that differ and duplicates.
    #[tokio::test]
    async fn listing_and_heads_agree() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let store = ObjectStoreBlobs::with_existence_cache(
            memory,
            "p",
            ExistenceCacheOptions {
                entries: 0,
                ttl: std::time::Duration::ZERO,
            },
        );
        let stored: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(i.to_le_bytes().to_vec()))
            .collect();
        let blobs = stored.iter().cloned().map(NewBlob::new).collect();
        for put in store.put_many(DigestFunction::Sha256, blobs).await.expect("put") {
            put.expect("stored");
        }
        let absent = |i: u32| Digest::of(DigestFunction::Sha256, format!("absent {i}").as_bytes());
        let present = |i: usize| Digest::of(DigestFunction::Sha256, &stored[i]);
        let resized = |d: Digest| Digest::new(d.function(), *d.hash(), d.size() + 1).expect("digest");
        let batches: Vec<Vec<Digest>> = vec![
            (0..3000).map(present).collect(),
            (0..2000)
                .step_by(7)
                .map(present)
                .chain((0..500).map(absent))
                .collect(),
            (0..40)
                .map(|i| present(i * 70))
                .chain([resized(present(5)), present(5), present(5)])
                .collect(),
            (0..100).map(absent).collect(),
            (0..3).map(present).collect(),
        ];
        for batch in batches {
            let listed = store.find_missing(&batch).await.expect("find");
            let headed: Vec<Digest> = {
                let mut missing = Vec::new();
                for d in &batch {
                    if store.stored_size(d).await.expect("head") != Some(d.size()) {
                        missing.push(*d);
                    }
                }
                missing
            };
            assert_eq!(listed, headed);
        }
    }
}
