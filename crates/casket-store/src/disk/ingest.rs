//! One-pass ingestion of local files: read once, hash and write the same bytes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;

use bytes::Bytes;
use casket_model::{Digest, DigestFunction, DigestHasher};

use super::DiskStore;
use crate::blob_store::CHUNK_SIZE;
use crate::error::{IoContext, Result, StoreError};

/// Files up to this size are read into memory whole, hashed, and written only if absent.
const SMALL_FILE: u64 = 1 << 20;

/// Chunks in flight between the reading thread and the hashing thread of a large file.
const PIPELINE_DEPTH: usize = 4;

impl DiskStore {
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
            if !digest.is_empty_blob() && self.stat_object(&digest, true)?.is_none() {
                let mut temp = self.create_temp()?;
                temp.write_all(&data).io_context("write", temp.path())?;
                self.install(temp, &digest)?;
            }
            return Ok(digest);
        }
        self.ingest_large(file, path, function)
    }

    /// Copies a large file into a temp file while another thread hashes the same chunks.
    fn ingest_large(&self, mut file: File, path: &Path, function: DigestFunction) -> Result<Digest> {
        let mut temp = self.create_temp()?;
        let (tx, rx) = mpsc::sync_channel::<Bytes>(PIPELINE_DEPTH);
        let digest = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || {
                let mut hasher = DigestHasher::new(function);
                for chunk in rx {
                    hasher.update(&chunk);
                }
                hasher.finish()
            });
            let copied = (|| {
                loop {
                    let mut buf = Vec::with_capacity(CHUNK_SIZE);
                    let n = (&mut file)
                        .take(CHUNK_SIZE as u64)
                        .read_to_end(&mut buf)
                        .io_context("read", path)?;
                    if n == 0 {
                        return Ok(());
                    }
                    let chunk = Bytes::from(buf);
                    temp.write_all(&chunk).io_context("write", temp.path())?;
                    if tx.send(chunk).is_err() {
                        return Err(StoreError::Task("hashing thread stopped".into()));
                    }
                }
            })();
            drop(tx);
            let digest = hasher
                .join()
                .map_err(|_| StoreError::Task("hashing thread panicked".into()));
            copied.and(digest)
        })?;
        self.install(temp, &digest)?;
        Ok(digest)
    }
}
