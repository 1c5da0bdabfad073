//! One-pass ingestion of local files: read once, hash and write the same bytes.
//!
//! Small files are read whole, hashed, and written only if absent. Large files go through a
//! three-thread pipeline over a fixed pool of reused, page-aligned buffers: this thread reads,
//! one thread hashes, one thread writes with `O_DIRECT`. Bypassing the page cache matters: on
//! machines where fresh page-cache pages are expensive (virtual machines) a buffered 1 GiB copy
//! costs several times the hashing, while direct writes run at device speed beside it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, mpsc};

use casket_model::{Digest, DigestFunction, DigestHasher};

use super::DiskStore;
use super::direct::{AlignedBuf, DIRECT_CHUNK, write_direct};
use crate::error::{IoContext, Result, StoreError};

/// Files up to this size are read into memory whole.
const SMALL_FILE: u64 = 1 << 20;

/// Buffers circulating in the pipeline; bounds its memory to this many chunks.
const PIPELINE_BUFFERS: usize = 4;

impl DiskStore {
    /// Stores `data`, whose digest the caller computed from it, unless already present.
    pub(super) fn store_if_absent(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        if digest.is_empty_blob() || self.object_exists(digest, true)? {
            return Ok(());
        }
        let mut temp = self.create_temp(false)?;
        temp.file.write_all(data).io_context("write", self.tmp_dir())?;
        self.install(temp, digest)
    }

    /// Stores the regular file at `path` and returns its digest. Symlinks are refused (the
    /// file is opened with `O_NOFOLLOW`). What is hashed is exactly what is written, even if
    /// the file changes meanwhile.
    pub(super) fn ingest_file_sync(&self, path: &Path, function: DigestFunction) -> Result<Digest> {
        let mut file = File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .io_context("open", path)?;
        let len = file.metadata().io_context("stat", path)?.len();
        if len <= SMALL_FILE {
            let mut data = Vec::with_capacity(len as usize + 1);
            file.read_to_end(&mut data).io_context("read", path)?;
            let digest = Digest::of(function, &data);
            self.store_if_absent(&digest, &data)?;
            return Ok(digest);
        }
        self.ingest_large(file, path, function)
    }

    fn ingest_large(&self, mut source: File, path: &Path, function: DigestFunction) -> Result<Digest> {
        let mut temp = self.create_temp(true)?;
        let tmp_dir = self.tmp_dir();
        let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(PIPELINE_BUFFERS);
        for _ in 0..PIPELINE_BUFFERS {
            free_tx
                .send(AlignedBuf::new(DIRECT_CHUNK))
                .map_err(|_| pipeline_stopped())?;
        }
        let (hash_tx, hash_rx) = mpsc::sync_channel::<Chunk>(PIPELINE_BUFFERS);
        let (write_tx, write_rx) = mpsc::sync_channel::<Chunk>(PIPELINE_BUFFERS);

        let (read, hashed, written) = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut hasher = DigestHasher::new(function);
                for chunk in hash_rx {
                    hasher.update(chunk.bytes());
                }
                hasher.finish()
            });
            let file = &mut temp.file;
            // On an error the remaining chunks are dropped, which returns their buffers, so the
            // reader never waits for a buffer that will not come back.
            let writer = scope.spawn(move || -> io::Result<()> {
                for chunk in write_rx {
                    write_direct(file, chunk.bytes())?;
                }
                Ok(())
            });
            let read = (|| {
                loop {
                    let mut buf = free_rx.recv().map_err(|_| pipeline_stopped())?;
                    let len = read_full(&mut source, buf.as_mut_slice()).io_context("read", path)?;
                    if len == 0 {
                        return Ok(());
                    }
                    let chunk = Chunk {
                        buf: Some(Arc::new(buf)),
                        len,
                        free: free_tx.clone(),
                    };
                    let both = hash_tx.send(chunk.clone()).and_then(|()| write_tx.send(chunk));
                    if both.is_err() || len < DIRECT_CHUNK {
                        return both.map_err(|_| pipeline_stopped());
                    }
                }
            })();
            drop((hash_tx, write_tx));
            (read, hasher.join(), writer.join())
        });
        // A failed write stops the reader too; report the write's own error first.
        written
            .map_err(|_| StoreError::Task("writing thread panicked".into()))?
            .io_context("write", tmp_dir)?;
        read?;
        let digest = hashed.map_err(|_| StoreError::Task("hashing thread panicked".into()))?;
        self.install(temp, &digest)?;
        Ok(digest)
    }
}

fn pipeline_stopped() -> StoreError {
    StoreError::Task("ingestion pipeline stopped".into())
}

/// A filled buffer shared by the hashing and writing threads. Whichever drops the last
/// reference returns the buffer to the pool.
#[derive(Clone)]
struct Chunk {
    buf: Option<Arc<AlignedBuf>>,
    len: usize,
    free: mpsc::SyncSender<AlignedBuf>,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.buf.as_ref().expect("present until dropped").as_slice()[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take().and_then(Arc::into_inner) {
            // The pool has room for every buffer; if the reader is gone, the buffer is freed.
            let _ = self.free.send(buf);
        }
    }
}

/// Fills `buf` unless the file ends first; returns how much was read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
