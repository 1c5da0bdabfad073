//! Small named records: the server's REAPI action results (`ac/FUNCTION/HASH`) and Remote
//! Asset entries (`assets/...`). [`RecordStore`] is what the server needs; [`DiskRecords`]
//! keeps them as files under `ROOT/KIND/KEY` beside a disk store, replaced atomically, and
//! `ObjectRecords` in an object store. The store keeps bytes; what they mean, and whether what
//! they reference exists, is the caller's business.
//!
//! Keys are paths, so a key never coexists with its ancestors or descendants (`a/b` and
//! `a/b/c`): storing one while the other exists is refused with [`StoreError::RecordConflict`],
//! and a key that is only a directory of others holds no record.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, EntryName, hex_digits};

use crate::disk::DiskStore;
use crate::error::{IoContext, Result, StoreError, blocking};

/// One record as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// Its key.
    pub key: String,
    /// When it was last written or read (to within the store's touch interval).
    pub touched: SystemTime,
}

/// Small records of one kind, by key: `/`-separated components, each a valid entry name.
/// `conformance::run_records` checks every rule.
#[async_trait]
pub trait RecordStore: Send + Sync + fmt::Debug {
    /// The record at `key`; reading it counts as use.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// The record at `key`, read without counting as use (for `casket gc`).
    async fn peek(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `record` at `key`, replacing any previous one atomically; refused with
    /// [`StoreError::RecordConflict`] while a record exists at an ancestor or a descendant of `key`.
    async fn put(&self, key: &str, record: Bytes) -> Result<()>;

    /// Removes the record at `key`; `Ok(false)` if there was none.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Every record, in no particular order.
    async fn list(&self) -> Result<Vec<RecordEntry>>;
}

/// An action as the action cache knows it: its digest function and the hash of its `Action`
/// message. The message's size is no part of it: the HTTP cache protocol names actions by hash
/// alone, and one hash has one size.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActionId {
    /// The function that hashed the action.
    pub function: DigestFunction,
    /// The hash of the `Action` message.
    pub hash: [u8; 32],
}

impl ActionId {
    /// The key of its result in the action cache: `FUNCTION/HASH`.
    pub fn key(&self) -> String {
        let hex = hex_digits(&self.hash);
        format!(
            "{}/{}",
            self.function,
            std::str::from_utf8(&hex).expect("hex digits are ASCII")
        )
    }
}

impl From<&Digest> for ActionId {
    fn from(action: &Digest) -> Self {
        ActionId {
            function: action.function(),
            hash: *action.hash(),
        }
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function != DigestFunction::Sha256 {
            write!(f, "{}:", self.function)?;
        }
        f.write_str(std::str::from_utf8(&hex_digits(&self.hash)).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Checks that `key` is `/`-separated valid entry names (no `..`, no NUL, not empty).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.split('/').any(|c| EntryName::new(c).is_err()) {
        return Err(StoreError::Io {
            op: "name record",
            path: PathBuf::from(key),
            source: io::Error::new(io::ErrorKind::InvalidInput, "invalid record key"),
        });
    }
    Ok(())
}

/// Attempts at storing a record while concurrent deletes remove the directory it goes in.
const PUT_ATTEMPTS: usize = 8;

/// One kind of record beside a [`DiskStore`]: the file `ROOT/KIND/KEY`, replaced atomically, its
/// mtime the last write or read. Directories are made on write and removed when emptied. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct DiskRecords {
    dir: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

/// A file found below a [`DiskRecords`] directory.
#[derive(Debug)]
pub(crate) struct RecordFile {
    /// Where it is.
    pub(crate) path: PathBuf,
    /// Its key, unless its path below the directory is not UTF-8.
    pub(crate) key: Option<String>,
    /// Its mtime: when the record was last written or read.
    pub(crate) touched: SystemTime,
}

impl DiskRecords {
    /// The records of `kind` (a single path component, such as `ac`) kept beside `store`.
    pub fn new(store: &DiskStore, kind: &str) -> Self {
        DiskRecords {
            dir: store.records_dir().join(kind),
            tmp: store.tmp_dir(),
            fsync: store.options().fsync,
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.dir.join(key))
    }

    /// Every file below the directory, whatever its name (blocking).
    pub(crate) fn files(&self) -> Result<Vec<RecordFile>> {
        let mut out = Vec::new();
        walk(&self.dir, &self.dir, &mut out)?;
        Ok(out)
    }

    fn put_sync(&self, key: &str, path: &Path, record: &[u8]) -> Result<()> {
        let mut temp = tempfile::Builder::new()
            .prefix("record-")
            .tempfile_in(&self.tmp)
            .io_context("create temp file in", &self.tmp)?;
        temp.write_all(record).io_context("write", temp.path())?;
        if self.fsync {
            temp.as_file().sync_data().io_context("fsync", temp.path())?;
        }
        let parent = path.parent().unwrap_or(&self.dir);
        let mut attempt = 1;
        loop {
            let (op, at, error) = match fs::create_dir_all(parent) {
                Err(e) => ("create", parent, e),
                Ok(()) => match temp.persist(path) {
                    Ok(_) => break,
                    Err(e) => {
                        temp = e.file;
                        ("rename into", path, e.error)
                    }
                },
            };
            if self.nested(path) {
                return Err(StoreError::RecordConflict(key.to_owned()));
            }
            // Not nested: a concurrent delete removed an emptied directory on the way.
            if attempt == PUT_ATTEMPTS || !raced(&error) {
                return Err(error).io_context(op, at);
            }
            attempt += 1;
        }
        if self.fsync {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .io_context("fsync", parent)?;
        }
        Ok(())
    }

    /// Whether a record exists at an ancestor of `path` (a file where a directory should be) or
    /// below it (a directory at `path`).
    fn nested(&self, path: &Path) -> bool {
        path.is_dir()
            || path
                .ancestors()
                .skip(1)
                .take_while(|dir| *dir != self.dir)
                .any(|dir| fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()))
    }

    fn delete_sync(&self, path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if absent(&e) => return Ok(false),
            Err(e) => return Err(e).io_context("remove", path),
        }
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| *d != self.dir) {
            // Fails harmlessly when another record still lives there.
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(true)
    }
}

/// The record file at `path`, or `None` if there is none (blocking).
pub(crate) fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(e).io_context("read", path),
    }
}

/// Whether `e`, from using a record's path, means no record is there: nothing at all, a record
/// at an ancestor key (a file where a directory should be), or records below it (a directory).
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

/// Whether `e`, from creating a record's directories or renaming it into place, can come from
/// a concurrent change of those directories.
fn raced(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::AlreadyExists
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
    )
}

/// Marks the record at `path` as used now. Bookkeeping only: a record removed meanwhile, or not
/// ours to touch, was still read.
fn touch(path: &Path) {
    let now = fs::FileTimes::new().set_modified(SystemTime::now());
    let _ = fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_times(now));
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<RecordFile>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Never made, or emptied and removed by a concurrent delete.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).io_context("list", dir),
    };
    for entry in entries {
        let entry = entry.io_context("list", dir)?;
        let path = entry.path();
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).io_context("stat", &path),
        };
        if metadata.is_dir() {
            walk(root, &path, out)?;
            continue;
        }
        out.push(RecordFile {
            key: path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_owned),
            touched: metadata.modified().io_context("stat", &path)?,
            path,
        });
    }
    Ok(())
}

#[async_trait]
impl RecordStore for DiskRecords {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        blocking(move || {
            let data = read(&path)?;
            if data.is_some() {
                touch(&path);
            }
            Ok(data.map(Bytes::from))
        })
        .await
    }

    async fn peek(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        blocking(move || Ok(read(&path)?.map(Bytes::from))).await
    }

    async fn put(&self, key: &str, record: Bytes) -> Result<()> {
        let (records, path, key) = (self.clone(), self.path(key)?, key.to_owned());
        blocking(move || records.put_sync(&key, &path, &record)).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let (records, path) = (self.clone(), self.path(key)?);
        blocking(move || records.delete_sync(&path)).await
    }

    async fn list(&self) -> Result<Vec<RecordEntry>> {
        let records = self.clone();
        blocking(move || {
            let files = records.files()?;
            Ok(files
                .into_iter()
                .filter_map(|file| {
                    Some(RecordEntry {
                        key: file.key?,
                        touched: file.touched,
                    })
                })
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskOptions;
    use casket_model::DigestFunction;
    use std::time::Duration;

    fn store() -> (tempfile::TempDir, DiskStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = store();
        crate::conformance::run_records(&DiskRecords::new(&store, "ac"), Duration::ZERO).await;
    }

    #[tokio::test]
    async fn records_are_files_whose_emptied_directories_go() {
        let (_dir, store) = store();
        let cache = DiskRecords::new(&store, "ac");
        let key = ActionId::from(&Digest::of(DigestFunction::Sha256, b"action")).key();
        cache.put(&key, Bytes::from_static(b"result")).await.expect("put");
        let file = store.root().join("ac").join(&key);
        assert_eq!(fs::read(&file).expect("the record's file"), b"result");
        let nested = cache.put(&format!("{key}/below"), Bytes::new()).await;
        assert!(matches!(nested, Err(StoreError::RecordConflict(_))), "{nested:?}");
        assert_eq!(
            fs::read_dir(store.tmp_dir()).expect("tmp").count(),
            0,
            "a refused put leaves no temp file"
        );
        assert!(cache.delete(&key).await.expect("delete"));
        assert!(
            !file.parent().expect("parent").exists(),
            "an emptied directory is removed"
        );
        assert!(store.root().join("ac").is_dir(), "the kind's directory stays");
    }
}
