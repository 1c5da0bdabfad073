//! Streaming writes. Small blobs (their size is known when the write begins) are gathered in
//! memory and hashed and stored in one blocking call at commit; larger ones are gathered into
//! 4 MiB aligned chunks, each hashed and written to a temp object with `O_DIRECT` in one
//! blocking call, then verified and linked into place.

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestHasher};

use super::DiskStore;
use super::direct::{AlignedBuf, DIRECT_CHUNK, write_direct};
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
    File {
        /// The temp object, hasher and staging buffer; `None` after a failure.
        state: Option<Box<FileState>>,
        /// Chunks received but not yet hashed and staged.
        pending: Vec<Bytes>,
        pending_bytes: usize,
    },
}

/// A large write in progress.
struct FileState {
    temp: TempObject,
    hasher: DigestHasher,
    /// Bytes waiting for a whole aligned chunk to be written.
    staged: AlignedBuf,
    filled: usize,
}

impl FileState {
    /// Hashes `chunks` and writes every full staging buffer.
    fn absorb(&mut self, chunks: &[Bytes]) -> std::io::Result<()> {
        for chunk in chunks {
            self.hasher.update(chunk);
            let mut rest: &[u8] = chunk;
            while !rest.is_empty() {
                let room = DIRECT_CHUNK - self.filled;
                let n = room.min(rest.len());
                self.staged.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&rest[..n]);
                self.filled += n;
                rest = &rest[n..];
                if self.filled == DIRECT_CHUNK {
                    write_direct(&mut self.temp.file, self.staged.as_slice())?;
                    self.filled = 0;
                }
            }
        }
        Ok(())
    }

    /// Writes what is staged (the unaligned tail of the blob).
    fn finish(&mut self) -> std::io::Result<()> {
        write_direct(&mut self.temp.file, &self.staged.as_slice()[..self.filled])?;
        self.filled = 0;
        Ok(())
    }
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
        let temp = store.create_temp(true)?;
        let state = Box::new(FileState {
            temp,
            hasher: DigestHasher::new(digest.function()),
            staged: AlignedBuf::new(DIRECT_CHUNK),
            filled: 0,
        });
        Ok(DiskWriter {
            store,
            digest,
            sink: Sink::File {
                state: Some(state),
                pending: Vec::new(),
                pending_bytes: 0,
            },
            written: 0,
        })
    }
}

fn take_state(state: &mut Option<Box<FileState>>) -> Result<Box<FileState>> {
    state
        .take()
        .ok_or_else(|| StoreError::Task("write after a failed write".into()))
}

/// Hashes and stages `pending` on a blocking thread; returns the state for the next call.
async fn absorb(
    store: &DiskStore,
    mut state: Box<FileState>,
    pending: Vec<Bytes>,
    last: bool,
) -> Result<Box<FileState>> {
    let tmp = store.tmp_dir();
    blocking(move || {
        state.absorb(&pending).io_context("write", &tmp)?;
        if last {
            state.finish().io_context("write", &tmp)?;
        }
        Ok(state)
    })
    .await
}

#[async_trait]
impl BlobWriter for DiskWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.written + chunk.len() as u64 > self.digest.size() {
            self.sink = Sink::File {
                state: None,
                pending: Vec::new(),
                pending_bytes: 0,
            };
            return Err(StoreError::TooLong(self.digest));
        }
        let len = chunk.len() as u64;
        match &mut self.sink {
            Sink::Memory(chunks) => chunks.push(chunk),
            Sink::File {
                state,
                pending,
                pending_bytes,
            } => {
                *pending_bytes += chunk.len();
                pending.push(chunk);
                // One blocking call per staging buffer's worth, not per chunk.
                if *pending_bytes >= DIRECT_CHUNK {
                    let current = take_state(state)?;
                    let chunks = std::mem::take(pending);
                    *pending_bytes = 0;
                    *state = Some(absorb(&self.store, current, chunks, false).await?);
                }
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
            Sink::File { state, pending, .. } => {
                let current = take_state(state)?;
                let chunks = std::mem::take(pending);
                let FileState { temp, hasher, .. } = *absorb(&store, current, chunks, true).await?;
                let actual = hasher.finish();
                if actual != expected {
                    return Err(mismatch(actual));
                }
                blocking(move || store.install(temp, &expected)).await
            }
        }
    }
}
