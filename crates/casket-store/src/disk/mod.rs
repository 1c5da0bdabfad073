//! `DiskStore`: blobs as read-only files under a root directory.
//!
//! Layouts (see ARCHITECTURE.md), casket's own:
//!
//! ```text
//! ROOT/casket-store              marker: "casket disk store 1"
//! ROOT/cas/sha256/ab/cdef...     one file per blob, named by hash (2 + 62 hex), mode 0444
//! ROOT/cas/sha256/ab/cdef....x   its executable variant (mode 0555), made on first need
//! ROOT/cas/blake3/ab/cdef...
//! ROOT/tmp/                      where objects are written (O_TMPFILE) before being linked
//! ROOT/refs/project/element/key  ref files holding a digest (ac/, assets/: records)
//! ```
//!
//! and buildbox-casd's ([`Layout::Casd`]), which BuildStream 2 and buildbox-run read directly
//! and the rest of the root belongs to them:
//!
//! ```text
//! ROOT/cas/objects/ab/cdef...    SHA-256 objects, mode 0444 (no executable variants)
//! ROOT/cas/tmp/                  where objects are written
//! ROOT/cas/casket/blake3/ab/...  objects of other digest functions
//! ROOT/cas/casket/refs/...       casket's refs and records (ac/, assets/)
//! ```
//!
//! The 256 fan-out directories per function are created once, with the marker, so the write
//! path never calls `mkdir`. A blob is written to an anonymous `O_TMPFILE` inode in `tmp/` (same
//! file system), verified, and only then given its name with `linkat`, so readers never see a
//! partial object, a crash leaves nothing, and concurrent writers of one blob (threads or
//! processes) race harmlessly: the first link wins and the others find it there.

mod accounting;
mod direct;
mod ingest;
mod maintenance;
mod temp;
mod writer;

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, hex_digits};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

pub use maintenance::{ObjectInfo, ObjectScan};

use crate::blob_store::{
    BlobStore, BlobStream, BlobWriter, MAX_IN_MEMORY_BLOB, NewBlob, ReadRange, Usage, empty_blob_of,
    reader_stream,
};
use crate::error::{IoContext, Result, StoreError, blocking};

const MARKER_FILE: &str = "casket-store";
const MARKER: &str = "casket disk store 1\n";

/// buildbox-casd's object directory (SHA-256 only), relative to the root.
const CASD_OBJECTS: &str = "cas/objects";
/// What casket keeps of its own in a buildbox-casd cache, relative to the root.
const CASD_OWN: &str = "cas/casket";

/// Blobs up to this size are read whole when opened, in one blocking call.
const SMALL_READ: u64 = 256 << 10;

/// Appended to an object's name for its executable variant.
const VARIANT_SUFFIX: &str = ".x";

/// Existence checks per blocking task: a batch larger than this is checked in parallel.
const STATS_PER_TASK: usize = 1024;

/// An object used within this long is not touched again; keeps LRU bookkeeping off the hot path.
const TOUCH_GRANULARITY: Duration = Duration::from_secs(60);

/// Where a [`DiskStore`] keeps its files (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// casket's own: objects by digest function, executable variants, records at the root.
    #[default]
    Casket,
    /// buildbox-casd's `cas/objects`, shared with BuildStream 2: a cache either daemon wrote
    /// can be opened by the other.
    Casd,
}

/// How a [`DiskStore`] writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskOptions {
    /// `fsync` each object before it is renamed into place, and its directory after, so a
    /// completed write survives a power loss (a process crash never needs it).
    pub fsync: bool,
    /// The layout of a store created by `open`; an existing store keeps the one it has.
    pub layout: Layout,
    /// Objects last used before this instant are touched on their next use even if that
    /// was within the last minute: the start of a session whose objects expiry must not take.
    pub touched_since: Option<SystemTime>,
}

/// A content-addressable store in a local directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskStore {
    root: PathBuf,
    /// Its options, with the layout it actually has.
    options: DiskOptions,
    /// Whether reads and existence checks count as use (the LRU clock).
    touch: bool,
    /// Usage totals, when tracked (shared by clones).
    accounting: Arc<accounting::Accounting>,
    /// Each digest function's objects directory (in `DigestFunction::ALL` order), open:
    /// existence checks resolve `ab/cdef…` below it, not the whole path from `/`.
    objects_dirs: Arc<Vec<OwnedFd>>,
}

impl DiskStore {
    /// True if `root` holds a store: a casket store (its marker) or a buildbox-casd cache.
    pub fn exists_at(root: &Path) -> bool {
        root.join(MARKER_FILE).exists() || root.join(CASD_OBJECTS).is_dir()
    }

    /// Opens the store at `root`, creating it if needed: a casket store where the marker is,
    /// a buildbox-casd cache where `cas/objects` is (taken over as it is), else a new store of
    /// `options.layout`.
    pub fn open(root: impl Into<PathBuf>, mut options: DiskOptions) -> Result<Self> {
        let root = root.into();
        // Absolute, so that no operation has to look up the working directory again.
        let root = std::path::absolute(&root).io_context("resolve", root)?;
        let marker = root.join(MARKER_FILE);
        if !marker.exists() && root.join(CASD_OBJECTS).is_dir() {
            options.layout = Layout::Casd;
        }
        let store = DiskStore {
            root,
            options,
            touch: true,
            accounting: Arc::default(),
            objects_dirs: Arc::default(),
        };
        if options.layout == Layout::Casd {
            // casd makes fan-out directories on demand; casket's write path needs them all.
            store.create_layout()?;
            return store.with_objects_dirs();
        }
        match fs::read_to_string(&marker) {
            Ok(text) if text == MARKER => {}
            Ok(text) => {
                return Err(StoreError::Io {
                    op: "open store",
                    path: marker,
                    source: io::Error::other(format!("unknown store format {:?}", text.trim())),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => store.create_layout()?,
            Err(e) => return Err(e).io_context("read", marker),
        }
        store.with_objects_dirs()
    }

    /// The store with its objects directories open.
    fn with_objects_dirs(self) -> Result<Self> {
        let dirs = DigestFunction::ALL
            .iter()
            .map(|function| {
                let dir = self.objects_dir(*function);
                let flags =
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
                rustix::fs::open(&dir, flags, rustix::fs::Mode::empty())
                    .map_err(io::Error::from)
                    .io_context("open", dir)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DiskStore {
            objects_dirs: Arc::new(dirs),
            ..self
        })
    }

    /// Creates what is missing of the layout, then (casket's own) the marker.
    fn create_layout(&self) -> Result<()> {
        for function in DigestFunction::ALL {
            let dir = self.objects_dir(function);
            for byte in 0..=255u8 {
                let fanout = dir.join(format!("{byte:02x}"));
                if !fanout.is_dir() {
                    fs::create_dir_all(&fanout).io_context("create", fanout)?;
                }
            }
        }
        for dir in [self.tmp_dir(), self.refs_dir()] {
            fs::create_dir_all(&dir).io_context("create", dir)?;
        }
        if self.options.layout == Layout::Casd {
            // BuildStream links files straight from `cas/objects`, empty ones included.
            let empty = DigestFunction::Sha256.empty_digest();
            if !self.object_path(&empty).exists() {
                self.install(self.create_temp(false)?, &empty)?;
            }
            return Ok(());
        }
        let marker = tempfile::NamedTempFile::new_in(self.tmp_dir()).io_context("create", self.tmp_dir())?;
        fs::write(marker.path(), MARKER).io_context("write", marker.path())?;
        let target = self.root.join(MARKER_FILE);
        marker
            .persist(&target)
            .map_err(|e| e.error)
            .io_context("rename", target)?;
        Ok(())
    }

    /// The same store, but reads and existence checks through it do not count as use. For
    /// maintenance (gc, fsck), which must not make everything it looks at recent.
    pub fn untouched(&self) -> DiskStore {
        DiskStore {
            touch: false,
            ..self.clone()
        }
    }

    /// When the object was last used, or `None` if it is absent.
    pub fn last_used(&self, digest: &Digest) -> Result<Option<SystemTime>> {
        let path = self.object_path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.modified().io_context("stat", path)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).io_context("stat", path),
        }
    }

    /// How the store writes.
    pub fn options(&self) -> DiskOptions {
        self.options
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's layout.
    pub fn layout(&self) -> Layout {
        self.options.layout
    }

    /// Where temporary files live (same file system as the objects).
    pub fn tmp_dir(&self) -> PathBuf {
        match self.options.layout {
            Layout::Casket => self.root.join("tmp"),
            Layout::Casd => self.root.join("cas/tmp"),
        }
    }

    /// Where refs and records (one directory per kind) live.
    pub fn records_dir(&self) -> PathBuf {
        match self.options.layout {
            Layout::Casket => self.root.clone(),
            Layout::Casd => self.root.join(CASD_OWN),
        }
    }

    /// Where ref files live.
    pub fn refs_dir(&self) -> PathBuf {
        self.records_dir().join("refs")
    }

    /// The directory holding the fan-out directories of `function`'s objects.
    fn objects_dir(&self, function: DigestFunction) -> PathBuf {
        match (self.options.layout, function) {
            (Layout::Casket, _) => self.root.join("cas").join(function.name()),
            (Layout::Casd, DigestFunction::Sha256) => self.root.join(CASD_OBJECTS),
            (Layout::Casd, _) => self.root.join(CASD_OWN).join(function.name()),
        }
    }

    /// The path of the object for `digest` (which may not exist).
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.hash_path(digest.function(), digest.hash())
    }

    /// The path of the object of `function` and `hash`, whatever its size.
    fn hash_path(&self, function: DigestFunction, hash: &[u8; 32]) -> PathBuf {
        let hex = String::from_utf8(hex_digits(hash).to_vec()).expect("hex digits are ASCII");
        let mut path = self.objects_dir(function);
        path.push(&hex[..2]);
        path.push(&hex[2..]);
        path
    }

    /// The path of the object's executable variant (which may not exist): a second inode with
    /// the same content and mode 0555, so executables can be hard-linked too.
    pub fn variant_path(&self, digest: &Digest) -> PathBuf {
        let mut path = self.object_path(digest).into_os_string();
        path.push(VARIANT_SUFFIX);
        PathBuf::from(path)
    }

    /// The executable variant of an object, created from the object on first use.
    fn executable_variant(&self, digest: &Digest) -> Result<Option<PathBuf>> {
        let variant = self.variant_path(digest);
        match fs::metadata(&variant) {
            Ok(meta) if meta.len() == digest.size() => return Ok(Some(variant)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).io_context("stat", variant),
        }
        let object = self.object_path(digest);
        let mut source = match File::open(&object) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).io_context("open", object),
        };
        let mut temp = self.create_temp(false)?;
        io::copy(&mut source, &mut temp.file).io_context("copy", &object)?;
        // Our own new inode, not a shared object: setting its mode is safe.
        rustix::fs::fchmod(&temp.file, rustix::fs::Mode::from_raw_mode(0o555))
            .map_err(io::Error::from)
            .io_context("chmod", &variant)?;
        self.install_at(temp, &variant, digest.size(), accounting::Entry::Variant)?;
        Ok(Some(variant))
    }

    /// Whether the object is there with its size, touching it (`touch`) if it is stale.
    fn object_exists(&self, digest: &Digest, touch: bool) -> Result<bool> {
        let Some(stat) = self.stat_object(digest.function(), digest.hash())? else {
            return Ok(false);
        };
        if u64::try_from(stat.st_size) != Ok(digest.size()) {
            return Ok(false);
        }
        let modified = u64::try_from(stat.st_mtime)
            .ok()
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::new(secs, stat.st_mtime_nsec as u32));
        if touch && self.stale(modified) {
            let (dir, name) = self.object_name(digest.function(), digest.hash());
            let name = std::str::from_utf8(&name).expect("hex digits and a slash");
            self.touch_at(dir.as_fd(), name, &self.object_path(digest))?;
        }
        Ok(true)
    }

    /// The object of `function` and `hash`, whatever its size: one `statx` relative to the
    /// objects directory.
    fn stat_object(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<rustix::fs::Stat>> {
        let (dir, name) = self.object_name(function, hash);
        let name = std::str::from_utf8(&name).expect("hex digits and a slash");
        match rustix::fs::statat(dir, name, rustix::fs::AtFlags::empty()) {
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(io::Error::from(e)).io_context("stat", self.hash_path(function, hash)),
        }
    }

    /// The objects directory of `function` and the object's name in it, `ab/cdef…`, built on
    /// the stack: this runs once per blob of every FindMissingBlobs.
    fn object_name(&self, function: DigestFunction, hash: &[u8; 32]) -> (&OwnedFd, [u8; 65]) {
        let index = DigestFunction::ALL
            .iter()
            .position(|f| *f == function)
            .unwrap_or_default();
        let hex = hex_digits(hash);
        let mut name = [b'/'; 65];
        name[..2].copy_from_slice(&hex[..2]);
        name[3..].copy_from_slice(&hex[2..]);
        (&self.objects_dirs[index], name)
    }

    /// Whether an object last used at `modified` should be touched on this use.
    fn stale(&self, modified: Option<SystemTime>) -> bool {
        let age = modified.and_then(|m| SystemTime::now().duration_since(m).ok());
        self.touch
            && (age.is_none_or(|age| age > TOUCH_GRANULARITY)
                || self
                    .options
                    .touched_since
                    .is_some_and(|since| modified.is_none_or(|m| m < since)))
    }

    /// Sets the object's mtime (the LRU clock) to now unless it was set recently. Touching is
    /// bookkeeping: a store shared with other users may refuse it (`EPERM`), which is ignored.
    pub(super) fn touch_if_stale(&self, path: &Path, meta: &fs::Metadata) -> Result<()> {
        if self.stale(meta.modified().ok()) {
            self.touch_at(rustix::fs::CWD, path, path)?;
        }
        Ok(())
    }

    /// Sets the mtime of `name` (relative to `dir`; the object at `path`) to now.
    fn touch_at(&self, dir: BorrowedFd<'_>, name: impl rustix::path::Arg, path: &Path) -> Result<()> {
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
        };
        match rustix::fs::utimensat(dir, name, &times, rustix::fs::AtFlags::empty()) {
            // Removed meanwhile (eviction): the caller saw it present, which is no worse than
            // its being evicted just after the check.
            Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => {
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)).io_context("touch", path),
        }
    }

    fn find_missing_sync(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for digest in digests {
            if !digest.is_empty_blob() && !self.object_exists(digest, true)? {
                missing.push(*digest);
            }
        }
        Ok(missing)
    }

    /// Reads the `len` bytes left in `file`, opened by [`DiskStore::open_for_read`].
    fn read_whole(&self, digest: &Digest, file: File, len: u64) -> Result<Bytes> {
        let mut data = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, len), &mut data)
            .io_context("read", self.object_path(digest))?;
        Ok(Bytes::from(data))
    }

    fn open_for_read(&self, digest: &Digest, range: ReadRange) -> Result<Option<(File, u64)>> {
        let path = self.object_path(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).io_context("open", path),
        };
        let meta = file.metadata().io_context("stat", &path)?;
        if meta.len() != digest.size() {
            return Err(StoreError::SizeMismatch {
                digest: *digest,
                actual: meta.len(),
            });
        }
        let len = range.len_in(digest)?;
        self.touch_if_stale(&path, &meta)?;
        file.seek(SeekFrom::Start(range.offset))
            .io_context("seek", &path)?;
        Ok(Some((file, len)))
    }
}

#[async_trait]
impl BlobStore for DiskStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        // One `stat` per blob: a large batch (a whole tree) is split over several blocking
        // threads, in order.
        let checks = digests.chunks(STATS_PER_TASK).map(|chunk| {
            let (store, chunk) = (self.clone(), chunk.to_vec());
            blocking(move || store.find_missing_sync(&chunk))
        });
        Ok(futures::future::try_join_all(checks).await?.concat())
    }

    async fn stored_digest(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        let (store, hash) = (self.clone(), *hash);
        blocking(move || {
            let Some(stat) = store.stat_object(function, &hash)? else {
                return Ok(empty_blob_of(function, &hash));
            };
            // No file is longer than the wire's int64 allows.
            Ok(u64::try_from(stat.st_size)
                .ok()
                .and_then(|size| Digest::new(function, hash, size).ok()))
        })
        .await
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        if digest.is_empty_blob() {
            return match range.offset {
                0 => Ok(Some(futures::stream::empty().boxed())),
                offset => Err(StoreError::OffsetOutOfRange {
                    digest: *digest,
                    offset,
                }),
            };
        }
        let store = self.clone();
        let d = *digest;
        // A small blob is read whole in the same blocking call that opens it.
        let opened = blocking(move || {
            let Some((file, len)) = store.open_for_read(&d, range)? else {
                return Ok(None);
            };
            if d.size() > SMALL_READ {
                return Ok(Some(Err((file, len))));
            }
            Ok(Some(Ok(store.read_whole(&d, file, len)?)))
        })
        .await?;
        match opened {
            None => Ok(None),
            Some(Ok(data)) => Ok(Some(
                futures::stream::iter((!data.is_empty()).then_some(Ok(data))).boxed(),
            )),
            Some(Err((file, len))) => {
                // Large blobs bypass the page cache where the file system allows it.
                let path = self.object_path(digest);
                let direct = {
                    let path = path.clone();
                    blocking(move || direct::open_direct(&path).io_context("open", path)).await?
                };
                match direct {
                    Some(direct) => Ok(Some(direct::direct_stream(direct, range.offset, len, path))),
                    None => {
                        let reader = tokio::fs::File::from_std(file).take(len);
                        Ok(Some(reader_stream(reader, path)))
                    }
                }
            }
        }
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        if let Some(large) = digests.iter().find(|d| d.size() > MAX_IN_MEMORY_BLOB) {
            return Err(StoreError::TooLarge {
                digest: *large,
                limit: MAX_IN_MEMORY_BLOB,
            });
        }
        let store = self.clone();
        let digests = digests.to_vec();
        blocking(move || {
            digests
                .iter()
                .map(|digest| {
                    if digest.is_empty_blob() {
                        return Ok(Some(Bytes::new()));
                    }
                    let (file, len) = match store.open_for_read(digest, ReadRange::ALL) {
                        Ok(Some(opened)) => opened,
                        Ok(None) | Err(StoreError::SizeMismatch { .. }) => return Ok(None),
                        Err(e) => return Err(e),
                    };
                    Ok(Some(store.read_whole(digest, file, len)?))
                })
                .collect()
        })
        .await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let store = self.clone();
        let digest = *digest;
        if digest.size() <= writer::SMALL_WRITE {
            return Ok(Box::new(writer::DiskWriter::in_memory(store, digest)));
        }
        Ok(Box::new(
            blocking(move || writer::DiskWriter::to_file(store, digest)).await?,
        ))
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        // Always present; in casd's layout, also a file BuildStream links.
        if digest.is_empty_blob() {
            return Ok(false);
        }
        let store = self.clone();
        let digest = *digest;
        blocking(move || {
            let variant = store.variant_path(&digest);
            store
                .remove_entry(accounting::Entry::Variant, &variant)
                .io_context("remove", variant)?;
            let path = store.object_path(&digest);
            store
                .remove_entry(accounting::Entry::Object, &path)
                .io_context("remove", path)
        })
        .await
    }

    async fn usage(&self) -> Result<Usage> {
        let store = self.clone();
        blocking(move || Ok(store.scan_objects()?.usage())).await
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        let store = self.clone();
        blocking(move || {
            Ok(blobs
                .iter()
                .map(|blob| {
                    let digest = blob.verify(function)?;
                    store.store_if_absent(&digest, &blob.data)?;
                    Ok(digest)
                })
                .collect())
        })
        .await
    }

    async fn ingest_file(&self, path: &Path, function: DigestFunction) -> Result<Digest> {
        let store = self.clone();
        let path = path.to_owned();
        blocking(move || store.ingest_file_sync(&path, function)).await
    }

    fn local_file(&self, digest: &Digest, executable: bool) -> Result<Option<PathBuf>> {
        if executable {
            // BuildStream reads casd's objects directory and does not expect variants there.
            return match self.options.layout {
                Layout::Casket => self.executable_variant(digest),
                Layout::Casd => Ok(None),
            };
        }
        // No stat: callers check presence in bulk (`find_missing`), and a link to a file that
        // vanished since fails cleanly.
        Ok(Some(self.object_path(digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobStoreExt;

    fn store() -> (tempfile::TempDir, DiskStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path().join("store"), DiskOptions::default()).expect("open");
        (dir, store)
    }

    fn casd_store(dir: &Path) -> DiskStore {
        let options = DiskOptions {
            layout: Layout::Casd,
            ..DiskOptions::default()
        };
        DiskStore::open(dir, options).expect("open")
    }

    #[tokio::test]
    async fn conformance_in_casds_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::conformance::run_all(&casd_store(dir.path())).await;
    }

    #[tokio::test]
    async fn a_casd_cache_is_taken_over_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What buildbox-casd leaves: objects in cas/objects, fan-outs made on demand, 0444.
        let data = b"written by casd";
        let digest = Digest::of(DigestFunction::Sha256, data);
        let hex = digest.hash_hex();
        let object = dir.path().join("cas/objects").join(&hex[..2]).join(&hex[2..]);
        fs::create_dir_all(object.parent().expect("fan-out")).expect("mkdir");
        fs::write(&object, data).expect("write");
        fs::create_dir_all(dir.path().join("artifacts/refs")).expect("BuildStream's own");

        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("open");
        assert_eq!(store.layout(), Layout::Casd, "cas/objects decides the layout");
        assert_eq!(store.object_path(&digest), object);
        assert_eq!(
            store.get_bytes(&digest).await.expect("read").as_deref(),
            Some(&data[..])
        );
        let written = store
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"by casket"))
            .await
            .expect("put");
        let hex = written.hash_hex();
        assert!(
            dir.path()
                .join("cas/objects")
                .join(&hex[..2])
                .join(&hex[2..])
                .is_file()
        );
        // BuildStream links even empty files from cas/objects; expiry never removes it.
        let empty = DigestFunction::Sha256.empty_digest();
        assert!(store.object_path(&empty).is_file());
        assert!(!store.delete(&empty).await.expect("delete"));
        assert!(
            !dir.path().join("casket-store").exists(),
            "no marker in casd's root"
        );
        assert!(dir.path().join("artifacts/refs").is_dir());
        assert_eq!(
            store.local_file(&digest, true).expect("local file"),
            None,
            "no executable variants beside casd's objects"
        );
        let scan = store.scan_objects().expect("scan");
        assert!(scan.strays.is_empty(), "{:?}", scan.strays);
        assert_eq!(scan.objects.len(), 3);
    }

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = store();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn objects_are_read_only_files_in_the_documented_place() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        let digest = store
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"hello"))
            .await
            .expect("put");
        let path = store.object_path(&digest);
        let hex = digest.hash_hex();
        assert!(path.ends_with(format!("cas/sha256/{}/{}", &hex[..2], &hex[2..])));
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(
            fs::read_dir(store.tmp_dir()).expect("tmp").count(),
            0,
            "no temp file left"
        );
    }

    #[tokio::test]
    async fn executable_variants_are_separate_inodes_removed_with_their_object() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (_dir, store) = store();
        let digest = store
            .put_bytes(DigestFunction::Sha256, Bytes::from(vec![9u8; 10_000]))
            .await
            .expect("put");
        let plain = store.local_file(&digest, false).expect("plain").expect("present");
        let exec = store
            .local_file(&digest, true)
            .expect("variant")
            .expect("present");
        assert_eq!(exec, store.variant_path(&digest));
        let (plain_meta, exec_meta) = (
            fs::metadata(&plain).expect("stat"),
            fs::metadata(&exec).expect("stat"),
        );
        assert_eq!(
            plain_meta.permissions().mode() & 0o777,
            0o444,
            "the object is never chmodded"
        );
        assert_eq!(exec_meta.permissions().mode() & 0o777, 0o555);
        assert_ne!(plain_meta.ino(), exec_meta.ino());
        assert_eq!(fs::read(&exec).expect("read"), vec![9u8; 10_000]);
        assert_eq!(
            store.local_file(&digest, true).expect("again"),
            Some(exec.clone()),
            "made once"
        );

        let scan = store.scan_objects().expect("scan");
        assert_eq!(scan.objects.len(), 1, "a variant is not an object of its own");
        assert!(scan.usage().stored_bytes >= plain_meta.blocks() * 512 + exec_meta.blocks() * 512);

        assert!(store.delete(&digest).await.expect("delete"));
        assert!(!exec.exists() && !plain.exists());
        let absent = Digest::of(DigestFunction::Sha256, b"absent");
        assert_eq!(store.local_file(&absent, true).expect("absent"), None);
    }

    #[tokio::test]
    async fn reopening_keeps_blobs_and_refuses_foreign_formats() {
        let (dir, store) = store();
        let digest = store
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"kept"))
            .await
            .expect("put");
        let again = DiskStore::open(store.root(), DiskOptions::default()).expect("reopen");
        assert!(again.contains(&digest).await.expect("contains"));
        fs::write(dir.path().join("store").join(MARKER_FILE), "something else\n").expect("write");
        assert!(DiskStore::open(store.root(), DiskOptions::default()).is_err());
    }

    #[tokio::test]
    async fn ingest_handles_small_and_large_files_in_one_pass() {
        let (dir, store) = store();
        for (name, len) in [
            ("empty", 0usize),
            ("small", 1000),
            ("large", 3 * crate::CHUNK_SIZE + 17),
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let path = dir.path().join(name);
            fs::write(&path, &data).expect("write");
            for function in DigestFunction::ALL {
                let digest = store.ingest_file(&path, function).await.expect("ingest");
                assert_eq!(digest, Digest::of(function, &data), "{name}");
                let back = store.get_bytes(&digest).await.expect("read").expect("present");
                assert_eq!(back.as_ref(), data.as_slice(), "{name}");
            }
        }
    }

    #[tokio::test]
    async fn a_truncated_object_is_replaced_by_the_next_write() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = store();
        let data = Bytes::from(vec![5u8; 5000]);
        let digest = store
            .put_bytes(DigestFunction::Sha256, data.clone())
            .await
            .expect("put");
        let path = store.object_path(&digest);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(&path, &data[..100]).expect("truncate, as a power loss might");
        assert!(!store.contains(&digest).await.expect("contains"));
        store
            .put_bytes(DigestFunction::Sha256, data.clone())
            .await
            .expect("put again");
        assert_eq!(store.get_bytes(&digest).await.expect("read"), Some(data));
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o444
        );
    }

    #[tokio::test]
    async fn ingest_refuses_symlinks() {
        let (dir, store) = store();
        let target = dir.path().join("target");
        fs::write(&target, b"x").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(store.ingest_file(&link, DigestFunction::Sha256).await.is_err());
    }

    #[tokio::test]
    async fn concurrent_writers_of_one_blob_all_succeed() {
        let (_dir, store) = store();
        let data = Bytes::from(vec![42u8; 300_000]);
        let digest = Digest::of(DigestFunction::Sha256, &data);
        let writers = (0..16).map(|_| {
            let store = store.clone();
            let data = data.clone();
            tokio::spawn(async move { store.put_verified(&digest, data).await })
        });
        for w in futures::future::join_all(writers).await {
            w.expect("join").expect("write");
        }
        assert_eq!(
            store.get_bytes(&digest).await.expect("read").expect("present"),
            data
        );
    }
}
