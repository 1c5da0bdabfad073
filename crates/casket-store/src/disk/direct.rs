//! Large reads and writes that bypass the page cache (`O_DIRECT`).
//!
//! On machines where fresh page-cache pages are expensive (virtual machines), a buffered copy
//! of a large blob costs several times its hashing; direct I/O runs at device speed. Buffers,
//! lengths and offsets must be aligned to the device's logical block size ([`DIRECT_ALIGN`]).
//! File systems without `O_DIRECT` (tmpfs) get buffered I/O instead.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;

use crate::blob_store::{BlobStream, CHUNK_SIZE};
use crate::error::{IoContext, Result, StoreError, blocking};

/// Alignment `O_DIRECT` needs; 4 KiB covers every common device.
pub(super) const DIRECT_ALIGN: usize = 4096;

/// Bytes per direct read or write.
pub(super) const DIRECT_CHUNK: usize = 4 << 20;

/// A heap buffer of `len` bytes starting at a [`DIRECT_ALIGN`]-aligned address.
pub(super) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(super) fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        // The heap allocation never moves, so the offset stays valid when the Vec is moved.
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { storage, start, len }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// The first `len` bytes, without copying.
    fn into_bytes(self, len: usize) -> Bytes {
        Bytes::from(self.storage).slice(self.start..self.start + len)
    }
}

/// Writes an aligned chunk. Only the last chunk of a file can have an unaligned length: its
/// aligned part is written directly, then `O_DIRECT` is cleared for the tail.
pub(super) fn write_direct(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let aligned = bytes.len() - bytes.len() % DIRECT_ALIGN;
    file.write_all(&bytes[..aligned])?;
    if aligned < bytes.len() {
        let flags = rustix::fs::fcntl_getfl(&*file)?;
        rustix::fs::fcntl_setfl(&*file, flags - rustix::fs::OFlags::DIRECT)?;
        file.write_all(&bytes[aligned..])?;
    }
    Ok(())
}

/// Opens `path` for direct reads; `None` where the file system does not allow them.
pub(super) fn open_direct(path: &Path) -> io::Result<Option<File>> {
    match File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Streams `len` bytes of `file` (opened for direct reads) from `offset`, in
/// [`CHUNK_SIZE`] pieces of [`DIRECT_CHUNK`] reads.
pub(super) fn direct_stream(file: File, offset: u64, len: u64, path: PathBuf) -> BlobStream {
    let aligned = offset - offset % DIRECT_ALIGN as u64;
    let state = DirectRead {
        file: std::sync::Arc::new(file),
        next: aligned,
        skip: (offset - aligned) as usize,
        remaining: len,
        pieces: VecDeque::new(),
        path,
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(piece) = state.pieces.pop_front() {
            return Some((Ok(piece), state));
        }
        if state.remaining == 0 {
            return None;
        }
        match state.fill().await {
            Ok(()) => state.pieces.pop_front().map(|piece| (Ok(piece), state)),
            Err(e) => {
                state.remaining = 0;
                Some((Err(e), state))
            }
        }
    })
    .boxed()
}

struct DirectRead {
    file: std::sync::Arc<File>,
    next: u64,
    skip: usize,
    remaining: u64,
    pieces: VecDeque<Bytes>,
    path: PathBuf,
}

impl DirectRead {
    /// Reads the next chunk and splits it into pieces.
    async fn fill(&mut self) -> Result<()> {
        let (file, at, path) = (self.file.clone(), self.next, self.path.clone());
        let (buf, read) = blocking(move || {
            let mut buf = AlignedBuf::new(DIRECT_CHUNK);
            let mut read = 0;
            while read < DIRECT_CHUNK {
                match file.read_at(&mut buf.as_mut_slice()[read..], at + read as u64) {
                    Ok(0) => break,
                    Ok(n) => read += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).io_context("read", path),
                }
            }
            Ok((buf, read))
        })
        .await?;
        if read <= self.skip {
            return Err(StoreError::Io {
                op: "read",
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the object is shorter than its size",
                ),
            });
        }
        self.next += read as u64;
        let wanted = ((read - self.skip) as u64).min(self.remaining) as usize;
        let data = buf.into_bytes(self.skip + wanted).slice(self.skip..);
        self.skip = 0;
        self.remaining -= wanted as u64;
        let mut at = 0;
        while at < data.len() {
            let end = (at + CHUNK_SIZE).min(data.len());
            self.pieces.push_back(data.slice(at..end));
            at = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use casket_model::{Digest, DigestFunction};
    use futures::TryStreamExt;

    use crate::{BlobStore, BlobStoreExt, DiskOptions, DiskStore, ReadRange, StoreError};

    #[tokio::test]
    async fn large_blobs_written_in_odd_chunks_read_back_in_any_range() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = DiskStore::open(dir.path(), DiskOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let data: Vec<u8> = (0..(9 << 20) + 7u32)
            .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
            .collect();
        let digest = Digest::of(DigestFunction::Sha256, &data);
        let mut writer = store.begin_write(&digest).await.unwrap_or_else(|e| panic!("{e}"));
        for piece in data.chunks(700_001) {
            writer
                .write(Bytes::copy_from_slice(piece))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        writer.commit().await.unwrap_or_else(|e| panic!("{e}"));

        let len = data.len() as u64;
        for (offset, limit) in [
            (0, None),
            (1, None),
            (4095, Some(10)),
            (4 << 20, Some(5 << 20)),
            (len - 3, None),
            (len, None),
        ] {
            let stream = store
                .read(&digest, ReadRange { offset, limit })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("missing"));
            let chunks: Vec<Bytes> = stream.try_collect().await.unwrap_or_else(|e| panic!("{e}"));
            assert!(chunks.iter().all(|c| c.len() <= crate::blob_store::CHUNK_SIZE));
            let got = chunks.concat();
            let end = limit.map_or(len, |l| (offset + l).min(len)) as usize;
            assert!(
                got == data[offset as usize..end],
                "offset {offset} limit {limit:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_large_write_that_does_not_match_stores_nothing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = DiskStore::open(dir.path(), DiskOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let data = vec![5u8; 6 << 20];
        let digest = Digest::of(DigestFunction::Sha256, &data);
        let mut other = data.clone();
        other[5 << 20] ^= 1;
        let err = store.put_verified(&digest, Bytes::from(other)).await.err();
        assert!(matches!(err, Some(StoreError::DigestMismatch { .. })));
        assert_eq!(
            store.find_missing(&[digest]).await.unwrap_or_default(),
            vec![digest]
        );
    }
}
