//! Read-only views shared by both backends: stat, listing, sizes, fingerprints for modified
//! paths, diffs, whole-file reads and tar export, all computed on a staged tree.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use casket_model::{Digest, EntryName};
use casket_store::{BlobStore, BlobStoreExt, ReadRange};
use futures::TryStreamExt;

use crate::error::{Result, VdirError, io_error, store_error};
use crate::import::find;
use crate::path::{self, RelPath, display};
use crate::stage::{Content, DiskStamp, NodeId, Slot, SpecialKind, Stage, StagedFile};

/// The largest file [`crate::Directory::read_file`] returns.
pub const MAX_READ: u64 = 64 << 20;

/// The mtime set by [`crate::Directory::set_deterministic_mtime`] and written into tar
/// exports: 2011-11-11 11:11:11 UTC, BuildStream's magic timestamp.
pub const DETERMINISTIC_MTIME: i64 = 1_321_009_871;

/// What kind of entry a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device (only in directories on disk).
    Special(SpecialKind),
}

/// What is at a path (the path's last component is not followed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    /// The kind of entry.
    pub kind: EntryKind,
    /// A file's size in bytes; 0 for anything else.
    pub size: u64,
    /// A file's executable bit.
    pub executable: bool,
    /// A symlink's target, verbatim.
    pub target: Option<String>,
}

/// A read-only copy of a directory's tree at one moment: the source side of an import, and the
/// input of diffs and exports.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) stage: Stage,
    pub(crate) root: NodeId,
    /// Where stored file contents are read from.
    pub(crate) store: Option<Arc<dyn BlobStore>>,
}

/// How the entries of two trees differ, by path.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TreeDiff {
    /// Paths only in the second tree.
    pub added: Vec<String>,
    /// Paths only in the first tree.
    pub removed: Vec<String>,
    /// Paths in both whose kind, content, executable bit or target differ.
    pub changed: Vec<String>,
}

/// Identity of an entry's content, for change detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fingerprint {
    Directory,
    File { executable: bool, content: FileIdentity },
    Symlink(String),
    Special(SpecialKind),
}

/// Identity of a file's bytes: a digest where known, else how the file on disk looked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FileIdentity {
    Digest(Digest),
    Disk(DiskStamp),
    Inline(Bytes),
}

/// Fingerprints of every entry of a tree, by path.
type Fingerprints = BTreeMap<String, Fingerprint>;

fn fingerprint(slot: &Slot) -> Fingerprint {
    match slot {
        Slot::Dir(_) => Fingerprint::Directory,
        Slot::Symlink(link) => Fingerprint::Symlink(link.target().to_owned()),
        Slot::Special(kind) => Fingerprint::Special(*kind),
        Slot::File(file) => Fingerprint::File {
            executable: file.executable,
            content: match &file.content {
                Content::Stored(digest) => FileIdentity::Digest(*digest),
                Content::Disk { stamp, .. } => FileIdentity::Disk(*stamp),
                Content::Inline(bytes) => FileIdentity::Inline(bytes.clone()),
            },
        },
    }
}

fn kind(slot: &Slot) -> EntryKind {
    match slot {
        Slot::File(_) => EntryKind::File,
        Slot::Dir(_) => EntryKind::Directory,
        Slot::Symlink(_) => EntryKind::Symlink,
        Slot::Special(kind) => EntryKind::Special(*kind),
    }
}

/// Resolves an API path to its slot (parents followed inside `root`, the last not).
pub(crate) fn lookup(stage: &mut Stage, root: NodeId, path: &str) -> Result<Option<Slot>> {
    find(stage, root, &path::parse(path)?)
}

/// What is at `path`.
pub(crate) fn stat(stage: &mut Stage, root: NodeId, path: &str) -> Result<Stat> {
    let slot = lookup(stage, root, path)?.ok_or_else(|| VdirError::NotFound {
        path: path.to_owned(),
    })?;
    Ok(Stat {
        kind: kind(&slot),
        size: match &slot {
            Slot::File(file) => file.size(),
            _ => 0,
        },
        executable: matches!(&slot, Slot::File(f) if f.executable),
        target: match &slot {
            Slot::Symlink(link) => Some(link.target().to_owned()),
            _ => None,
        },
    })
}

/// The paths below `root`, in import order.
pub(crate) fn list(stage: &mut Stage, root: NodeId) -> Result<Vec<String>> {
    Ok(stage
        .walk_entries(root)?
        .iter()
        .map(|(p, _)| display(p))
        .collect())
}

/// The total size of the files below `root`.
pub(crate) fn size(stage: &mut Stage, root: NodeId) -> Result<u64> {
    Ok(stage
        .walk_entries(root)?
        .iter()
        .map(|(_, slot)| match slot {
            Slot::File(file) => file.size(),
            _ => 0,
        })
        .sum())
}

/// What [`crate::Directory::mark_unmodified`] remembered for one handle (shared by its clones):
/// the fingerprint of every entry then.
#[derive(Clone, Debug, Default)]
pub(crate) struct Baseline(Arc<Mutex<Option<Fingerprints>>>);

impl Baseline {
    fn prints(&self) -> MutexGuard<'_, Option<Fingerprints>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers the entries below `root` as they are now.
    pub(crate) fn mark(&self, stage: &mut Stage, root: NodeId) -> Result<()> {
        let prints = stage
            .walk_entries(root)?
            .iter()
            .map(|(p, slot)| (display(p), fingerprint(slot)))
            .collect();
        *self.prints() = Some(prints);
        Ok(())
    }

    /// Files and symlinks below `root` that are new or changed since [`Baseline::mark`] (all
    /// of them if it was never called), in listing order.
    pub(crate) fn modified(&self, stage: &mut Stage, root: NodeId) -> Result<Vec<String>> {
        let entries = stage.walk_entries(root)?;
        let baseline = self.prints();
        Ok(entries
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::File(_) | Slot::Symlink(_)))
            .map(|(p, slot)| (display(p), fingerprint(slot)))
            .filter(|(p, print)| baseline.as_ref().and_then(|b| b.get(p)) != Some(print))
            .map(|(p, _)| p)
            .collect())
    }
}

/// The file `path` resolves to, following every symlink inside `root`.
pub(crate) fn file_at(stage: &mut Stage, root: NodeId, path: &str) -> Result<StagedFile> {
    let parsed = path::parse(path)?;
    let mut components = path::components(&parsed);
    let Some(last) = components.pop() else {
        return Err(VdirError::IsADirectory {
            path: path.to_owned(),
        });
    };
    let mut links = crate::stage::MAX_LINKS;
    let mut dir = stage.walk(root, root, &components, false, &mut links)?;
    let mut name = last.map(str::to_owned);
    loop {
        let current = name.take().expect("set on every iteration");
        match stage.lookup(dir, &current)? {
            None => {
                return Err(VdirError::NotFound {
                    path: path.to_owned(),
                });
            }
            Some(Slot::File(file)) => return Ok(file),
            Some(Slot::Dir(_) | Slot::Special(_)) => {
                return Err(VdirError::IsADirectory {
                    path: path.to_owned(),
                });
            }
            Some(Slot::Symlink(link)) => {
                if links == 0 {
                    return Err(VdirError::SymlinkLoop {
                        path: path.to_owned(),
                    });
                }
                links -= 1;
                let (absolute, mut target) = path::target_components(link.target());
                let base = if absolute { root } else { dir };
                match target.pop() {
                    Some(Some(last)) => {
                        dir = stage.walk(root, base, &target, false, &mut links)?;
                        name = Some(last.to_owned());
                    }
                    _ => {
                        return Err(VdirError::IsADirectory {
                            path: path.to_owned(),
                        });
                    }
                }
            }
        }
    }
}

/// The whole content of a staged file, if at most [`MAX_READ`] bytes.
pub(crate) async fn read_content(
    file: &StagedFile,
    store: Option<&Arc<dyn BlobStore>>,
    path: &str,
) -> Result<Bytes> {
    let size = file.size();
    if size > MAX_READ {
        return Err(VdirError::TooLarge {
            path: path.to_owned(),
            size,
            limit: MAX_READ,
        });
    }
    match &file.content {
        Content::Inline(bytes) => Ok(bytes.clone()),
        Content::Disk { path: disk, .. } => {
            let disk = disk.clone();
            let data =
                tokio::task::spawn_blocking(move || std::fs::read(&disk).map_err(io_error("read", disk)))
                    .await
                    .map_err(|e| VdirError::Task(e.to_string()))??;
            Ok(Bytes::from(data))
        }
        Content::Stored(digest) => {
            let store = store.expect("stored content comes with its store");
            store
                .get_bytes(digest)
                .await
                .map_err(store_error(path))?
                .ok_or_else(|| {
                    VdirError::Tree(Box::new(casket_tree::TreeError::MissingFile {
                        path: path.to_owned(),
                        digest: *digest,
                    }))
                })
        }
    }
}

impl Snapshot {
    /// The paths of the snapshot, in import order.
    pub fn list(&mut self) -> Result<Vec<String>> {
        list(&mut self.stage, self.root)
    }

    /// How this tree and `other` differ. Stored subtrees with equal digests are skipped
    /// without being read; files on disk compare by their `stat`.
    pub fn diff(&mut self, other: &mut Snapshot) -> Result<TreeDiff> {
        let mut diff = TreeDiff::default();
        diff_dirs(
            (&mut self.stage, self.root),
            (&mut other.stage, other.root),
            &mut Vec::new(),
            &mut diff,
        )?;
        Ok(diff)
    }

    /// Writes the tree as a tar stream (directories 0755, files 0644 or 0755, the
    /// deterministic mtime unless one is recorded). FIFOs, sockets and devices are refused.
    pub async fn export_tar(mut self, out: Box<dyn Write + Send>) -> Result<()> {
        let entries = self.stage.walk_entries(self.root)?;
        let handle = tokio::runtime::Handle::current();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || write_tar(entries, store, handle, out))
            .await
            .map_err(|e| VdirError::Task(e.to_string()))?
    }
}

fn diff_dirs(
    (a, a_id): (&mut Stage, NodeId),
    (b, b_id): (&mut Stage, NodeId),
    prefix: &mut RelPath,
    diff: &mut TreeDiff,
) -> Result<()> {
    if let (Some(x), Some(y)) = (a.known_digest(a_id), b.known_digest(b_id))
        && x == y
    {
        return Ok(());
    }
    let left: BTreeMap<EntryName, Slot> = a.entries(a_id)?.clone();
    let right: BTreeMap<EntryName, Slot> = b.entries(b_id)?.clone();
    let names: BTreeSet<&EntryName> = left.keys().chain(right.keys()).collect();
    for name in names {
        prefix.push(name.clone());
        match (left.get(name), right.get(name)) {
            (Some(x), None) => {
                diff.removed.push(display(prefix));
                below(a, x, prefix, &mut diff.removed)?;
            }
            (None, Some(y)) => {
                diff.added.push(display(prefix));
                below(b, y, prefix, &mut diff.added)?;
            }
            (Some(Slot::Dir(x)), Some(Slot::Dir(y))) => diff_dirs((a, *x), (b, *y), prefix, diff)?,
            (Some(x), Some(y)) => {
                if fingerprint(x) != fingerprint(y) {
                    diff.changed.push(display(prefix));
                }
                below(a, x, prefix, &mut diff.removed)?;
                below(b, y, prefix, &mut diff.added)?;
            }
            (None, None) => unreachable!("the name came from one side"),
        }
        prefix.pop();
    }
    Ok(())
}

/// The paths below `slot` (nothing unless it is a directory), under `prefix`.
fn below(stage: &mut Stage, slot: &Slot, prefix: &RelPath, out: &mut Vec<String>) -> Result<()> {
    if let Slot::Dir(id) = slot {
        for (path, _) in stage.walk_entries(*id)? {
            let mut full = prefix.clone();
            full.extend(path);
            out.push(display(&full));
        }
    }
    Ok(())
}

fn write_tar(
    entries: Vec<(RelPath, Slot)>,
    store: Option<Arc<dyn BlobStore>>,
    handle: tokio::runtime::Handle,
    out: Box<dyn Write + Send>,
) -> Result<()> {
    let tar_error = |path: &str| {
        let path = path.to_owned();
        move |e: io::Error| VdirError::Io {
            op: "write tar entry",
            path: path.into(),
            source: e,
        }
    };
    let mut builder = tar::Builder::new(out);
    for (path, slot) in entries {
        let name = display(&path);
        let mut header = tar::Header::new_gnu();
        header.set_mtime(DETERMINISTIC_MTIME as u64);
        header.set_uid(0);
        header.set_gid(0);
        match slot {
            Slot::Dir(_) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{name}/"), io::empty())
                    .map_err(tar_error(&name))?;
            }
            Slot::Symlink(link) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, &name, link.target())
                    .map_err(tar_error(&name))?;
            }
            Slot::File(file) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if file.executable { 0o755 } else { 0o644 });
                header.set_size(file.size());
                if let Some(mtime) = file.properties.mtime {
                    header.set_mtime(mtime.seconds.max(0) as u64);
                }
                let reader = open_content(&file, store.as_ref(), &handle, &name)?;
                builder
                    .append_data(&mut header, &name, reader)
                    .map_err(tar_error(&name))?;
            }
            Slot::Special(kind) => {
                return Err(VdirError::Unsupported {
                    path: name.into(),
                    reason: format!("a tar export cannot hold a {kind:?}"),
                });
            }
        }
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(tar_error("."))
}

/// A blocking reader of a staged file's bytes, streamed (never whole in memory).
fn open_content(
    file: &StagedFile,
    store: Option<&Arc<dyn BlobStore>>,
    handle: &tokio::runtime::Handle,
    path: &str,
) -> Result<Box<dyn Read + Send>> {
    match &file.content {
        Content::Inline(bytes) => Ok(Box::new(io::Cursor::new(bytes.clone()))),
        Content::Disk { path: disk, .. } => Ok(Box::new(
            std::fs::File::open(disk).map_err(io_error("open", disk))?,
        )),
        Content::Stored(digest) => {
            let store = store.expect("stored content comes with its store").clone();
            let stream = handle
                .block_on(store.read(digest, ReadRange::ALL))
                .map_err(store_error(path))?
                .ok_or_else(|| {
                    VdirError::Tree(Box::new(casket_tree::TreeError::MissingFile {
                        path: path.to_owned(),
                        digest: *digest,
                    }))
                })?;
            let reader = tokio_util::io::StreamReader::new(stream.map_err(io::Error::other));
            Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
                reader,
                handle.clone(),
            )))
        }
    }
}
