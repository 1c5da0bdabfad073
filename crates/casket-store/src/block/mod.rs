//! [`BlockStore`]: small blobs appended into large block files, found through an index in
//! memory; large blobs one file each in a [`DiskStore`] beside them.
//!
//! * **No inode per small blob.** A batch of blobs is one `pwrite` at the end of the open
//!   block (`log.rs`); a block is sealed (synced, then its index file written) when full.
//! * **Existence checks make no system call**: the index (`index.rs`) holds every blob's
//!   place, size and last use.
//! * **Expiry without per-blob unlinks.** Under a capacity, the oldest block (or the least
//!   recently used large file, if older) is expired whole: its blobs used within the grace
//!   period are first copied forward into the open block, the rest leave the index, then its
//!   file is deleted. A read that already holds the file finishes. Usage is exact: blob counts
//!   and sizes from the index, stored bytes from the block files' lengths and the large files'
//!   allocated blocks.
//! * **Crash safety.** Every record carries its digest, and every read re-hashes what it
//!   returns, so a wrong byte is never served. A batch becomes visible only after its `pwrite`
//!   (and, with `fsync`, its `fdatasync`) returned. On start, sealed blocks are indexed from
//!   their index files (checksummed; a damaged one is rebuilt by scanning its block) and only
//!   the open block is scanned and verified, cut back before the first torn record. A process
//!   killed at any moment loses nothing it acknowledged; without `fsync`, a power loss loses at
//!   most the writes since the last sync epoch (`sync_interval`). A full disk fails the write
//!   and cuts the partial batch off.
//! * **Grace.** Reads and existence checks touch a blob; expiry never drops a blob used within
//!   the grace period. Last use survives a restart only through records (writes and copies
//!   forward carry it); uses since then are forgotten with the process.

mod index;
mod log;
mod record;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use futures::StreamExt;

use self::index::{Index, Place};
use self::log::Blocks;
use self::record::{Header, Kind};
use crate::blob_store::{
    BlobStore, BlobStream, BlobWriter, MAX_IN_MEMORY_BLOB, NewBlob, ReadRange, Usage, empty_blob_of, hash_key,
};
use crate::disk::{DiskOptions, DiskStore};
use crate::error::{IoContext, Result, StoreError, blocking};

/// The directory holding the block files, below the store's root; its presence marks a block
/// store.
const BLOCKS_DIR: &str = "blocks";
/// The most bytes one `pwrite` appends.
const APPEND_BATCH: usize = 8 << 20;
/// The largest small-blob limit (blobs above it are files of their own).
pub const MAX_SMALL_BLOB_LIMIT: u64 = 64 << 20;

/// How a [`BlockStore`] stores and expires.
#[derive(Clone, Copy, Debug)]
pub struct BlockOptions {
    /// Most bytes the store may take on disk (blocks and large files); expiry keeps it below.
    /// `None` never expires anything.
    pub capacity: Option<u64>,
    /// Blobs up to this size go into blocks; larger ones are files (at most
    /// [`MAX_SMALL_BLOB_LIMIT`]).
    pub small_blob_limit: u64,
    /// The size at which a block is sealed; `None` picks one from the capacity (a sixteenth,
    /// between 256 KiB and 64 MiB).
    pub block_size: Option<u64>,
    /// Blobs used within this period are never expired.
    pub grace: Duration,
    /// `fdatasync` every write before it is acknowledged.
    pub fsync: bool,
    /// Without `fsync`, how often the open block is synced (the sync epoch).
    pub sync_interval: Duration,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            capacity: None,
            small_blob_limit: 1 << 20,
            block_size: None,
            grace: Duration::from_secs(600),
            fsync: false,
            sync_interval: Duration::from_secs(5),
        }
    }
}

/// What [`BlockStore::expire`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Blobs dropped.
    pub removed_blobs: u64,
    /// Blobs copied forward because they were used within the grace period.
    pub copied_forward: u64,
    /// Bytes on disk before and after.
    pub before: u64,
    /// See `before`.
    pub after: u64,
}

/// What [`BlockStore::verify`] found.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// Blobs whose stored bytes match their digest.
    pub intact: u64,
    /// Blobs the index holds whose record is damaged (they were dropped from the index, so
    /// they read as absent and can be stored again).
    pub corrupt: Vec<Digest>,
    /// Damaged block tails: (block file, bytes valid, length).
    pub damaged_blocks: Vec<(PathBuf, u64, u64)>,
}

/// The block store. See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct BlockStore {
    inner: Arc<Inner>,
    /// Whether reads and existence checks count as use.
    touch: bool,
}

struct Inner {
    /// Where the block files are (for messages; readers hold the files open).
    blocks_dir: PathBuf,
    options: BlockOptions,
    block_size: u64,
    index: Index,
    /// Every live block's file, for readers.
    files: RwLock<HashMap<u32, Arc<File>>>,
    blocks: Mutex<Blocks>,
    /// Large blobs, and the records and refs kept beside the store.
    large: DiskStore,
    /// Bytes of every block file (mirrors `blocks`, readable without its lock).
    block_bytes: AtomicU64,
    /// Every large blob, so that expiry finds the least recently used without walking the
    /// whole index.
    large_files: Mutex<HashSet<Digest>>,
    /// Bytes allocated to large files.
    large_bytes: AtomicU64,
    /// Room held by large writes in flight.
    reserved: Arc<AtomicU64>,
}

impl std::fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStore")
            .field("root", &self.root())
            .field("index", &self.inner.index)
            .finish()
    }
}

/// Seconds since the UNIX epoch, the clock of last use.
pub(crate) fn now_secs() -> u32 {
    secs(SystemTime::now())
}

fn secs(time: SystemTime) -> u32 {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl BlockStore {
    /// True if `root` holds a block store.
    pub fn exists_at(root: &Path) -> bool {
        root.join(BLOCKS_DIR).is_dir()
    }

    /// Opens (or creates) the block store at `root`: its index is rebuilt from the sealed
    /// blocks' index files and a scan of the open block. Blocks: call it from a blocking
    /// thread.
    pub fn open(root: impl Into<PathBuf>, options: BlockOptions) -> Result<Self> {
        let root = root.into();
        if options.small_blob_limit > MAX_SMALL_BLOB_LIMIT {
            return Err(StoreError::Unsupported("a small-blob limit above 64 MiB"));
        }
        let large = DiskStore::open(
            &root,
            DiskOptions {
                fsync: options.fsync,
                ..DiskOptions::default()
            },
        )?;
        let dir = large.root().join(BLOCKS_DIR);
        std::fs::create_dir_all(&dir).io_context("create", &dir)?;
        let index = Index::new();
        let blocks = Blocks::recover(&dir, options.fsync, |block, entries| {
            for entry in entries {
                let digest = &entry.header.digest;
                match entry.header.kind {
                    Kind::Blob => {
                        let place = Place::Block {
                            block,
                            offset: entry.offset,
                        };
                        index.insert(digest, place, entry.header.written);
                    }
                    Kind::Tombstone => {
                        index.remove(digest, None);
                    }
                }
            }
        })?;
        let mut large_bytes = 0;
        let mut large_files = HashSet::new();
        for object in large.scan_objects()?.objects {
            if !object.digest.is_empty_blob() {
                index.insert(&object.digest, Place::File, secs(object.last_used));
                large_files.insert(object.digest);
                large_bytes += object.stored_bytes;
            }
        }
        let block_size = options.block_size.unwrap_or_else(|| {
            options
                .capacity
                .map_or(64 << 20, |capacity| (capacity / 16).clamp(256 << 10, 64 << 20))
        });
        let inner = Arc::new(Inner {
            blocks_dir: dir,
            options,
            block_size,
            index,
            files: RwLock::new(blocks.files()),
            block_bytes: AtomicU64::new(blocks.stored_bytes()),
            blocks: Mutex::new(blocks),
            large,
            large_files: Mutex::new(large_files),
            large_bytes: AtomicU64::new(large_bytes),
            reserved: Arc::default(),
        });
        if !options.fsync {
            start_syncer(Arc::downgrade(&inner), options.sync_interval);
        }
        Ok(BlockStore { inner, touch: true })
    }

    /// The same store, except that reads and existence checks through it do not count as use
    /// (for fsck).
    pub fn untouched(&self) -> BlockStore {
        BlockStore {
            inner: self.inner.clone(),
            touch: false,
        }
    }

    /// Now, if reads count as use.
    fn touch_time(&self) -> Option<u32> {
        self.touch.then(now_secs)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        self.inner.large.root()
    }

    /// The disk store holding large blobs, beside which records and refs are kept.
    pub fn disk(&self) -> &DiskStore {
        &self.inner.large
    }

    /// Its options.
    pub fn options(&self) -> BlockOptions {
        self.inner.options
    }

    /// Exact usage, without waiting for anything.
    pub fn current_usage(&self) -> Usage {
        let inner = &self.inner;
        Usage {
            blobs: inner.index.blobs(),
            bytes: inner.index.bytes(),
            stored_bytes: inner.block_bytes.load(Ordering::Relaxed)
                + inner.large_bytes.load(Ordering::Relaxed),
        }
    }

    /// Bytes of memory the index takes.
    pub fn index_memory(&self) -> u64 {
        self.inner.index.heap_bytes()
    }

    /// Syncs the open block: what was written so far survives a power loss.
    pub fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    /// Expires whole blocks and large files, oldest first, until at most `target` bytes are
    /// stored; blobs used within `grace` are copied forward, never dropped, so the target may
    /// not be met. Blocks: call it from a blocking thread.
    pub fn expire(&self, target: u64, grace: Duration) -> Result<Expiry> {
        let inner = &self.inner;
        let mut blocks = inner.lock_blocks();
        let before = inner.stored();
        let mut expiry = Expiry {
            before,
            ..Expiry::default()
        };
        if before > target && blocks.open.len > 0 {
            // The open block can only go once sealed.
            let file = blocks.seal()?;
            inner.files_mut().insert(blocks.open.block.seq, file);
        }
        match inner.make_room(&mut blocks, target, 0, grace, &mut expiry) {
            // What is left was used within the grace period.
            Ok(()) | Err(StoreError::NoRoom(_)) => {}
            Err(e) => return Err(e),
        }
        expiry.after = inner.stored();
        Ok(expiry)
    }

    /// Re-reads and re-hashes every block. Damaged records are dropped from the index, so they
    /// read as absent. Blocks: call it from a blocking thread.
    pub fn verify(&self) -> Result<Verification> {
        let inner = &self.inner;
        let log::Verified {
            records,
            damaged: damaged_blocks,
        } = inner.lock_blocks().verify()?;
        let mut verification = Verification {
            damaged_blocks,
            ..Verification::default()
        };
        let mut intact = HashSet::new();
        for (block, entries) in records {
            for entry in entries.iter().filter(|e| e.header.kind == Kind::Blob) {
                intact.insert((block, entry.offset));
                let place = Place::Block {
                    block,
                    offset: entry.offset,
                };
                if inner.index.get(&entry.header.digest, None).map(|f| f.place) == Some(place) {
                    verification.intact += 1;
                }
            }
        }
        // Index entries pointing at a record the scan did not find intact.
        let indexed: Vec<_> = inner.indexed_block_records();
        for (digest, block, offset) in indexed {
            if !intact.contains(&(block, offset)) {
                inner.index.remove(&digest, Some(Place::Block { block, offset }));
                verification.corrupt.push(digest);
            }
        }
        Ok(verification)
    }

    /// Stores verified small blobs: one append per batch of up to [`APPEND_BATCH`] bytes.
    fn put_small(&self, blobs: &[(Digest, Bytes)]) -> Result<()> {
        let inner = &self.inner;
        let now = now_secs();
        let mut seen = HashSet::new();
        let mut batch: Vec<(Header, &[u8])> = Vec::new();
        let mut batch_bytes = 0;
        for (digest, data) in blobs {
            let present = inner
                .index
                .get(digest, Some(now))
                .is_some_and(|f| f.size == digest.size());
            if digest.is_empty_blob() || present || !seen.insert(*digest) {
                continue;
            }
            let header = Header {
                kind: Kind::Blob,
                digest: *digest,
                written: now,
            };
            batch_bytes += header.record_len() as usize;
            batch.push((header, data));
            if batch_bytes as u64 >= inner.block_size.min(APPEND_BATCH as u64) {
                inner.append(&std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            inner.append(&batch)?;
        }
        Ok(())
    }

    /// Reads a small blob's record, verified; `None` if it is gone or damaged (a damaged
    /// record is dropped from the index and logged).
    fn read_small(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let inner = &self.inner;
        // An expiry may move the blob between the lookup and the read: look again once.
        for _ in 0..2 {
            let Some(found) = inner.index.get(digest, None) else {
                return Ok(None);
            };
            let Place::Block { block, offset } = found.place else {
                return Ok(None);
            };
            let file = inner
                .files
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&block)
                .cloned();
            let Some(file) = file else {
                continue;
            };
            let path = || log::block_path(&inner.blocks_dir, block);
            return match log::read_record(&file, offset, digest, path) {
                Ok(data) => Ok(Some(data)),
                Err(StoreError::Corrupt { expected, actual }) => {
                    tracing::warn!(%expected, %actual, block = %path().display(), offset, "damaged record: dropped from the index");
                    inner.index.remove(digest, Some(found.place));
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        }
        Ok(None)
    }

    fn is_small(&self, digest: &Digest) -> bool {
        digest.size() <= self.inner.options.small_blob_limit
    }

    /// Records a large blob just written as a file.
    fn added_file(&self, digest: &Digest) -> Result<()> {
        let inner = &self.inner;
        let path = inner.large.object_path(digest);
        let allocated = std::fs::metadata(&path).io_context("stat", &path)?.blocks() * 512;
        if inner.index.insert(digest, Place::File, now_secs()).is_none() {
            inner.large_files().insert(*digest);
            inner.large_bytes.fetch_add(allocated, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Holds room for a large write of `bytes`, expiring first if needed.
    fn reserve(&self, bytes: u64) -> Result<Reservation> {
        let inner = &self.inner;
        if let Some(capacity) = inner.options.capacity {
            let mut blocks = inner.lock_blocks();
            let reserved = inner.reserved.load(Ordering::Relaxed);
            inner.make_room(
                &mut blocks,
                capacity,
                reserved + bytes,
                inner.options.grace,
                &mut Expiry::default(),
            )?;
        }
        inner.reserved.fetch_add(bytes, Ordering::Relaxed);
        Ok(Reservation {
            bytes,
            reserved: inner.reserved.clone(),
        })
    }
}

/// Room held by a large write in flight.
struct Reservation {
    bytes: u64,
    reserved: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The bytes of `records` (each header, then its content) back to back, and their headers.
fn encode_records(records: &[(Header, &[u8])]) -> (Vec<u8>, Vec<Header>) {
    let mut bytes = Vec::with_capacity(records.iter().map(|(h, _)| h.record_len() as usize).sum());
    let mut headers = Vec::with_capacity(records.len());
    for (header, data) in records {
        header.encode(&mut bytes);
        bytes.extend_from_slice(data);
        headers.push(*header);
    }
    (bytes, headers)
}

fn start_syncer(inner: Weak<Inner>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("casket-block-sync".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if let Err(e) = inner.sync() {
                    tracing::warn!("sync epoch failed: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no sync thread ({e}): block data is synced only when blocks are sealed");
    }
}

impl Inner {
    fn lock_blocks(&self) -> MutexGuard<'_, Blocks> {
        // Every change to `Blocks` is completed or undone before anything that can panic.
        self.blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn large_files(&self) -> MutexGuard<'_, HashSet<Digest>> {
        self.large_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes the large blob `digest`'s file and forgets it.
    fn remove_file(&self, digest: &Digest) -> Result<()> {
        self.index.remove(digest, Some(Place::File));
        self.large_files().remove(digest);
        let path = self.large.object_path(digest);
        let allocated = std::fs::metadata(&path).map_or(0, |m| m.blocks() * 512);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).io_context("remove", path),
        }
        self.large_bytes.fetch_sub(allocated, Ordering::Relaxed);
        Ok(())
    }

    fn files_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, Arc<File>>> {
        self.files
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stored(&self) -> u64 {
        self.block_bytes.load(Ordering::Relaxed) + self.large_bytes.load(Ordering::Relaxed)
    }

    fn sync(&self) -> Result<()> {
        let (file, path) = {
            let blocks = self.lock_blocks();
            (blocks.open.block.file.clone(), blocks.open.block.path.clone())
        };
        file.sync_data().io_context("fsync", path)
    }

    /// Appends records for `batch` (after making room) and indexes them.
    fn append(&self, batch: &[(Header, &[u8])]) -> Result<()> {
        let (bytes, headers) = encode_records(batch);
        let mut blocks = self.lock_blocks();
        if let Some(capacity) = self.options.capacity {
            let need = bytes.len() as u64 + self.reserved.load(Ordering::Relaxed);
            self.make_room(
                &mut blocks,
                capacity,
                need,
                self.options.grace,
                &mut Expiry::default(),
            )?;
        }
        self.append_locked(&mut blocks, &bytes, &headers)
    }

    fn append_locked(&self, blocks: &mut Blocks, bytes: &[u8], headers: &[Header]) -> Result<()> {
        let (block, offsets, new_file) = blocks.append(bytes, headers, self.block_size)?;
        if let Some(file) = new_file {
            self.files_mut().insert(block, file);
        }
        self.block_bytes.store(blocks.stored_bytes(), Ordering::Relaxed);
        for (header, offset) in headers.iter().zip(offsets) {
            let place = Place::Block { block, offset };
            match header.kind {
                Kind::Blob => self.index.insert(&header.digest, place, header.written),
                Kind::Tombstone => None,
            };
        }
        Ok(())
    }

    /// Expires until `need` more bytes fit under `limit`; `NoRoom` if everything left was used
    /// within the grace period.
    fn make_room(
        &self,
        blocks: &mut Blocks,
        limit: u64,
        need: u64,
        grace: Duration,
        expiry: &mut Expiry,
    ) -> Result<()> {
        if need > limit && self.options.capacity == Some(limit) {
            return Err(StoreError::ExceedsCapacity {
                bytes: need,
                capacity: limit,
            });
        }
        // Blobs last used after this second are within the grace period.
        let cutoff = now_secs().saturating_sub(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX));
        // Each pass expires one block or file; after as many passes as there are, whatever
        // is left was copied forward.
        let mut passes = blocks.sealed.len() + self.large_files().len() + 1;
        while self.stored() + need > limit {
            if passes == 0 || !self.expire_oldest(blocks, cutoff, expiry)? {
                return Err(StoreError::NoRoom(format!(
                    "the store is full ({} of {limit} bytes used) and everything left was used \
                     within the last {} s",
                    self.stored(),
                    grace.as_secs()
                )));
            }
            passes -= 1;
        }
        Ok(())
    }

    /// Expires the oldest sealed block or the least recently used large file, whichever is
    /// older; false if neither can go.
    fn expire_oldest(&self, blocks: &mut Blocks, cutoff: u32, expiry: &mut Expiry) -> Result<bool> {
        let oldest_file = self
            .large_files()
            .iter()
            .filter_map(|digest| Some((*digest, self.index.get(digest, None)?.last_used)))
            .filter(|(_, last_used)| *last_used <= cutoff)
            .min_by_key(|(_, last_used)| *last_used);
        let oldest_block = blocks.sealed.front().map(|s| s.last_write);
        match (oldest_file, oldest_block) {
            (Some((digest, last_used)), block) if block.is_none_or(|b| last_used <= b) => {
                self.remove_file(&digest)?;
                expiry.removed_blobs += 1;
                Ok(true)
            }
            (_, Some(_)) => {
                self.expire_block(blocks, cutoff, expiry)?;
                Ok(true)
            }
            (_, None) => Ok(false),
        }
    }

    /// Expires the oldest sealed block: recently used blobs are copied forward, the others
    /// leave the index, then its files are deleted.
    fn expire_block(&self, blocks: &mut Blocks, cutoff: u32, expiry: &mut Expiry) -> Result<()> {
        let Some((oldest, entries)) = blocks.oldest_records()? else {
            return Ok(());
        };
        let (seq, file, path) = (
            oldest.block.seq,
            oldest.block.file.clone(),
            oldest.block.path.clone(),
        );
        let mut forward: Vec<(Header, Vec<u8>)> = Vec::new();
        for entry in entries.iter().filter(|e| e.header.kind == Kind::Blob) {
            let digest = entry.header.digest;
            let place = Place::Block {
                block: seq,
                offset: entry.offset,
            };
            let Some(found) = self.index.get(&digest, None).filter(|f| f.place == place) else {
                continue;
            };
            if found.last_used > cutoff
                && let Ok(data) = log::read_record(&file, entry.offset, &digest, || path.clone())
            {
                let header = Header {
                    kind: Kind::Blob,
                    digest,
                    written: found.last_used,
                };
                forward.push((header, data));
            } else {
                self.index.remove(&digest, Some(place));
                expiry.removed_blobs += 1;
            }
        }
        expiry.copied_forward += forward.len() as u64;
        for chunk in forward.chunks(1024) {
            let chunk: Vec<(Header, &[u8])> = chunk.iter().map(|(h, data)| (*h, data.as_slice())).collect();
            let (bytes, headers) = encode_records(&chunk);
            self.append_locked(blocks, &bytes, &headers)?;
        }
        self.files_mut().remove(&seq);
        blocks.drop_oldest()?;
        self.block_bytes.store(blocks.stored_bytes(), Ordering::Relaxed);
        Ok(())
    }

    /// Every index entry that points into a block.
    fn indexed_block_records(&self) -> Vec<(Digest, u32, u32)> {
        let mut out = Vec::new();
        self.index.for_each(|digest, found| {
            if let Place::Block { block, offset } = found.place {
                out.push((digest, block, offset));
            }
        });
        out
    }
}

/// A streaming write of a small blob: buffered (it is small), verified and appended on commit.
struct SmallWriter {
    store: BlockStore,
    digest: Digest,
    data: Vec<u8>,
}

#[async_trait]
impl BlobWriter for SmallWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if (self.data.len() + chunk.len()) as u64 > self.digest.size() {
            return Err(StoreError::TooLong(self.digest));
        }
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.data.len() as u64
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let SmallWriter { store, digest, data } = *self;
        let blob = NewBlob {
            data: Bytes::from(data),
            expected: Some(digest),
        };
        blocking(move || {
            blob.verify(digest.function())?;
            store.put_small(&[(digest, blob.data)])
        })
        .await
    }
}

/// A streaming write of a large blob to a file of its own, holding its room.
struct LargeWriter {
    store: BlockStore,
    digest: Digest,
    inner: Box<dyn BlobWriter>,
    _reservation: Reservation,
}

#[async_trait]
impl BlobWriter for LargeWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.inner.write(chunk).await
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let LargeWriter {
            store, digest, inner, ..
        } = *self;
        inner.commit().await?;
        blocking(move || store.added_file(&digest)).await
    }
}

#[async_trait]
impl BlobStore for BlockStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let now = self.touch_time();
        Ok(digests
            .iter()
            .filter(|d| {
                !d.is_empty_blob()
                    && self
                        .inner
                        .index
                        .get(d, now)
                        .is_none_or(|found| found.size != d.size())
            })
            .copied()
            .collect())
    }

    async fn stored_digest(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        Ok(match self.inner.index.get(&hash_key(function, hash), None) {
            Some(found) => Digest::new(function, *hash, found.size).ok(),
            None => empty_blob_of(function, hash),
        })
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        let len = range.len_in(digest)?;
        if digest.is_empty_blob() {
            return Ok(Some(futures::stream::empty().boxed()));
        }
        let Some(found) = self.inner.index.get(digest, self.touch_time()) else {
            return Ok(None);
        };
        if found.size != digest.size() {
            return Err(StoreError::SizeMismatch {
                digest: *digest,
                actual: found.size,
            });
        }
        if found.place == Place::File {
            return self.inner.large.read(digest, range).await;
        }
        let (store, d) = (self.clone(), *digest);
        let Some(data) = blocking(move || store.read_small(&d)).await? else {
            return Ok(None);
        };
        let start = range.offset as usize;
        let data = Bytes::from(data).slice(start..start + len as usize);
        Ok(Some(
            futures::stream::iter((!data.is_empty()).then_some(Ok(data))).boxed(),
        ))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        if self.is_small(digest) {
            return Ok(Box::new(SmallWriter {
                store: self.clone(),
                digest: *digest,
                data: Vec::with_capacity(digest.size() as usize),
            }));
        }
        let (store, size) = (self.clone(), digest.size());
        let reservation = blocking(move || store.reserve(size)).await?;
        Ok(Box::new(LargeWriter {
            store: self.clone(),
            digest: *digest,
            inner: self.inner.large.begin_write(digest).await?,
            _reservation: reservation,
        }))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let (store, digest) = (self.clone(), *digest);
        blocking(move || {
            let inner = &store.inner;
            let Some(found) = inner.index.get(&digest, None).filter(|f| f.size == digest.size()) else {
                return Ok(false);
            };
            match found.place {
                Place::File => inner.remove_file(&digest)?,
                Place::Block { .. } => {
                    // The tombstone first: once the index forgets the blob, a crash must not
                    // bring it back.
                    let tombstone = Header {
                        kind: Kind::Tombstone,
                        digest,
                        written: now_secs(),
                    };
                    let (bytes, headers) = encode_records(&[(tombstone, &[])]);
                    let mut blocks = inner.lock_blocks();
                    inner.append_locked(&mut blocks, &bytes, &headers)?;
                    inner.index.remove(&digest, Some(found.place));
                }
            }
            Ok(true)
        })
        .await
    }

    async fn usage(&self) -> Result<Usage> {
        Ok(self.current_usage())
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        let limit = self.inner.options.small_blob_limit;
        let (small, large): (Vec<_>, Vec<_>) = blobs
            .into_iter()
            .enumerate()
            .partition(|(_, blob)| blob.data.len() as u64 <= limit);
        let store = self.clone();
        let mut results: Vec<(usize, Result<Digest>)> = blocking(move || {
            let mut results = Vec::with_capacity(small.len());
            let mut verified = Vec::with_capacity(small.len());
            for (i, blob) in small {
                let result = blob.verify(function);
                if let Ok(digest) = &result {
                    verified.push((*digest, blob.data));
                }
                results.push((i, result));
            }
            store.put_small(&verified)?;
            Ok(results)
        })
        .await?;
        for (i, blob) in large {
            let result = match blob.verify(function) {
                Ok(digest) => crate::BlobStoreExt::put_verified(self, &digest, blob.data)
                    .await
                    .map(|()| digest),
                Err(e) => Err(e),
            };
            results.push((i, result));
        }
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, result)| result).collect())
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        if let Some(large) = digests.iter().find(|d| d.size() > MAX_IN_MEMORY_BLOB) {
            return Err(StoreError::TooLarge {
                digest: *large,
                limit: MAX_IN_MEMORY_BLOB,
            });
        }
        let mut out = vec![None; digests.len()];
        let mut small = Vec::new();
        let now = self.touch_time();
        for (i, digest) in digests.iter().enumerate() {
            if digest.is_empty_blob() {
                out[i] = Some(Bytes::new());
                continue;
            }
            match self.inner.index.get(digest, now) {
                Some(found) if found.size == digest.size() => match found.place {
                    Place::File => out[i] = crate::BlobStoreExt::get_bytes(self, digest).await?,
                    Place::Block { .. } => small.push((i, *digest)),
                },
                _ => {}
            }
        }
        let store = self.clone();
        let read = blocking(move || {
            small
                .into_iter()
                .map(|(i, digest)| Ok((i, store.read_small(&digest)?)))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        for (i, data) in read {
            out[i] = data.map(Bytes::from);
        }
        Ok(out)
    }

    async fn ingest_file(&self, path: &Path, function: DigestFunction) -> Result<Digest> {
        let size = tokio::fs::metadata(path).await.io_context("stat", path)?.len();
        if size <= self.inner.options.small_blob_limit {
            let data = tokio::fs::read(path).await.io_context("read", path)?;
            let blob = NewBlob::new(Bytes::from(data));
            let mut results = self.put_many(function, vec![blob]).await?;
            return results
                .pop()
                .unwrap_or(Err(StoreError::Task("no result".to_owned())));
        }
        let store = self.clone();
        let _reservation = blocking(move || store.reserve(size)).await?;
        let digest = self.inner.large.ingest_file(path, function).await?;
        let store = self.clone();
        blocking(move || store.added_file(&digest)).await?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests;
