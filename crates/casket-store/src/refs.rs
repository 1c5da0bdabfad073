//! Refs: named roots (`project/element/key` -> digest). [`RefStore`] is what callers need;
//! [`DiskRefs`] keeps them as small files under `ROOT/refs/`, `ObjectRefs` in an object store.
//!
//! Both keep a ref as a record (see [`RecordStore`]) whose key is its name and whose bytes
//! are the digest in text form, `HASH/SIZE` and a newline. Records are replaced atomically, so a
//! reader sees the old or the new digest, never a mix; their time of last write or read
//! protects the tree a ref names from expiry.
//!
//! Names are paths: a ref never coexists with a ref whose name is its ancestor or descendant
//! (`a/b` and `a/b/c`), so every store can keep them as files.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, RefName};

use crate::disk::DiskStore;
use crate::error::{Result, StoreError, blocking};
use crate::records::{self, DiskRecords, RecordStore};

/// One ref as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefEntry {
    /// The ref's name.
    pub name: RefName,
    /// The root digest it names.
    pub digest: Digest,
    /// When it was last set or read.
    pub touched: SystemTime,
}

/// A ref file that could not be read as a ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRef {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// Every ref, and the ref files that are not valid refs.
#[derive(Clone, Debug, Default)]
pub struct RefScan {
    /// Valid refs, sorted by name.
    pub refs: Vec<RefEntry>,
    /// Files under `refs/` that are not valid refs (bad name, bad content).
    pub corrupt: Vec<CorruptRef>,
}

/// Named roots. `conformance::run_refs` checks every rule.
#[async_trait]
pub trait RefStore: Send + Sync + fmt::Debug {
    /// Points `name` at `digest`, atomically replacing any previous value; refused with
    /// [`StoreError::RefConflict`] while a ref exists whose name is an ancestor or a descendant
    /// of `name`.
    async fn set(&self, name: &RefName, digest: &Digest) -> Result<()>;

    /// The digest `name` points at, or `None` (also when `name` is only an ancestor of other
    /// refs). Reading a ref counts as using it.
    async fn get(&self, name: &RefName) -> Result<Option<Digest>>;

    /// Removes `name`; `Ok(false)` if it did not exist.
    async fn delete(&self, name: &RefName) -> Result<bool>;

    /// Every ref, and every stored entry that is not a valid ref.
    async fn scan(&self) -> Result<RefScan>;

    /// Every valid ref, sorted by name; invalid entries are skipped (see [`RefStore::scan`]).
    async fn list(&self) -> Result<Vec<RefEntry>> {
        Ok(self.scan().await?.refs)
    }
}

/// A ref's stored form: its digest in text, then a newline.
pub(crate) fn encode_ref(digest: &Digest) -> Bytes {
    Bytes::from(format!("{digest}\n"))
}

/// The digest a stored ref holds, or why it holds none.
pub(crate) fn decode_ref(bytes: &[u8]) -> Result<Digest, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    text.trim_end_matches('\n')
        .parse()
        .map_err(|e: casket_model::DigestError| e.to_string())
}

/// The digest the ref `name` holds, read as `bytes`; [`StoreError::CorruptRef`] if it holds none.
pub(crate) fn decode_named_ref(name: &RefName, bytes: &[u8]) -> Result<Digest> {
    decode_ref(bytes).map_err(|reason| StoreError::CorruptRef {
        name: name.to_string(),
        reason,
    })
}

/// An error of the records a ref lives in, as the ref's: a record conflict is a ref conflict.
pub(crate) fn ref_error(name: &RefName) -> impl FnOnce(StoreError) -> StoreError + '_ {
    move |e| match e {
        StoreError::RecordConflict(_) => StoreError::RefConflict(name.to_string()),
        e => e,
    }
}

/// The refs of a [`DiskStore`]: records of kind `refs`, so the file `ROOT/refs/NAME`. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct DiskRefs {
    records: DiskRecords,
}

impl DiskRefs {
    /// The refs kept beside `store`'s blobs.
    pub fn new(store: &DiskStore) -> Self {
        DiskRefs {
            records: DiskRecords::new(store, "refs"),
        }
    }

    /// Every ref file, read and sorted into refs and corrupt files (blocking).
    fn scan_sync(&self) -> Result<RefScan> {
        let mut scan = RefScan::default();
        for file in self.records.files()? {
            let Some(name) = file.key.and_then(|key| RefName::new(key).ok()) else {
                scan.corrupt.push(CorruptRef {
                    path: file.path,
                    reason: "not a valid ref name".into(),
                });
                continue;
            };
            // `None`: deleted since it was listed.
            let Some(bytes) = records::read(&file.path)? else {
                continue;
            };
            match decode_ref(&bytes) {
                Ok(digest) => scan.refs.push(RefEntry {
                    name,
                    digest,
                    touched: file.touched,
                }),
                Err(reason) => scan.corrupt.push(CorruptRef {
                    path: file.path,
                    reason,
                }),
            }
        }
        scan.refs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(scan)
    }
}

#[async_trait]
impl RefStore for DiskRefs {
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
        let refs = self.clone();
        blocking(move || refs.scan_sync()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskOptions;
    use casket_model::DigestFunction;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    fn store() -> (tempfile::TempDir, DiskStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("open");
        (dir, store)
    }

    fn name(s: &str) -> RefName {
        RefName::new(s).expect("valid")
    }

    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = store();
        let records = DiskRecords::new(&store, "refs");
        crate::conformance::run_refs(&DiskRefs::new(&store), Some(&records), Duration::ZERO).await;
    }

    #[tokio::test]
    async fn refs_are_digest_files_under_the_refs_directory() {
        let (_dir, store) = store();
        let refs = DiskRefs::new(&store);
        let a = Digest::of(DigestFunction::Sha256, b"a");
        refs.set(&name("p/e/k"), &a).await.expect("set");
        let file = store.refs_dir().join("p/e/k");
        assert_eq!(fs::read_to_string(&file).expect("ref file"), format!("{a}\n"));

        let b = Digest::of(DigestFunction::Blake3, b"b");
        fs::write(store.refs_dir().join("p/old"), format!("{b}\n")).expect("an existing store's ref");
        assert_eq!(refs.get(&name("p/old")).await.expect("get"), Some(b));

        assert!(refs.delete(&name("p/e/k")).await.expect("delete"));
        assert!(
            !store.refs_dir().join("p/e").exists(),
            "empty parents are removed"
        );
        assert!(store.refs_dir().join("p").is_dir(), "parents still in use stay");
    }

    #[tokio::test]
    async fn scan_reports_corrupt_files_by_path() {
        let (_dir, store) = store();
        let refs = DiskRefs::new(&store);
        refs.set(&name("p/fine"), &Digest::of(DigestFunction::Sha256, b"a"))
            .await
            .expect("set");
        let broken = store.refs_dir().join("p/broken");
        fs::write(&broken, "").expect("a ref emptied by a power loss");
        let unnamed = store
            .refs_dir()
            .join(std::ffi::OsStr::from_bytes(b"p/not-utf8-\xff"));
        fs::write(&unnamed, "").expect("a file no ref can be");
        let scan = refs.scan().await.expect("scan despite corrupt refs");
        assert_eq!(scan.refs.len(), 1);
        let mut corrupt: Vec<_> = scan.corrupt.iter().map(|c| c.path.clone()).collect();
        corrupt.sort();
        assert_eq!(corrupt, [broken, unnamed]);
    }
}
