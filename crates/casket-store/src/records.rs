//! `DiskRecords`: small named records beside a disk store, as files under `ROOT/KIND/KEY`,
//! replaced atomically. The server keeps REAPI action results (`ac/FUNCTION/HASH-SIZE`) and
//! Remote Asset entries (`assets/...`) this way. The store keeps bytes; what they mean, and
//! whether what they reference exists, is the caller's business.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use casket_model::{Digest, EntryName};

use crate::disk::DiskStore;
use crate::error::{IoContext, Result, StoreError, blocking};

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

    /// The key of a REAPI action result: `FUNCTION/HASH-SIZE`.
    pub fn action_key(action: &Digest) -> String {
        format!("{}/{}-{}", action.function(), action.hash_hex(), action.size())
    }

    /// `key` is `/`-separated components, each a valid entry name (no `..`, no NUL).
    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.split('/').any(|c| EntryName::new(c).is_err()) {
            return Err(StoreError::Io {
                op: "name record",
                path: PathBuf::from(key),
                source: io::Error::new(io::ErrorKind::InvalidInput, "invalid record key"),
            });
        }
        Ok(self.dir.join(key))
    }

    /// The record at `key`; reading it counts as use.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
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

    /// Stores `record` at `key`, replacing any previous one atomically.
    pub async fn put(&self, key: &str, record: Bytes) -> Result<()> {
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
        let key = DiskRecords::action_key(&Digest::of(DigestFunction::Sha256, b"action"));
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
    }
}
