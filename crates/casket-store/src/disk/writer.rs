//! Writing objects: temp file in `tmp/`, verify, rename into `cas/`.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestHasher};
use tempfile::NamedTempFile;

use super::DiskStore;
use crate::blob_store::BlobWriter;
use crate::error::{IoContext, Result, StoreError, blocking};

impl DiskStore {
    /// A new, empty, read-only temp file beside the objects. It is removed if dropped.
    pub(super) fn create_temp(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix("obj-")
            .permissions(Permissions::from_mode(0o444))
            .tempfile_in(self.tmp_dir())
            .io_context("create temp file in", self.tmp_dir())
    }

    /// Makes a complete, verified temp file the object for `digest`. Renaming over an existing
    /// object is harmless: it has the same content.
    pub(super) fn install(&self, temp: NamedTempFile, digest: &Digest) -> Result<()> {
        if self.options.fsync {
            temp.as_file().sync_data().io_context("fsync", temp.path())?;
        }
        let target = self.object_path(digest);
        temp.persist(&target)
            .map_err(|e| e.error)
            .io_context("rename into", &target)?;
        if self.options.fsync
            && let Some(dir) = target.parent()
        {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .io_context("fsync", dir)?;
        }
        Ok(())
    }
}

/// A streaming write into a temp file, hashed as it goes.
pub(super) struct DiskWriter {
    store: DiskStore,
    digest: Digest,
    state: Option<(NamedTempFile, DigestHasher)>,
    written: u64,
}

impl DiskWriter {
    pub(super) fn new(store: DiskStore, digest: Digest) -> Result<Self> {
        let temp = store.create_temp()?;
        Ok(DiskWriter {
            store,
            digest,
            state: Some((temp, DigestHasher::new(digest.function()))),
            written: 0,
        })
    }

    fn take_state(&mut self) -> Result<(NamedTempFile, DigestHasher)> {
        self.state
            .take()
            .ok_or_else(|| StoreError::Task("write after a failed write".into()))
    }
}

#[async_trait]
impl BlobWriter for DiskWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.written + chunk.len() as u64 > self.digest.size() {
            self.state = None;
            return Err(StoreError::TooLong(self.digest));
        }
        let (mut temp, mut hasher) = self.take_state()?;
        let len = chunk.len() as u64;
        let state = blocking(move || {
            temp.write_all(&chunk).io_context("write", temp.path())?;
            hasher.update(&chunk);
            Ok((temp, hasher))
        })
        .await?;
        self.state = Some(state);
        self.written += len;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let (temp, hasher) = self.take_state()?;
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        let store = self.store.clone();
        let digest = self.digest;
        blocking(move || store.install(temp, &digest)).await
    }
}
