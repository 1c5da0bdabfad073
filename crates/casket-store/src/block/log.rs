//! The block files: appending records to the open block, sealing full blocks, recovering them
//! when the store opens, and expiring the oldest.
//!
//! Block `N` is `blocks/N.blk` (ten digits); a sealed block also has `blocks/N.idx`, written
//! after its data was synced. Only the newest block is open for appends, and its records are
//! scanned and verified when the store opens: a record torn by a crash fails its hash there and
//! the block is truncated before it.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use casket_model::Digest;

use super::record::{self, HEADER_LEN, Header, IndexEntry, Kind};
use crate::error::{IoContext, Result, StoreError};

/// How much of a block is read at once when it is scanned.
const SCAN_WINDOW: usize = 4 << 20;

/// One block file.
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) seq: u32,
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
}

/// A sealed block: complete, synced, indexed.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub(crate) block: Block,
    pub(crate) len: u64,
    /// When its last record was written (seconds since the UNIX epoch).
    pub(crate) last_write: u32,
}

/// The open block, where records are appended.
#[derive(Debug)]
pub(crate) struct Open {
    pub(crate) block: Block,
    pub(crate) len: u64,
    /// Its records so far, for its index when it is sealed.
    pub(crate) entries: Vec<IndexEntry>,
}

/// Every block, oldest first.
#[derive(Debug)]
pub(crate) struct Blocks {
    pub(crate) dir: PathBuf,
    pub(crate) sealed: VecDeque<Sealed>,
    pub(crate) open: Open,
    /// `fdatasync` after every append.
    pub(crate) fsync: bool,
}

/// What [`Blocks::verify`] found.
pub(crate) struct Verified {
    /// Each block's intact records, oldest block first.
    pub(crate) records: Vec<(u32, Vec<IndexEntry>)>,
    /// Damaged block tails: (block file, bytes valid, length).
    pub(crate) damaged: Vec<(PathBuf, u64, u64)>,
}

pub(crate) fn block_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.blk"))
}

fn index_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(format!("{seq:010}.idx"))
}

fn open_block(dir: &Path, seq: u32, create: bool) -> Result<Block> {
    let path = block_path(dir, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .open(&path)
        .io_context(if create { "create" } else { "open" }, &path)?;
    Ok(Block {
        seq,
        file: Arc::new(file),
        path,
    })
}

/// Reads the record at `offset` in `file` and checks it is `digest`'s, intact; `path` names
/// the file in an I/O error (only then is it built).
pub(crate) fn read_record(
    file: &File,
    offset: u32,
    digest: &Digest,
    path: impl FnOnce() -> PathBuf,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN + digest.size() as usize];
    file.read_exact_at(&mut buf, offset.into())
        .map_err(|source| StoreError::Io {
            op: "read",
            path: path(),
            source,
        })?;
    let corrupt = |actual| StoreError::Corrupt {
        expected: *digest,
        actual,
    };
    match Header::decode(&buf) {
        Some(Header {
            kind: Kind::Blob,
            digest: stored,
            ..
        }) if stored == *digest => {}
        Some(header) => return Err(corrupt(header.digest)),
        None => return Err(corrupt(digest.function().empty_digest())),
    }
    buf.drain(..HEADER_LEN);
    let actual = Digest::of(digest.function(), &buf);
    if actual != *digest {
        return Err(corrupt(actual));
    }
    Ok(buf)
}

/// Reads a file at a position of its own (the shared cursor of a `File` is never used).
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Scans `file` from the start for valid records (each header sound and each blob's content
/// matching its hash), up to `len`; returns them and where the valid part ends.
fn scan(file: &File, path: &Path, len: u64) -> Result<(Vec<IndexEntry>, u64)> {
    use std::io::Read;
    let mut reader = io::BufReader::with_capacity(SCAN_WINDOW, ReadAt { file, pos: 0 });
    let mut entries = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    let mut content = Vec::new();
    let mut at = 0u64;
    loop {
        if at + HEADER_LEN as u64 > len {
            return Ok((entries, at));
        }
        reader.read_exact(&mut header).io_context("read", path)?;
        let Some(parsed) = Header::decode(&header) else {
            return Ok((entries, at));
        };
        let (Some(end), Ok(offset)) = (at.checked_add(parsed.record_len()), u32::try_from(at)) else {
            return Ok((entries, at));
        };
        if end > len {
            return Ok((entries, at));
        }
        if parsed.kind == Kind::Blob {
            content.resize(parsed.digest.size() as usize, 0);
            reader.read_exact(&mut content).io_context("read", path)?;
            if Digest::of(parsed.digest.function(), &content) != parsed.digest {
                return Ok((entries, at));
            }
        }
        entries.push(IndexEntry {
            offset,
            header: parsed,
        });
        at = end;
    }
}

/// A sealed block's records: from its index file when that is valid, else by scanning it
/// (and rewriting the index).
fn sealed_records(dir: &Path, block: &Block, len: u64) -> Result<Vec<IndexEntry>> {
    let idx = index_path(dir, block.seq);
    match fs::read(&idx) {
        Ok(bytes) => {
            if let Some(entries) = record::decode_index(&bytes, block.seq, len) {
                return Ok(entries);
            }
            tracing::warn!(index = %idx.display(), "block index is damaged or stale: scanning the block");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).io_context("read", idx),
    }
    let (entries, valid) = scan(&block.file, &block.path, len)?;
    if valid < len {
        tracing::warn!(block = %block.path.display(), valid, len, "sealed block has a damaged record: later records of it are dropped");
    }
    write_index(dir, block.seq, len, &entries)?;
    Ok(entries)
}

fn write_index(dir: &Path, seq: u32, len: u64, entries: &[IndexEntry]) -> Result<()> {
    let path = index_path(dir, seq);
    let tmp = path.with_extension("idx.tmp");
    let bytes = record::encode_index(seq, len, entries);
    let file = File::create(&tmp).io_context("create", &tmp)?;
    file.write_all_at(&bytes, 0).io_context("write", &tmp)?;
    file.sync_all().io_context("fsync", &tmp)?;
    fs::rename(&tmp, &path).io_context("rename", &path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .io_context("fsync", dir)
}

fn now() -> u32 {
    super::now_secs()
}

impl Blocks {
    /// Opens every block under `dir` (creating the first if there is none): sealed blocks
    /// through their index, the open one by scanning it, cut back to its last valid record.
    /// `replay` is given each block's records in order, oldest block first (one block's at a
    /// time, so that a large store is not held twice in memory).
    pub(crate) fn recover(
        dir: &Path,
        fsync: bool,
        mut replay: impl FnMut(u32, &[IndexEntry]),
    ) -> Result<Blocks> {
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir).io_context("list", dir)? {
            let entry = entry.io_context("list", dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".blk").and_then(|s| s.parse::<u32>().ok()) {
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                let path = entry.path();
                fs::remove_file(&path).io_context("remove", &path)?;
            }
        }
        seqs.sort_unstable();
        let mut sealed = VecDeque::new();
        let open_seq = seqs.pop();
        for seq in seqs {
            let block = open_block(dir, seq, false)?;
            let meta = block.file.metadata().io_context("stat", &block.path)?;
            let len = meta.len();
            let entries = sealed_records(dir, &block, len)?;
            let last_write = entries.iter().map(|e| e.header.written).max().unwrap_or(0);
            replay(seq, &entries);
            sealed.push_back(Sealed {
                block,
                len,
                last_write,
            });
        }
        let open = match open_seq {
            Some(seq) => {
                let block = open_block(dir, seq, false)?;
                let len = block.file.metadata().io_context("stat", &block.path)?.len();
                let (entries, valid) = scan(&block.file, &block.path, len)?;
                if valid < len {
                    tracing::warn!(block = %block.path.display(), valid, len, "dropping an incomplete write at the end of the open block");
                    block.file.set_len(valid).io_context("truncate", &block.path)?;
                }
                replay(seq, &entries);
                Open {
                    block,
                    len: valid,
                    entries,
                }
            }
            None => Open {
                block: open_block(dir, 1, true)?,
                len: 0,
                entries: Vec::new(),
            },
        };
        Ok(Blocks {
            dir: dir.to_owned(),
            sealed,
            open,
            fsync,
        })
    }

    /// Bytes in every block file.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.open.len + self.sealed.iter().map(|s| s.len).sum::<u64>()
    }

    /// Every block's file, for readers.
    pub(crate) fn files(&self) -> HashMap<u32, Arc<File>> {
        self.sealed
            .iter()
            .map(|s| &s.block)
            .chain(std::iter::once(&self.open.block))
            .map(|b| (b.seq, b.file.clone()))
            .collect()
    }

    /// Appends `bytes`, which hold whole records described by `headers` in order, to the open
    /// block; seals it first if they would not fit in `block_size` (a block holds at least
    /// one batch). Returns the block and the offset of each record. On failure nothing of the
    /// batch remains.
    pub(crate) fn append(
        &mut self,
        bytes: &[u8],
        headers: &[Header],
        block_size: u64,
    ) -> Result<(u32, Vec<u32>, Option<Arc<File>>)> {
        let mut new_file = None;
        if self.open.len > 0 && self.open.len + bytes.len() as u64 > block_size.min(u32::MAX.into()) {
            new_file = Some(self.seal()?);
        }
        let base = self.open.len;
        let path = &self.open.block.path;
        let written = self
            .open
            .block
            .file
            .write_all_at(bytes, base)
            .and_then(|()| match self.fsync {
                true => self.open.block.file.sync_data(),
                false => Ok(()),
            });
        if let Err(e) = written {
            // Cut the partial batch off, so that the next append does not leave it between
            // records; a crash before that is handled by the scan at start.
            let _ = self.open.block.file.set_len(base);
            return Err(match e.raw_os_error() {
                Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() => {
                    StoreError::NoRoom(format!("the file system holding {} is full", path.display()))
                }
                _ => StoreError::Io {
                    op: "write",
                    path: path.clone(),
                    source: e,
                },
            });
        }
        let mut offsets = Vec::with_capacity(headers.len());
        let mut at = base;
        for header in headers {
            let offset = at as u32;
            offsets.push(offset);
            self.open.entries.push(IndexEntry {
                offset,
                header: *header,
            });
            at += header.record_len();
        }
        self.open.len = at;
        Ok((self.open.block.seq, offsets, new_file))
    }

    /// Seals the open block (synced, then indexed) and opens the next; returns its file.
    pub(crate) fn seal(&mut self) -> Result<Arc<File>> {
        let open = &self.open;
        open.block
            .file
            .sync_data()
            .io_context("fsync", &open.block.path)?;
        write_index(&self.dir, open.block.seq, open.len, &open.entries)?;
        let next = open_block(&self.dir, open.block.seq + 1, true)?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        let file = next.file.clone();
        let sealed = std::mem::replace(
            &mut self.open,
            Open {
                block: next,
                len: 0,
                entries: Vec::new(),
            },
        );
        let last_write = sealed.entries.last().map_or_else(now, |e| e.header.written);
        self.sealed.push_back(Sealed {
            block: sealed.block,
            len: sealed.len,
            last_write,
        });
        Ok(file)
    }

    /// The records of the oldest sealed block, to expire it.
    pub(crate) fn oldest_records(&self) -> Result<Option<(&Sealed, Vec<IndexEntry>)>> {
        let Some(oldest) = self.sealed.front() else {
            return Ok(None);
        };
        let entries = sealed_records(&self.dir, &oldest.block, oldest.len)?;
        Ok(Some((oldest, entries)))
    }

    /// Deletes the oldest sealed block's files; returns its length. Readers holding its file
    /// finish their reads.
    pub(crate) fn drop_oldest(&mut self) -> Result<u64> {
        let Some(oldest) = self.sealed.pop_front() else {
            return Ok(0);
        };
        let idx = index_path(&self.dir, oldest.block.seq);
        match fs::remove_file(&idx) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).io_context("remove", idx),
        }
        fs::remove_file(&oldest.block.path).io_context("remove", &oldest.block.path)?;
        Ok(oldest.len)
    }

    /// Every record of every block, verified (for fsck): the records found intact and the
    /// blocks' damaged parts, as (block, valid length, length).
    pub(crate) fn verify(&self) -> Result<Verified> {
        let mut records = Vec::new();
        let mut damaged = Vec::new();
        let blocks = self
            .sealed
            .iter()
            .map(|s| (&s.block, s.len))
            .chain(std::iter::once((&self.open.block, self.open.len)));
        for (block, len) in blocks {
            let (entries, valid) = scan(&block.file, &block.path, len)?;
            if valid < len {
                damaged.push((block.path.clone(), valid, len));
            }
            records.push((block.seq, entries));
        }
        Ok(Verified { records, damaged })
    }
}
