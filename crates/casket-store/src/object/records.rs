//! `ObjectRecords` and `ObjectRefs`: action results, assets and refs as small objects under
//! `PREFIX/KIND/KEY`, so that every frontend sharing a bucket sees the same ones.
//!
//! An object store has no access time, and its last-modified time is the only clock every
//! frontend and `casket gc` share. So reading a record whose last write is older than the
//! touch interval writes the same bytes again (in the background): a record in use stays
//! younger than the interval plus the time between reads, which is what retention counts.
//! Last writer wins; nothing relies on conditional writes, which not every S3 store honours.

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
use crate::refs::{CorruptRef, RefEntry, RefScan, RefStore};

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

#[async_trait]
impl RecordStore for ObjectRecords {
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key)?;
        let result = match self.store.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
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
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put(&self, key: &str, record: Bytes) -> Result<()> {
        self.store.put(&self.path(key)?, PutPayload::from(record)).await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
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

/// Refs as records of kind `refs`, each holding the digest in text. Unlike [`crate::DiskRefs`],
/// `a/b` and `a/b/c` can both exist: keys are names, not paths.
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
}

fn parse_ref(name: &RefName, bytes: &[u8]) -> Result<Digest> {
    std::str::from_utf8(bytes)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            text.trim_end_matches('\n')
                .parse()
                .map_err(|e: casket_model::DigestError| e.to_string())
        })
        .map_err(|reason| StoreError::CorruptRef {
            name: name.to_string(),
            reason,
        })
}

#[async_trait]
impl RefStore for ObjectRefs {
    async fn set(&self, name: &RefName, digest: &Digest) -> Result<()> {
        self.records
            .put(name.as_str(), Bytes::from(format!("{digest}\n")))
            .await
    }

    async fn get(&self, name: &RefName) -> Result<Option<Digest>> {
        match self.records.get(name.as_str()).await? {
            Some(bytes) => parse_ref(name, &bytes).map(Some),
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
                Ok(match parse_ref(&name, &bytes) {
                    Ok(digest) => Ok(Some(RefEntry {
                        name,
                        digest,
                        touched: entry.touched,
                    })),
                    Err(e) => Err(CorruptRef {
                        path,
                        reason: e.to_string(),
                    }),
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
    use casket_model::DigestFunction;

    fn memory() -> Arc<dyn ObjectStore> {
        Arc::new(object_store::memory::InMemory::new())
    }

    #[tokio::test]
    async fn records_round_trip_with_odd_keys() {
        let records = ObjectRecords::new(memory(), "p", "assets");
        for key in ["blob/abc", "a b/c%d{e}", "x"] {
            records.put(key, Bytes::from(key.to_owned())).await.expect("put");
            assert_eq!(
                records.get(key).await.expect("get"),
                Some(Bytes::from(key.to_owned()))
            );
        }
        let mut keys: Vec<String> = records
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|e| e.key)
            .collect();
        keys.sort();
        assert_eq!(keys, ["a b/c%d{e}", "blob/abc", "x"]);
        assert!(records.delete("x").await.expect("delete"));
        assert!(!records.delete("x").await.expect("delete again"));
        assert!(records.put("../x", Bytes::new()).await.is_err());
    }

    #[tokio::test]
    async fn reading_an_old_record_writes_it_again() {
        let records = ObjectRecords::new(memory(), "", "ac").with_touch_interval(Duration::ZERO);
        records.put("k", Bytes::from_static(b"v")).await.expect("put");
        let before = records.list().await.expect("list")[0].touched;
        tokio::time::sleep(Duration::from_millis(20)).await;
        records.get("k").await.expect("get");
        for _ in 0..100 {
            if records.list().await.expect("list")[0].touched > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the record was not touched");
    }

    #[tokio::test]
    async fn refs_set_get_scan_delete() {
        let store = memory();
        let refs = ObjectRefs::new(store.clone(), "");
        let name = |s: &str| RefName::new(s).expect("name");
        let a = Digest::of(DigestFunction::Sha256, b"a");
        refs.set(&name("p/e/k"), &a).await.expect("set");
        refs.set(&name("p/e"), &a).await.expect("set");
        assert_eq!(refs.get(&name("p/e/k")).await.expect("get"), Some(a));
        store
            .put(&Path::from("refs/p/broken"), PutPayload::from_static(b"nonsense"))
            .await
            .expect("put");
        let scan = refs.scan().await.expect("scan");
        assert_eq!(
            scan.refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["p/e", "p/e/k"]
        );
        assert_eq!(scan.corrupt.len(), 1);
        assert!(refs.delete(&name("p/e")).await.expect("delete"));
        assert_eq!(refs.get(&name("p/e")).await.expect("get"), None);
    }
}
