//! Streaming writes. Small blobs (their size is known when the write begins) are gathered in
//! memory and hashed and stored in one blocking call at commit; larger ones stream into a temp
//! object, hashed as they go, verified, then linked into place.

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestHasher};

use super::DiskStore;
use super::temp::TempObject;
use crate::blob_store::BlobWriter;
use crate::error::{IoContext, Result, StoreError, blocking};

/// Blobs up to this size are gathered in memory by a writer.
pub(super) const SMALL_WRITE: u64 = 1 << 20;

/// A write of one blob.
pub(super) struct DiskWriter {
    store: DiskStore,
    digest: Digest,
    sink: Sink,
    written: u64,
}

enum Sink {
    Memory(Vec<Bytes>),
    File(Option<(TempObject, DigestHasher)>),
}

impl DiskWriter {
    /// A writer gathering a small blob in memory; needs no blocking call.
    pub(super) fn in_memory(store: DiskStore, digest: Digest) -> Self {
        DiskWriter {
            store,
            digest,
            sink: Sink::Memory(Vec::new()),
            written: 0,
        }
    }

    /// A writer streaming into a temp object.
    pub(super) fn to_file(store: DiskStore, digest: Digest) -> Result<Self> {
        let temp = store.create_temp(false)?;
        Ok(DiskWriter {
            store,
            digest,
            sink: Sink::File(Some((temp, DigestHasher::new(digest.function())))),
            written: 0,
        })
    }
}

fn take_state(state: &mut Option<(TempObject, DigestHasher)>) -> Result<(TempObject, DigestHasher)> {
    state
        .take()
        .ok_or_else(|| StoreError::Task("write after a failed write".into()))
}

#[async_trait]
impl BlobWriter for DiskWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.written + chunk.len() as u64 > self.digest.size() {
            self.sink = Sink::File(None);
            return Err(StoreError::TooLong(self.digest));
        }
        let len = chunk.len() as u64;
        match &mut self.sink {
            Sink::Memory(chunks) => chunks.push(chunk),
            Sink::File(state) => {
                let (mut temp, mut hasher) = take_state(state)?;
                let store_tmp = self.store.tmp_dir();
                *state = Some(
                    blocking(move || {
                        temp.file.write_all(&chunk).io_context("write", store_tmp)?;
                        hasher.update(&chunk);
                        Ok((temp, hasher))
                    })
                    .await?,
                );
            }
        }
        self.written += len;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let (store, expected) = (self.store.clone(), self.digest);
        let mismatch = move |actual| StoreError::DigestMismatch { expected, actual };
        match &mut self.sink {
            Sink::Memory(chunks) => {
                let chunks = std::mem::take(chunks);
                blocking(move || {
                    let data = match chunks.len() {
                        1 => chunks.into_iter().next().unwrap_or_default(),
                        _ => Bytes::from(chunks.concat()),
                    };
                    let actual = Digest::of(expected.function(), &data);
                    if actual != expected {
                        return Err(mismatch(actual));
                    }
                    store.store_if_absent(&expected, &data)
                })
                .await
            }
            Sink::File(state) => {
                let (temp, hasher) = take_state(state)?;
                let actual = hasher.finish();
                if actual != expected {
                    return Err(mismatch(actual));
                }
                blocking(move || store.install(temp, &expected)).await
            }
        }
    }
}
