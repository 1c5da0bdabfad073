//! Refs: named roots (`project/element/key` -> digest). [`RefStore`] is what callers need;
//! [`DiskRefs`] keeps them as small files under `ROOT/refs/`, `ObjectRefs` in an object store.
//!
//! A ref is a file whose path below `refs/` is its name and whose content is the digest in
//! text form. Updates write a temp file and rename it over the old one, so a reader sees the
//! old or the new digest, never a mix. The file's mtime records when the ref was last set or
//! read, which protects the tree it names from expiry.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use casket_model::{Digest, RefName};

use crate::disk::DiskStore;
use crate::error::{IoContext, Result, StoreError, blocking};

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

/// Named roots.
#[async_trait]
pub trait RefStore: Send + Sync + fmt::Debug {
    /// Points `name` at `digest`, atomically replacing any previous value.
    async fn set(&self, name: &RefName, digest: &Digest) -> Result<()>;

    /// The digest `name` points at, or `None`. Reading a ref counts as using it.
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

/// The refs of a [`DiskStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskRefs {
    dir: PathBuf,
    tmp: PathBuf,
    fsync: bool,
}

impl DiskRefs {
    /// The refs kept beside `store`'s blobs.
    pub fn new(store: &DiskStore) -> Self {
        DiskRefs {
            dir: store.refs_dir(),
            tmp: store.tmp_dir(),
            fsync: store.options().fsync,
        }
    }

    fn path(&self, name: &RefName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    fn set_sync(&self, name: &RefName, digest: &Digest) -> Result<()> {
        let path = self.path(name);
        let conflict = || StoreError::RefConflict(name.to_string());
        let parent = path.parent().unwrap_or(&self.dir);
        match fs::create_dir_all(parent) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::NotADirectory || e.kind() == io::ErrorKind::AlreadyExists =>
            {
                return Err(conflict());
            }
            Err(e) => return Err(e).io_context("create", parent),
        }
        let mut temp = tempfile::Builder::new()
            .prefix("ref-")
            .tempfile_in(&self.tmp)
            .io_context("create temp file in", &self.tmp)?;
        writeln!(temp, "{digest}").io_context("write", temp.path())?;
        if self.fsync {
            temp.as_file().sync_data().io_context("fsync", temp.path())?;
        }
        match temp.persist(&path) {
            Ok(_) => {}
            Err(_) if path.is_dir() => return Err(conflict()),
            Err(e) => return Err(e.error).io_context("rename into", path),
        }
        if self.fsync {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .io_context("fsync", parent)?;
        }
        Ok(())
    }

    fn walk(&self, dir: &Path, out: &mut RefScan) -> Result<()> {
        for entry in fs::read_dir(dir).io_context("list", dir)? {
            let entry = entry.io_context("list", dir)?;
            let path = entry.path();
            let file_type = entry.file_type().io_context("stat", &path)?;
            if file_type.is_dir() {
                self.walk(&path, out)?;
                continue;
            }
            let relative = path.strip_prefix(&self.dir).unwrap_or(&path);
            let Some(name) = relative.to_str().and_then(|n| RefName::new(n).ok()) else {
                out.corrupt.push(CorruptRef {
                    path,
                    reason: "not a valid ref name".into(),
                });
                continue;
            };
            let touched = entry
                .metadata()
                .and_then(|m| m.modified())
                .io_context("stat", &path)?;
            match read_ref(&name, &path) {
                Ok(Some(digest)) => out.refs.push(RefEntry {
                    name,
                    digest,
                    touched,
                }),
                Ok(None) => {}
                Err(StoreError::CorruptRef { reason, .. }) => out.corrupt.push(CorruptRef { path, reason }),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RefStore for DiskRefs {
    async fn set(&self, name: &RefName, digest: &Digest) -> Result<()> {
        let (refs, name, digest) = (self.clone(), name.clone(), *digest);
        blocking(move || refs.set_sync(&name, &digest)).await
    }

    async fn get(&self, name: &RefName) -> Result<Option<Digest>> {
        let (refs, name) = (self.clone(), name.clone());
        blocking(move || {
            let path = refs.path(&name);
            let Some(digest) = read_ref(&name, &path)? else {
                return Ok(None);
            };
            let now = fs::FileTimes::new().set_modified(SystemTime::now());
            // A ref removed between the read and the touch was still read; ignore that race.
            let _ = fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_times(now));
            Ok(Some(digest))
        })
        .await
    }

    async fn delete(&self, name: &RefName) -> Result<bool> {
        let (refs, name) = (self.clone(), name.clone());
        blocking(move || {
            let path = refs.path(&name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(_) if path.is_dir() => return Err(StoreError::RefConflict(name.to_string())),
                Err(e) => return Err(e).io_context("remove", path),
            }
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != refs.dir) {
                // Fails harmlessly when another ref still lives there.
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(true)
        })
        .await
    }

    async fn scan(&self) -> Result<RefScan> {
        let refs = self.clone();
        blocking(move || {
            let mut scan = RefScan::default();
            refs.walk(&refs.dir, &mut scan)?;
            scan.refs.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(scan)
        })
        .await
    }
}

fn read_ref(name: &RefName, path: &Path) -> Result<Option<Digest>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) if path.is_dir() => return Err(StoreError::RefConflict(name.to_string())),
        Err(e) => return Err(e).io_context("read", path),
    };
    text.trim_end_matches('\n')
        .parse()
        .map(Some)
        .map_err(|e: casket_model::DigestError| StoreError::CorruptRef {
            name: name.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiskOptions;
    use casket_model::DigestFunction;

    fn name(s: &str) -> RefName {
        RefName::new(s).expect("valid")
    }

    #[tokio::test]
    async fn set_get_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("open");
        let refs = DiskRefs::new(&store);
        let a = Digest::of(DigestFunction::Sha256, b"a");
        let b = Digest::of(DigestFunction::Blake3, b"b");
        assert_eq!(refs.get(&name("p/e/k")).await.expect("get"), None);
        refs.set(&name("p/e/k"), &a).await.expect("set");
        refs.set(&name("p/other"), &a).await.expect("set");
        refs.set(&name("p/e/k"), &b).await.expect("update");
        assert_eq!(refs.get(&name("p/e/k")).await.expect("get"), Some(b));
        let listed: Vec<_> = refs
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|e| (e.name, e.digest))
            .collect();
        assert_eq!(listed, vec![(name("p/e/k"), b), (name("p/other"), a)]);

        assert!(matches!(
            refs.set(&name("p/e/k/deeper"), &a).await,
            Err(StoreError::RefConflict(_))
        ));
        assert!(matches!(
            refs.set(&name("p/e"), &a).await,
            Err(StoreError::RefConflict(_))
        ));

        assert!(refs.delete(&name("p/e/k")).await.expect("delete"));
        assert!(!refs.delete(&name("p/e/k")).await.expect("delete again"));
        assert!(
            !store.refs_dir().join("p/e").exists(),
            "empty parents are removed"
        );
        assert_eq!(refs.list().await.expect("list").len(), 1);

        fs::write(store.refs_dir().join("p/broken"), "").expect("a ref emptied by a power loss");
        let scan = refs.scan().await.expect("scan despite a corrupt ref");
        assert_eq!(scan.refs.len(), 1);
        assert_eq!(scan.corrupt.len(), 1);
        assert!(scan.corrupt[0].path.ends_with("p/broken"));
    }
}
