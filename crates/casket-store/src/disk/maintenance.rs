//! Whole-store scans for accounting, expiry and integrity checks.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use casket_model::{Digest, DigestFunction, DigestHasher};

use super::{DiskStore, VARIANT_SUFFIX};
use crate::blob_store::{CHUNK_SIZE, Usage};
use crate::error::{IoContext, Result};

/// One stored object as seen by a scan.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    /// The object's digest (its size is the file's length).
    pub digest: Digest,
    /// Bytes allocated on disk for it.
    pub stored_bytes: u64,
    /// Last use (the LRU clock).
    pub last_used: SystemTime,
}

/// The result of walking every object file.
#[derive(Debug, Default)]
pub struct ObjectScan {
    /// Every well-named object.
    pub objects: Vec<ObjectInfo>,
    /// Files under `cas/` whose names are not object names.
    pub strays: Vec<PathBuf>,
}

impl ObjectScan {
    /// Exact totals over the scanned objects.
    pub fn usage(&self) -> Usage {
        self.objects.iter().fold(Usage::default(), |u, o| Usage {
            blobs: u.blobs + 1,
            bytes: u.bytes + o.digest.size(),
            stored_bytes: u.stored_bytes + o.stored_bytes,
        })
    }
}

impl DiskStore {
    /// Lists every object, with exact sizes from the file system.
    pub fn scan_objects(&self) -> Result<ObjectScan> {
        let mut scan = ObjectScan::default();
        let mut variants = Vec::new();
        for function in DigestFunction::ALL {
            let dir = self.objects_dir(function);
            for byte in 0..=255u8 {
                let prefix = format!("{byte:02x}");
                let fanout = dir.join(&prefix);
                let entries = match fs::read_dir(&fanout) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).io_context("list", fanout),
                };
                for entry in entries {
                    let entry = entry.io_context("list", &fanout)?;
                    let meta = match entry.metadata() {
                        Ok(meta) => meta,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e).io_context("stat", entry.path()),
                    };
                    let name = entry.file_name();
                    let name = name.to_str().filter(|_| meta.is_file()).unwrap_or_default();
                    let (rest, variant) = match name.strip_suffix(VARIANT_SUFFIX) {
                        Some(stem) => (stem, true),
                        None => (name, false),
                    };
                    let digest = Digest::parse(function, &format!("{prefix}{rest}/{}", meta.len())).ok();
                    match digest {
                        Some(digest) if variant => variants.push((digest, meta.blocks() * 512, entry.path())),
                        Some(digest) => scan.objects.push(ObjectInfo {
                            digest,
                            stored_bytes: meta.blocks() * 512,
                            last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        }),
                        None => scan.strays.push(entry.path()),
                    }
                }
            }
        }
        // A variant is part of its object: its blocks count towards the object's, and one
        // without an object (left by a crash between two removals) is a stray.
        let index: HashMap<Digest, usize> = scan
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.digest, i))
            .collect();
        for (digest, blocks, path) in variants {
            match index.get(&digest) {
                Some(&i) => scan.objects[i].stored_bytes += blocks,
                None => scan.strays.push(path),
            }
        }
        Ok(scan)
    }

    /// Re-hashes the object for `digest` and its executable variant: `Ok(None)` if intact (or
    /// gone), `Ok(Some(actual))` with what the corrupt copy hashes to otherwise.
    pub fn verify_object(&self, digest: &Digest) -> Result<Option<Digest>> {
        let object = verify_file(&self.object_path(digest), digest)?;
        if object.is_some() {
            return Ok(object);
        }
        verify_file(&self.variant_path(digest), digest)
    }

    /// Temp files not modified for `min_age`: left behind by writers that crashed.
    pub fn stale_temp_files(&self, min_age: Duration) -> Result<Vec<PathBuf>> {
        let now = SystemTime::now();
        let mut stale = Vec::new();
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir).io_context("list", &dir)? {
            let entry = entry.io_context("list", &dir)?;
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok());
            if age.is_some_and(|age| age >= min_age) {
                stale.push(entry.path());
            }
        }
        Ok(stale)
    }
}

/// Re-hashes one file: `Ok(Some(actual))` if it does not match `digest`, `Ok(None)` if it does
/// or is absent.
fn verify_file(path: &Path, digest: &Digest) -> Result<Option<Digest>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).io_context("open", path),
    };
    let mut hasher = DigestHasher::new(digest.function());
    let mut buf = vec![0u8; CHUNK_SIZE.min(digest.size() as usize + 1)];
    loop {
        let n = file.read(&mut buf).io_context("read", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = hasher.finish();
    Ok((actual != *digest).then_some(actual))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobStore, BlobStoreExt, DiskOptions};
    use bytes::Bytes;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn scan_counts_exactly_and_verify_finds_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("open");
        let a = store
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"aaaa"))
            .await
            .expect("put");
        let b = store
            .put_bytes(DigestFunction::Blake3, Bytes::from(vec![1u8; 10_000]))
            .await
            .expect("put");
        let usage = store.usage().await.expect("usage");
        assert_eq!((usage.blobs, usage.bytes), (2, 10_004));
        assert!(usage.stored_bytes >= 8192);
        assert_eq!(store.verify_object(&a).expect("verify"), None);

        let path = store.object_path(&b);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(&path, vec![2u8; 10_000]).expect("corrupt");
        let actual = store.verify_object(&b).expect("verify").expect("corrupt");
        assert_eq!(actual, Digest::of(DigestFunction::Blake3, &[2u8; 10_000]));

        fs::write(path.with_file_name("not-a-hash"), b"x").expect("stray");
        assert_eq!(store.scan_objects().expect("scan").strays.len(), 1);

        let variant = store.local_file(&a, true).expect("variant").expect("present");
        fs::set_permissions(&variant, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(&variant, b"bbbb").expect("corrupt variant");
        assert!(
            store.verify_object(&a).expect("verify").is_some(),
            "a corrupt variant is corruption"
        );
        fs::remove_file(store.object_path(&a)).expect("remove object");
        assert!(
            store.scan_objects().expect("scan").strays.contains(&variant),
            "orphan variant"
        );
    }
}
