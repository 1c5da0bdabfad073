//! Streaming writes: into a temp object, hashed as they go, verified, then linked into place.

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestHasher};

use super::DiskStore;
use super::temp::TempObject;
use crate::blob_store::BlobWriter;
use crate::error::{IoContext, Result, StoreError, blocking};

/// A streaming write into a temp file, hashed as it goes.
pub(super) struct DiskWriter {
    store: DiskStore,
    digest: Digest,
    state: Option<(TempObject, DigestHasher)>,
    written: u64,
}

impl DiskWriter {
    pub(super) fn new(store: DiskStore, digest: Digest) -> Result<Self> {
        let temp = store.create_temp(false)?;
        Ok(DiskWriter {
            store,
            digest,
            state: Some((temp, DigestHasher::new(digest.function()))),
            written: 0,
        })
    }

    fn take_state(&mut self) -> Result<(TempObject, DigestHasher)> {
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
        let store_tmp = self.store.tmp_dir();
        let state = blocking(move || {
            temp.file.write_all(&chunk).io_context("write", store_tmp)?;
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
