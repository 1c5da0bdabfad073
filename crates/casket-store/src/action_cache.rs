//! `DiskActionCache`: REAPI action results (serialized `ActionResult` messages) by action
//! digest, as files under `ROOT/ac/FUNCTION/HASH-SIZE`, replaced atomically. The store keeps
//! bytes; checking that a result's outputs exist is the server's job.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use casket_model::Digest;

use crate::disk::DiskStore;
use crate::error::{IoContext, Result, blocking};

/// Action results beside a [`DiskStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskActionCache {
    dir: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

impl DiskActionCache {
    /// The action cache kept beside `store`'s blobs.
    pub fn new(store: &DiskStore) -> Self {
        DiskActionCache {
            dir: store.root().join("ac"),
            tmp: store.tmp_dir(),
            fsync: store.options().fsync,
        }
    }

    fn path(&self, action: &Digest) -> PathBuf {
        self.dir
            .join(action.function().name())
            .join(format!("{}-{}", action.hash_hex(), action.size()))
    }

    /// The stored result for `action`; reading it counts as use.
    pub async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let path = self.path(action);
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

    /// Stores `result` for `action`, replacing any previous one atomically.
    pub async fn put(&self, action: &Digest, result: Bytes) -> Result<()> {
        let (path, tmp, fsync) = (self.path(action), self.tmp.clone(), self.fsync);
        blocking(move || {
            let parent = path.parent().unwrap_or(&tmp).to_owned();
            fs::create_dir_all(&parent).io_context("create", &parent)?;
            let mut temp = tempfile::Builder::new()
                .prefix("ac-")
                .tempfile_in(&tmp)
                .io_context("create temp file in", &tmp)?;
            temp.write_all(&result).io_context("write", temp.path())?;
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
        let cache = DiskActionCache::new(&store);
        let action = Digest::of(DigestFunction::Sha256, b"action");
        assert_eq!(cache.get(&action).await.expect("get"), None);
        cache.put(&action, Bytes::from_static(b"one")).await.expect("put");
        cache
            .put(&action, Bytes::from_static(b"two"))
            .await
            .expect("replace");
        assert_eq!(
            cache.get(&action).await.expect("get"),
            Some(Bytes::from_static(b"two"))
        );
    }
}
