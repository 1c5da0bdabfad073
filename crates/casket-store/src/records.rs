//! Small named records: the server's REAPI action results (`ac/FUNCTION/HASH-SIZE`) and Remote
//! Asset entries (`assets/...`). [`RecordStore`] is what the server needs; [`DiskRecords`]
//! keeps them as files under `ROOT/KIND/KEY` beside a disk store, replaced atomically, and
//! `ObjectRecords` in an object store. The store keeps bytes; what they mean, and whether what
//! they reference exists, is the caller's business.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, EntryName};

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
#[async_trait]
pub trait RecordStore: Send + Sync + fmt::Debug {
    /// The record at `key`; reading it counts as use.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// The record at `key`, read without counting as use (for `casket gc`).
    async fn peek(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `record` at `key`, replacing any previous one atomically.
    async fn put(&self, key: &str, record: Bytes) -> Result<()>;

    /// Removes the record at `key`; `Ok(false)` if there was none.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Every record, in no particular order.
    async fn list(&self) -> Result<Vec<RecordEntry>>;
}

/// The key of a REAPI action result: `FUNCTION/HASH-SIZE`.
pub fn action_key(action: &Digest) -> String {
    format!("{}/{}-{}", action.function(), action.hash_hex(), action.size())
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

/// One kind of record beside a [`DiskStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskRecords {
    dir: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

impl DiskRecords {
    /// The records of `kind` (a single path component, such as `ac`) kept beside `store`.
    pub fn new(store: &DiskStore, kind: &str) -> Self {
        DiskRecords {
            dir: store.root().join(kind),
            tmp: store.tmp_dir(),
            fsync: store.options().fsync,
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.dir.join(key))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<RecordEntry>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).io_context("list", dir),
    };
    for entry in entries {
        let entry = entry.io_context("list", dir)?;
        let path = entry.path();
        let metadata = entry.metadata().io_context("stat", &path)?;
        if metadata.is_dir() {
            walk(root, &path, out)?;
        } else if let Some(key) = path.strip_prefix(root).ok().and_then(Path::to_str)
            && check_key(key).is_ok()
        {
            out.push(RecordEntry {
                key: key.to_owned(),
                touched: metadata.modified().io_context("stat", &path)?,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl RecordStore for DiskRecords {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        blocking(move || match fs::read(&path) {
            Ok(data) => {
                let now = fs::FileTimes::new().set_modified(SystemTime::now());
                // Bookkeeping only: a result removed or not ours to touch was still read.
                let _ = fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_times(now));
                Ok(Some(Bytes::from(data)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).io_context("read", path),
        })
        .await
    }

    async fn peek(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        blocking(move || match fs::read(&path) {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).io_context("read", path),
        })
        .await
    }

    async fn put(&self, key: &str, record: Bytes) -> Result<()> {
        let (path, tmp, fsync) = (self.path(key)?, self.tmp.clone(), self.fsync);
        blocking(move || {
            let parent = path.parent().unwrap_or(&tmp).to_owned();
            fs::create_dir_all(&parent).io_context("create", &parent)?;
            let mut temp = tempfile::Builder::new()
                .prefix("ac-")
                .tempfile_in(&tmp)
                .io_context("create temp file in", &tmp)?;
            temp.write_all(&record).io_context("write", temp.path())?;
            if fsync {
                temp.as_file().sync_data().io_context("fsync", temp.path())?;
            }
            temp.persist(&path)
                .map_err(|e| e.error)
                .io_context("rename into", &path)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).io_context("remove", path),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<RecordEntry>> {
        let dir = self.dir.clone();
        blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &dir, &mut out)?;
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskOptions;
    use casket_model::DigestFunction;

    #[tokio::test]
    async fn put_get_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("open");
        let cache = DiskRecords::new(&store, "ac");
        let key = action_key(&Digest::of(DigestFunction::Sha256, b"action"));
        assert_eq!(cache.get(&key).await.expect("get"), None);
        cache.put(&key, Bytes::from_static(b"one")).await.expect("put");
        cache
            .put(&key, Bytes::from_static(b"two"))
            .await
            .expect("replace");
        assert_eq!(
            cache.get(&key).await.expect("get"),
            Some(Bytes::from_static(b"two"))
        );
        for bad in ["../escape", "a//b", "/abs", ""] {
            assert!(cache.put(bad, Bytes::new()).await.is_err(), "{bad:?}");
        }
        let listed = cache.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, key);
        assert!(cache.delete(&key).await.expect("delete"));
        assert!(!cache.delete(&key).await.expect("delete again"));
    }
}
