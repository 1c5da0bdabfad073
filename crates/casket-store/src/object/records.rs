//! `ObjectRecords` and `ObjectRefs`: action results, assets and refs as small objects under
//! `PREFIX/KIND/KEY`, so that every frontend sharing a bucket sees the same ones.
//!
//! An object store has no access time, and its last-modified time is the only clock every
//! frontend and `casket gc` share. So reading a record whose last write is older than the
//! touch interval writes the same bytes again (in the background): a record in use stays
//! younger than the interval plus the time between reads, which is what retention counts.
//! Last writer wins; nothing relies on conditional writes, which not every S3 store honours.
//!
//! Keys are paths (see [`RecordStore`]): before a put, the ancestors' keys get a HEAD each and
//! the key's own "directory" a LIST of which only the first page is fetched, all at once, and
//! anything there refuses the put (one HEAD and one LIST more per action result or asset). Two
//! frontends storing `a/b` and `a/b/c` at the same moment can both pass that check, and both
//! records then exist. That is harmless: in a bucket a key is a name, not a path, so each record
//! is still read, listed and deleted on its own; only storing either again is refused until the
//! other is deleted.

use std::error::Error as _;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, RefName};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use percent_encoding::percent_decode_str;

use crate::error::{Result, StoreError};
use crate::records::{RecordEntry, RecordStore, check_key};
use crate::refs::{
    CorruptRef, RefEntry, RefScan, RefStore, decode_named_ref, decode_ref, encode_ref, ref_error,
};

/// How old a record's last write may be before reading it writes it again.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(3600);

/// Records fetched at once when scanning refs.
const SCAN_CONCURRENCY: usize = 32;

/// Records of one kind in an object store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ObjectRecords {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    touch_interval: Duration,
}

impl ObjectRecords {
    /// The records of `kind` (such as `ac`) under `prefix` (which may be empty) in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, kind: &str) -> Self {
        ObjectRecords {
            store,
            dir: Path::from(prefix).join(kind),
            touch_interval: TOUCH_INTERVAL,
        }
    }

    /// Rewrites records read after `interval` since their last write (tests use a short one).
    pub fn with_touch_interval(self, interval: Duration) -> Self {
        ObjectRecords {
            touch_interval: interval,
            ..self
        }
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        Ok(key
            .split('/')
            .fold(self.dir.clone(), |path, part| path.join(part)))
    }

    /// The paths of the keys above `key` (`a` and `a/b` for `a/b/c`).
    fn ancestors(&self, key: &str) -> Vec<Path> {
        let mut parts: Vec<&str> = key.split('/').collect();
        parts.pop();
        let mut path = self.dir.clone();
        let mut ancestors = Vec::with_capacity(parts.len());
        for part in parts {
            path = path.join(part);
            ancestors.push(path.clone());
        }
        ancestors
    }

    /// Refuses `key` (stored at `path`) while a record exists at an ancestor key or below it.
    async fn refuse_nesting(&self, key: &str, path: &Path) -> Result<()> {
        let above = self.ancestors(key).into_iter().map(|ancestor| async move {
            match self.store.head(&ancestor).await {
                Ok(_) => Ok(true),
                Err(e) if is_absent(&e) => Ok(false),
                Err(e) => Err(e),
            }
        });
        // The stream fetches pages as they are consumed: this is one LIST request.
        let below = async {
            match self.store.list(Some(path)).try_next().await {
                Ok(first) => Ok(first.is_some()),
                Err(e) if is_absent(&e) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let (above, below) = futures::join!(futures::future::join_all(above), below);
        let answers: Vec<_> = above.into_iter().chain([below]).collect();
        if answers.iter().any(|found| matches!(found, Ok(true))) {
            return Err(StoreError::RecordConflict(key.to_owned()));
        }
        answers
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), |e| Err(e.into()))
    }

    /// The key of a listed object, decoded, if it is one of ours.
    fn key_of(&self, location: &Path) -> Option<String> {
        let parts: Vec<String> = location
            .prefix_match(&self.dir)?
            .map(|part| percent_decode_str(part.as_ref()).decode_utf8().map(String::from))
            .collect::<Result<_, _>>()
            .ok()?;
        let key = parts.join("/");
        check_key(&key).is_ok().then_some(key)
    }
}

/// Whether `e` means no object is at the key: not found or, in a backend that keeps keys as
/// paths (`LocalFileSystem`), a key below another key's object ("not a directory").
fn is_absent(e: &object_store::Error) -> bool {
    if matches!(e, object_store::Error::NotFound { .. }) {
        return true;
    }
    let mut source = e.source();
    while let Some(cause) = source {
        if cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::NotADirectory)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

#[async_trait]
impl RecordStore for ObjectRecords {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        let result = match self.store.get(&path).await {
            Ok(result) => result,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let written = SystemTime::from(result.meta.last_modified);
        let bytes = result.bytes().await?;
        let stale = SystemTime::now()
            .duration_since(written)
            .is_ok_and(|age| age > self.touch_interval);
        if stale {
            let (store, record) = (self.store.clone(), bytes.clone());
            tokio::spawn(async move {
                // Bookkeeping only: the record was read either way.
                if let Err(e) = store.put(&path, PutPayload::from(record)).await {
                    tracing::warn!(error = %e, %path, "could not refresh a record's last use");
                }
            });
        }
        Ok(Some(bytes))
    }

    async fn peek(&self, key: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(key)?).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, key: &str, record: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.refuse_nesting(key, &path).await?;
        self.store.put(&path, PutPayload::from(record)).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<RecordEntry>> {
        self.store
            .list(Some(&self.dir))
            .map_err(StoreError::from)
            .try_filter_map(|meta| {
                let entry = self.key_of(&meta.location).map(|key| RecordEntry {
                    key,
                    touched: meta.last_modified.into(),
                });
                async move { Ok(entry) }
            })
            .try_collect()
            .await
    }
}

/// Refs as records of kind `refs`, each holding the digest in text, like [`crate::DiskRefs`].
#[derive(Clone, Debug)]
pub struct ObjectRefs {
    records: ObjectRecords,
}

impl ObjectRefs {
    /// The refs under `prefix` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectRefs {
            records: ObjectRecords::new(store, prefix, "refs"),
        }
    }

    /// Rewrites refs read after `interval` since their last write (tests use a short one).
    pub fn with_touch_interval(self, interval: Duration) -> Self {
        ObjectRefs {
            records: self.records.with_touch_interval(interval),
        }
    }
}

#[async_trait]
impl RefStore for ObjectRefs {
    async fn set(&self, name: &RefName, digest: &Digest) -> Result<()> {
        self.records
            .put(name.as_str(), encode_ref(digest))
            .await
            .map_err(ref_error(name))
    }

    async fn get(&self, name: &RefName) -> Result<Option<Digest>> {
        match self.records.get(name.as_str()).await? {
            Some(bytes) => decode_named_ref(name, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn delete(&self, name: &RefName) -> Result<bool> {
        self.records.delete(name.as_str()).await
    }

    async fn scan(&self) -> Result<RefScan> {
        let entries = self.records.list().await?;
        let read = futures::stream::iter(entries)
            .map(|entry| async move {
                let path = std::path::PathBuf::from(&entry.key);
                let Ok(name) = RefName::new(&entry.key) else {
                    return Ok::<_, StoreError>(Err(CorruptRef {
                        path,
                        reason: "not a valid ref name".into(),
                    }));
                };
                let Some(bytes) = self.records.peek(&entry.key).await? else {
                    return Ok(Ok(None));
                };
                Ok(match decode_ref(&bytes) {
                    Ok(digest) => Ok(Some(RefEntry {
                        name,
                        digest,
                        touched: entry.touched,
                    })),
                    Err(reason) => Err(CorruptRef { path, reason }),
                })
            })
            .buffer_unordered(SCAN_CONCURRENCY);
        let mut scan = RefScan::default();
        let results: Vec<_> = read.try_collect().await?;
        for result in results {
            match result {
                Ok(Some(entry)) => scan.refs.push(entry),
                Ok(None) => {}
                Err(corrupt) => scan.corrupt.push(corrupt),
            }
        }
        scan.refs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use casket_model::DigestFunction;

    fn memory() -> Arc<dyn ObjectStore> {
        Arc::new(object_store::memory::InMemory::new())
    }

    #[tokio::test]
    async fn conformance_in_memory() {
        let store = memory();
        let records = ObjectRecords::new(store.clone(), "casket", "ac");
        conformance::run_records(&records, TOUCH_INTERVAL).await;
        let refs = ObjectRefs::new(store.clone(), "casket");
        let raw = ObjectRecords::new(store, "casket", "refs");
        conformance::run_refs(&refs, Some(&raw), TOUCH_INTERVAL).await;
    }

    #[tokio::test]
    async fn conformance_local_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Keys are paths here: a key is free again only once the directories below it are gone,
        // which the automatic cleanup does, but it races puts in the directories it removes.
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
            .expect("local")
            .with_automatic_cleanup(true);
        let store: Arc<dyn ObjectStore> = Arc::new(local);
        let records = ObjectRecords::new(store.clone(), "", "ac");
        conformance::records::run_records_without_delete_races(&records, TOUCH_INTERVAL).await;
        let (refs, raw) = (
            ObjectRefs::new(store.clone(), ""),
            ObjectRecords::new(store, "", "refs"),
        );
        conformance::refs::run_refs_without_delete_races(&refs, Some(&raw), TOUCH_INTERVAL).await;
    }

    #[tokio::test]
    async fn reads_after_the_touch_interval_count_as_use() {
        let records = ObjectRecords::new(memory(), "", "ac").with_touch_interval(Duration::ZERO);
        conformance::records::get_counts_as_use(&records).await;
        let refs = ObjectRefs::new(memory(), "").with_touch_interval(Duration::ZERO);
        conformance::refs::get_counts_as_use(&refs).await;
    }

    #[tokio::test]
    async fn nested_refs_that_raced_in_both_still_read() {
        let store = memory();
        let refs = ObjectRefs::new(store.clone(), "");
        let name = |s: &str| RefName::new(s).expect("name");
        let (a, b) = (
            Digest::of(DigestFunction::Sha256, b"a"),
            Digest::of(DigestFunction::Sha256, b"b"),
        );
        // Two frontends that both passed the nesting check before either wrote.
        for (key, digest) in [("refs/p/e", a), ("refs/p/e/k", b)] {
            let record = PutPayload::from(encode_ref(&digest));
            store.put(&Path::from(key), record).await.expect("put");
        }
        assert_eq!(refs.get(&name("p/e")).await.expect("get"), Some(a));
        assert_eq!(refs.get(&name("p/e/k")).await.expect("get"), Some(b));
        assert_eq!(refs.list().await.expect("list").len(), 2);
        let again = refs.set(&name("p/e"), &b).await;
        assert!(matches!(again, Err(StoreError::RefConflict(_))), "{again:?}");
        assert!(refs.delete(&name("p/e/k")).await.expect("delete"));
        refs.set(&name("p/e"), &b)
            .await
            .expect("set once the other is gone");
    }
}
