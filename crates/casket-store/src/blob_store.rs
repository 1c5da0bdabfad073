//! The `BlobStore` trait: a small required core, and [`BlobStoreExt`] built on top of it.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, DigestHasher};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use crate::error::{IoContext, Result, StoreError};

/// A blob's bytes, streamed in chunks.
pub type BlobStream = BoxStream<'static, Result<Bytes>>;

/// How much of a blob to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// The first byte to read; must not be past the end of the blob.
    pub offset: u64,
    /// At most this many bytes; `None` reads to the end.
    pub limit: Option<u64>,
}

impl ReadRange {
    /// The whole blob.
    pub const ALL: ReadRange = ReadRange {
        offset: 0,
        limit: None,
    };

    /// How many bytes this range covers in the blob `digest`; an offset past its end is
    /// [`StoreError::OffsetOutOfRange`].
    pub fn len_in(&self, digest: &Digest) -> Result<u64> {
        let rest = digest
            .size()
            .checked_sub(self.offset)
            .ok_or(StoreError::OffsetOutOfRange {
                digest: *digest,
                offset: self.offset,
            })?;
        Ok(self.limit.map_or(rest, |limit| limit.min(rest)))
    }
}

/// One blob of a [`BlobStore::put_many`] batch.
#[derive(Clone, Debug)]
pub struct NewBlob {
    /// The content.
    pub data: Bytes,
    /// The digest the writer declared, if it declared one.
    pub expected: Option<Digest>,
}

impl NewBlob {
    /// Content whose digest the store computes.
    pub fn new(data: Bytes) -> Self {
        NewBlob { data, expected: None }
    }

    /// Hashes the content with `function` and checks it against the declared digest.
    pub fn verify(&self, function: DigestFunction) -> Result<Digest> {
        let actual = Digest::of(function, &self.data);
        match self.expected {
            Some(expected) if expected != actual => Err(StoreError::DigestMismatch { expected, actual }),
            _ => Ok(actual),
        }
    }
}

/// Totals a store can report exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The number of stored blobs.
    pub blobs: u64,
    /// The sum of their sizes.
    pub bytes: u64,
    /// Bytes the backend actually spends on them (allocated blocks for the disk store).
    pub stored_bytes: u64,
}

/// A streaming write of one blob, verified on commit. Dropping it without committing aborts
/// the write and leaves no trace.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `chunk`. Fails with [`StoreError::TooLong`] as soon as the declared size is
    /// exceeded.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// How many bytes have been accepted so far.
    fn written(&self) -> u64;

    /// Checks size and hash, then makes the blob visible atomically. On
    /// [`StoreError::DigestMismatch`] nothing is stored.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A content-addressable blob store.
///
/// Contract shared by every implementation (checked by `conformance`):
/// * a blob is visible only once complete, and only if its bytes hash to its digest;
/// * the empty blob is always present;
/// * writing a blob that exists succeeds and changes nothing;
/// * a digest whose hash is stored with another size is absent for [`BlobStore::find_missing`]
///   and an error ([`StoreError::SizeMismatch`]) for [`BlobStore::read`].
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// The subset of `digests` the store does not hold, in input order, duplicates kept.
    /// Blobs found present count as used (their lifetime is extended).
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>>;

    /// Like [`BlobStore::find_missing`], but asks the store of record and trusts no cache of
    /// earlier answers: for decisions that must not be wrong, such as serving an action result
    /// or accepting a ref only when everything it references is present.
    async fn find_missing_uncached(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.find_missing(digests).await
    }

    /// The digest of the stored blob whose hash is `hash`, whatever its size, or `Ok(None)`
    /// if there is none: for protocols that name blobs by hash alone (the HTTP cache). Not a
    /// use of the blob. Stores that cannot answer say `Unsupported`.
    async fn stored_digest(&self, _function: DigestFunction, _hash: &[u8; 32]) -> Result<Option<Digest>> {
        Err(StoreError::Unsupported("finding a blob by its hash alone"))
    }

    /// Streams `range` of the blob, or `Ok(None)` if it is absent.
    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>>;

    /// Starts a verified write of `digest`.
    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>>;

    /// Removes the blob; `Ok(false)` if it was absent.
    async fn delete(&self, digest: &Digest) -> Result<bool>;

    /// Exact totals over every stored blob.
    async fn usage(&self) -> Result<Usage>;

    /// Stores a batch of blobs hashed with `function`, each hashed once, and answers per blob
    /// in order: its digest, or why it was refused (a blob that does not match its declared
    /// digest is [`StoreError::DigestMismatch`] and is not stored under any name). The batch is
    /// the unit of work: stores on a local disk write it in one blocking task.
    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        let mut results = Vec::with_capacity(blobs.len());
        for blob in blobs {
            let digest = blob.expected.unwrap_or_else(|| Digest::of(function, &blob.data));
            results.push(self.put_verified(&digest, blob.data).await.map(|()| digest));
        }
        Ok(results)
    }

    /// Reads several blobs of at most [`MAX_IN_MEMORY_BLOB`] bytes each, in order; `None` for
    /// those absent (or stored with another size). The default reads them one by one; stores on a local disk read the
    /// whole batch in one blocking task.
    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(digests.len());
        for digest in digests {
            out.push(match BlobStoreExt::get_bytes(self, digest).await {
                Err(StoreError::SizeMismatch { .. }) => None,
                other => other?,
            });
        }
        Ok(out)
    }

    /// Stores the content of the regular file at `path` and returns its digest. The default
    /// hashes the file, then streams it into [`BlobStore::begin_write`]; stores on a local disk
    /// do it in one pass.
    async fn ingest_file(&self, path: &Path, function: DigestFunction) -> Result<Digest> {
        let digest = hash_file(path, function).await?;
        let file = tokio::fs::File::open(path).await.io_context("open", path)?;
        self.write_stream(&digest, reader_stream(file, path.to_owned()))
            .await?;
        Ok(digest)
    }

    /// A read-only file on the local file system holding the blob, with the owner's execute
    /// bit set as `executable` asks, for hardlink checkouts; `Ok(None)` if the store keeps no
    /// such files. The path may not exist if the blob is absent (check with `find_missing`
    /// first). The file must never be modified. May block: call it from a blocking thread.
    fn local_file(&self, _digest: &Digest, _executable: bool) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    /// Every stored blob with when it was last written, for expiry by reachability (a bucket
    /// has no access times). Stores that cannot list yield one `Unsupported` error.
    fn list_blobs(&self) -> BoxStream<'_, Result<ListedBlob>> {
        futures::stream::once(async { Err(StoreError::Unsupported("listing blobs")) }).boxed()
    }

    /// Removes `digests` (absent ones are no error), in bulk where the store can.
    async fn delete_many(&self, digests: &[Digest]) -> Result<()> {
        for digest in digests {
            self.delete(digest).await?;
        }
        Ok(())
    }
}

/// A blob as listed by [`BlobStore::list_blobs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedBlob {
    /// The blob.
    pub digest: Digest,
    /// When it was last written.
    pub written: std::time::SystemTime,
}

/// The largest blob [`BlobStoreExt::get_bytes`] loads into memory.
pub const MAX_IN_MEMORY_BLOB: u64 = 64 << 20;

/// Conveniences for every [`BlobStore`]. Not meant to be implemented by hand.
#[async_trait]
pub trait BlobStoreExt: BlobStore {
    /// True if the blob is present.
    async fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.find_missing(std::slice::from_ref(digest)).await?.is_empty())
    }

    /// Reads a whole blob of at most [`MAX_IN_MEMORY_BLOB`] bytes into memory.
    async fn get_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        if digest.size() > MAX_IN_MEMORY_BLOB {
            return Err(StoreError::TooLarge {
                digest: *digest,
                limit: MAX_IN_MEMORY_BLOB,
            });
        }
        let Some(stream) = self.read(digest, ReadRange::ALL).await? else {
            return Ok(None);
        };
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        Ok(Some(match chunks.len() {
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(chunks.concat()),
        }))
    }

    /// Stores `data`, hashed with `function`, and returns its digest.
    async fn put_bytes(&self, function: DigestFunction, data: Bytes) -> Result<Digest> {
        let digest = Digest::of(function, &data);
        self.put_verified(&digest, data).await?;
        Ok(digest)
    }

    /// Stores `data` under `digest`, refusing it if it does not match.
    async fn put_verified(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let mut writer = self.begin_write(digest).await?;
        writer.write(data).await?;
        writer.commit().await
    }

    /// Stores a stream of chunks under `digest`, verified.
    async fn write_stream(&self, digest: &Digest, mut chunks: BlobStream) -> Result<()> {
        let mut writer = self.begin_write(digest).await?;
        while let Some(chunk) = chunks.next().await {
            writer.write(chunk?).await?;
        }
        writer.commit().await
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}

/// The chunk size for streaming reads and file ingestion.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Hashes the file at `path` with `function` without loading it whole.
pub async fn hash_file(path: &Path, function: DigestFunction) -> Result<Digest> {
    let path = path.to_owned();
    crate::error::blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).io_context("open", &path)?;
        let mut hasher = DigestHasher::new(function);
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = file.read(&mut buf).io_context("read", &path)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
}

/// Streams an async reader in [`CHUNK_SIZE`] chunks.
/// The key of a lookup by hash alone in stores keyed by function and hash: a digest of size 0
/// (the store then reports the stored size).
pub(crate) fn hash_key(function: DigestFunction, hash: &[u8; 32]) -> Digest {
    Digest::new(function, *hash, 0).expect("size 0 fits the wire")
}

/// The empty blob's digest when `hash` is its hash: it is present in every store, stored or not.
pub(crate) fn empty_blob_of(function: DigestFunction, hash: &[u8; 32]) -> Option<Digest> {
    let empty = function.empty_digest();
    (empty.hash() == hash).then_some(empty)
}

pub(crate) fn reader_stream<R: tokio::io::AsyncRead + Send + 'static>(
    reader: R,
    path: PathBuf,
) -> BlobStream {
    tokio_util::io::ReaderStream::with_capacity(reader, CHUNK_SIZE)
        .map_err(move |source| StoreError::Io {
            op: "read",
            path: path.clone(),
            source,
        })
        .boxed()
}
