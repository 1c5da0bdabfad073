//! The staged tree: the in-memory model every operation of both backends runs on.
//!
//! A [`Stage`] is an arena of directory nodes, each loaded on first use from where it lives: a
//! `Directory` message (the CAS backend) or a directory on disk (the file backend). Rules and
//! path resolution are written once, against this model, so the two backends cannot disagree:
//!
//! * the CAS backend keeps its stage as its state, edits a clone and swaps it in on success;
//! * the file backend loads a fresh stage from disk, records every edit as an [`Op`], and
//!   writes the ops to disk only once the whole edit has succeeded (plan, then write).
//!
//! Symlinks are resolved inside the tree only: an absolute target starts at the resolution
//! root, `..` stops at it, and more than [`MAX_LINKS`] links on one path is a loop.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use casket_model::{
    Digest, DigestFunction, Directory, EntryName, FileNode, Node, NodeProperties, SymlinkNode,
};

use crate::error::{Result, VdirError, io_error};
use crate::path::{RelPath, display, target_components};

/// Index of a directory node in a [`Stage`].
pub(crate) type NodeId = usize;

/// Symlinks followed on one path before it counts as a loop (as Linux's `ELOOP`).
pub(crate) const MAX_LINKS: u32 = 40;

/// A file system object REAPI cannot store: found on disk, reported by imports, never copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

/// How a file on disk looked when it was loaded; any change shows as a modification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DiskStamp {
    pub(crate) size: u64,
    pub(crate) inode: u64,
    pub(crate) mtime_ns: i128,
    pub(crate) ctime_ns: i128,
}

/// Where a staged file's bytes are.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    /// A blob in the store.
    Stored(Digest),
    /// A regular file on disk.
    Disk { path: PathBuf, stamp: DiskStamp },
    /// Bytes in memory, written through the API.
    Inline(Bytes),
}

/// A regular file in a stage.
#[derive(Clone, Debug)]
pub(crate) struct StagedFile {
    pub(crate) executable: bool,
    pub(crate) content: Content,
    pub(crate) properties: NodeProperties,
}

impl StagedFile {
    /// The file's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        match &self.content {
            Content::Stored(digest) => digest.size(),
            Content::Disk { stamp, .. } => stamp.size,
            Content::Inline(bytes) => bytes.len() as u64,
        }
    }
}

/// One directory entry of a stage.
#[derive(Clone, Debug)]
pub(crate) enum Slot {
    File(StagedFile),
    Symlink(SymlinkNode),
    Dir(NodeId),
    Special(SpecialKind),
}

/// Where an unloaded directory's entries come from.
#[derive(Clone, Debug)]
enum Origin {
    Stored(Digest),
    Disk(PathBuf),
}

#[derive(Clone, Debug)]
struct Loaded {
    entries: BTreeMap<EntryName, Slot>,
    properties: NodeProperties,
    /// The digest of this directory, while it is known to be current.
    digest: Option<Digest>,
}

#[derive(Clone, Debug)]
enum DirState {
    Unloaded(Origin),
    Loaded(Loaded),
}

#[derive(Clone, Debug)]
struct DirNode {
    parent: Option<(NodeId, EntryName)>,
    state: DirState,
}

/// One change to a tree on disk, recorded by a stage and replayed by the file backend. Paths
/// are real (every component a directory) and relative to the stage's root.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Mkdir(RelPath),
    /// Removes a file, symlink, special file or empty directory.
    Remove(RelPath),
    RemoveTree(RelPath),
    File(RelPath, StagedFile),
    Symlink(RelPath, String),
    /// Materialises a whole stored tree at a path that does not exist.
    Graft(RelPath, Digest),
    Rename(RelPath, RelPath),
}

/// A tree being read or edited. See the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct Stage {
    nodes: Vec<DirNode>,
    /// Every `Directory` message a stored node may need, keyed by digest.
    directories: HashMap<Digest, Arc<Directory>>,
    function: DigestFunction,
    ops: Option<Vec<Op>>,
}

/// The root node of every stage.
pub(crate) const ROOT: NodeId = 0;

impl Stage {
    /// A stage over the stored tree `root`, whose directories are all in `directories`.
    pub(crate) fn stored(root: Digest, directories: HashMap<Digest, Arc<Directory>>) -> Stage {
        Stage {
            function: root.function(),
            nodes: vec![DirNode {
                parent: None,
                state: DirState::Unloaded(Origin::Stored(root)),
            }],
            directories,
            ops: None,
        }
    }

    /// A stage over the directory `root` on disk that records its edits as [`Op`]s.
    pub(crate) fn disk(root: PathBuf, function: DigestFunction) -> Stage {
        Stage {
            function,
            nodes: vec![DirNode {
                parent: None,
                state: DirState::Unloaded(Origin::Disk(root)),
            }],
            directories: HashMap::new(),
            ops: Some(Vec::new()),
        }
    }

    /// The digest function of stored content.
    pub(crate) fn function(&self) -> DigestFunction {
        self.function
    }

    /// The edits recorded so far (file backend).
    pub(crate) fn take_ops(&mut self) -> Vec<Op> {
        self.ops.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Makes the stored directories of `other` loadable here, so its subtrees can be grafted.
    pub(crate) fn adopt_directories(&mut self, other: &Stage) {
        for (digest, directory) in &other.directories {
            self.directories
                .entry(*digest)
                .or_insert_with(|| directory.clone());
        }
    }

    fn load(&mut self, id: NodeId) -> Result<()> {
        let DirState::Unloaded(origin) = &self.nodes[id].state else {
            return Ok(());
        };
        let loaded = match origin.clone() {
            Origin::Stored(digest) => self.load_stored(id, digest)?,
            Origin::Disk(path) => self.load_disk(id, path)?,
        };
        self.nodes[id].state = DirState::Loaded(loaded);
        Ok(())
    }

    fn load_stored(&mut self, id: NodeId, digest: Digest) -> Result<Loaded> {
        let directory = if digest.is_empty_blob() {
            Arc::new(Directory::new())
        } else {
            self.directories.get(&digest).cloned().ok_or_else(|| {
                VdirError::Tree(Box::new(casket_tree::TreeError::MissingDirectory {
                    path: display(&self.path_of(id)),
                    digest,
                }))
            })?
        };
        let mut entries = BTreeMap::new();
        for (name, node) in directory.entries() {
            let slot = match node {
                Node::File(f) => Slot::File(StagedFile {
                    executable: f.executable,
                    content: Content::Stored(f.digest),
                    properties: f.properties.clone(),
                }),
                Node::Symlink(s) => Slot::Symlink(s.clone()),
                Node::Directory(child) => Slot::Dir(self.push(id, name, Origin::Stored(*child))),
            };
            entries.insert(name.clone(), slot);
        }
        Ok(Loaded {
            entries,
            properties: directory.properties().clone(),
            digest: Some(digest),
        })
    }

    fn load_disk(&mut self, id: NodeId, dir: PathBuf) -> Result<Loaded> {
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_error("read directory", &dir))? {
            let entry = entry.map_err(io_error("read directory", &dir))?;
            let path = entry.path();
            let unsupported = |reason: String| VdirError::Unsupported {
                path: path.clone(),
                reason,
            };
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| unsupported("the name is not UTF-8".into()))
                .and_then(|n| EntryName::new(n).map_err(|e| unsupported(e.to_string())))?;
            let meta = fs::symlink_metadata(&path).map_err(io_error("stat", &path))?;
            let kind = meta.file_type();
            let slot = if kind.is_dir() {
                Slot::Dir(self.push(id, &name, Origin::Disk(path)))
            } else if kind.is_file() {
                Slot::File(StagedFile {
                    executable: meta.mode() & 0o100 != 0,
                    content: Content::Disk {
                        stamp: DiskStamp {
                            size: meta.len(),
                            inode: meta.ino(),
                            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000
                                + i128::from(meta.mtime_nsec()),
                            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000
                                + i128::from(meta.ctime_nsec()),
                        },
                        path,
                    },
                    properties: NodeProperties::default(),
                })
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(io_error("read link", &path))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| unsupported("the symlink target is not UTF-8".into()))?;
                Slot::Symlink(
                    SymlinkNode::new(target)
                        .ok_or_else(|| unsupported("the symlink target is empty".into()))?,
                )
            } else if kind.is_fifo() {
                Slot::Special(SpecialKind::Fifo)
            } else if kind.is_socket() {
                Slot::Special(SpecialKind::Socket)
            } else if kind.is_char_device() {
                Slot::Special(SpecialKind::CharDevice)
            } else {
                Slot::Special(SpecialKind::BlockDevice)
            };
            entries.insert(name, slot);
        }
        Ok(Loaded {
            entries,
            properties: NodeProperties::default(),
            digest: None,
        })
    }

    fn push(&mut self, parent: NodeId, name: &EntryName, origin: Origin) -> NodeId {
        self.nodes.push(DirNode {
            parent: Some((parent, name.clone())),
            state: DirState::Unloaded(origin),
        });
        self.nodes.len() - 1
    }

    /// The entries of directory `id`, loading it if needed.
    pub(crate) fn entries(&mut self, id: NodeId) -> Result<&BTreeMap<EntryName, Slot>> {
        Ok(&self.loaded(id)?.entries)
    }

    fn loaded(&mut self, id: NodeId) -> Result<&Loaded> {
        self.load(id)?;
        match &self.nodes[id].state {
            DirState::Loaded(loaded) => Ok(loaded),
            DirState::Unloaded(_) => unreachable!("loaded above"),
        }
    }

    /// The entry `name` of directory `id`.
    pub(crate) fn lookup(&mut self, id: NodeId, name: &str) -> Result<Option<Slot>> {
        Ok(self.entries(id)?.get(name).cloned())
    }

    /// Whether directory `id` has no entries.
    pub(crate) fn is_empty_dir(&mut self, id: NodeId) -> Result<bool> {
        Ok(self.entries(id)?.is_empty())
    }

    /// The loaded state of `id`, marked changed: its digest and its ancestors' are forgotten.
    fn changed(&mut self, id: NodeId) -> Result<&mut Loaded> {
        self.load(id)?;
        let mut cursor = Some(id);
        while let Some(node) = cursor {
            if let DirState::Loaded(loaded) = &mut self.nodes[node].state {
                loaded.digest = None;
            }
            cursor = self.nodes[node].parent.as_ref().map(|(p, _)| *p);
        }
        match &mut self.nodes[id].state {
            DirState::Loaded(loaded) => Ok(loaded),
            DirState::Unloaded(_) => unreachable!("loaded above"),
        }
    }

    /// The real path of directory `id` from the stage root.
    pub(crate) fn path_of(&self, id: NodeId) -> RelPath {
        let mut out = Vec::new();
        let mut cursor = id;
        while let Some((parent, name)) = &self.nodes[cursor].parent {
            out.push(name.clone());
            cursor = *parent;
        }
        out.reverse();
        out
    }

    /// The path of entry `name` in `dir`, relative to `root`, for messages.
    pub(crate) fn describe(&self, root: NodeId, dir: NodeId, name: Option<&str>) -> String {
        let base = self.path_of(root).len();
        let mut path: Vec<String> = self.path_of(dir)[base..].iter().map(|n| n.to_string()).collect();
        path.extend(name.map(str::to_owned));
        if path.is_empty() {
            ".".to_owned()
        } else {
            path.join("/")
        }
    }

    /// Records the op `op` builds, only when this stage records ops (the CAS backend does not,
    /// and so never pays for the paths).
    fn record(&mut self, op: impl FnOnce(&Stage) -> Op) {
        if self.ops.is_some() {
            let op = op(self);
            if let Some(ops) = &mut self.ops {
                ops.push(op);
            }
        }
    }

    fn entry_path(&self, dir: NodeId, name: &EntryName) -> RelPath {
        let mut path = self.path_of(dir);
        path.push(name.clone());
        path
    }

    /// Follows `components` (`None` for `..`) from `start` to a directory, resolving symlinks
    /// inside `root`. Missing directories are created when `create` is set, including the
    /// targets of dangling symlinks. A file on the way is [`VdirError::NotADirectory`].
    pub(crate) fn walk(
        &mut self,
        root: NodeId,
        start: NodeId,
        components: &[Option<&str>],
        create: bool,
        links: &mut u32,
    ) -> Result<NodeId> {
        let mut cur = start;
        for component in components {
            let Some(name) = component else {
                if cur != root {
                    cur = self.nodes[cur].parent.as_ref().map_or(cur, |(p, _)| *p);
                }
                continue;
            };
            cur = match self.lookup(cur, name)? {
                Some(Slot::Dir(id)) => id,
                None if create => {
                    let name = EntryName::new(*name).map_err(|e| VdirError::InvalidPath {
                        path: self.describe(root, cur, Some(name)),
                        reason: e.reason(),
                    })?;
                    self.mkdir(cur, name)?
                }
                None => {
                    return Err(VdirError::NotFound {
                        path: self.describe(root, cur, Some(name)),
                    });
                }
                Some(Slot::Symlink(link)) => {
                    if *links == 0 {
                        return Err(VdirError::SymlinkLoop {
                            path: self.describe(root, cur, Some(name)),
                        });
                    }
                    *links -= 1;
                    let (absolute, target) = target_components(link.target());
                    let base = if absolute { root } else { cur };
                    self.walk(root, base, &target, create, links)?
                }
                Some(Slot::File(_) | Slot::Special(_)) => {
                    return Err(VdirError::NotADirectory {
                        path: self.describe(root, cur, Some(name)),
                    });
                }
            };
        }
        Ok(cur)
    }

    /// Creates the empty directory `name` in `dir`, which must not have that entry.
    pub(crate) fn mkdir(&mut self, dir: NodeId, name: EntryName) -> Result<NodeId> {
        let id = self.nodes.len();
        self.nodes.push(DirNode {
            parent: Some((dir, name.clone())),
            state: DirState::Loaded(Loaded {
                entries: BTreeMap::new(),
                properties: NodeProperties::default(),
                digest: None,
            }),
        });
        self.changed(dir)?.entries.insert(name.clone(), Slot::Dir(id));
        self.record(|stage| Op::Mkdir(stage.entry_path(dir, &name)));
        Ok(id)
    }

    /// Places the stored tree `digest` at `name` in `dir`, which must not have that entry.
    pub(crate) fn graft(&mut self, dir: NodeId, name: EntryName, digest: Digest) -> Result<NodeId> {
        let id = self.push(dir, &name, Origin::Stored(digest));
        self.changed(dir)?.entries.insert(name.clone(), Slot::Dir(id));
        self.record(|stage| Op::Graft(stage.entry_path(dir, &name), digest));
        Ok(id)
    }

    /// Places a file or symlink at `name` in `dir`, which must not have that entry.
    pub(crate) fn put(&mut self, dir: NodeId, name: EntryName, slot: Slot) -> Result<()> {
        match &slot {
            Slot::File(file) => self.record(|stage| Op::File(stage.entry_path(dir, &name), file.clone())),
            Slot::Symlink(link) => {
                self.record(|stage| Op::Symlink(stage.entry_path(dir, &name), link.target().to_owned()))
            }
            Slot::Dir(_) | Slot::Special(_) => unreachable!("put takes files and symlinks"),
        }
        self.changed(dir)?.entries.insert(name, slot);
        Ok(())
    }

    /// Removes entry `name` of `dir`, with everything below it.
    pub(crate) fn remove(&mut self, dir: NodeId, name: &EntryName) -> Result<()> {
        if self.ops.is_some() {
            let whole = match self.lookup(dir, name.as_str())? {
                Some(Slot::Dir(id)) => !self.is_empty_dir(id)?,
                _ => false,
            };
            self.record(|stage| {
                let path = stage.entry_path(dir, name);
                if whole {
                    Op::RemoveTree(path)
                } else {
                    Op::Remove(path)
                }
            });
        }
        self.changed(dir)?.entries.remove(name.as_str());
        Ok(())
    }

    /// Moves entry `name` of `from` to `to_name` in `to`, which must not have that entry.
    pub(crate) fn rename(
        &mut self,
        from: NodeId,
        name: &EntryName,
        to: NodeId,
        to_name: EntryName,
    ) -> Result<()> {
        self.record(|stage| Op::Rename(stage.entry_path(from, name), stage.entry_path(to, &to_name)));
        let slot = self
            .changed(from)?
            .entries
            .remove(name.as_str())
            .expect("the caller checked the entry exists");
        if let Slot::Dir(id) = slot {
            self.nodes[id].parent = Some((to, to_name.clone()));
        }
        self.changed(to)?.entries.insert(to_name, slot);
        Ok(())
    }

    /// Whether `ancestor` is `id` or one of its parents.
    pub(crate) fn contains(&self, ancestor: NodeId, id: NodeId) -> bool {
        let mut cursor = Some(id);
        while let Some(node) = cursor {
            if node == ancestor {
                return true;
            }
            cursor = self.nodes[node].parent.as_ref().map(|(p, _)| *p);
        }
        false
    }

    /// Drops recorded mtimes from every file, symlink and directory below `id`.
    pub(crate) fn clear_mtimes(&mut self, id: NodeId) -> Result<()> {
        let mut stack = vec![id];
        while let Some(dir) = stack.pop() {
            let loaded = self.loaded(dir)?;
            stack.extend(loaded.entries.values().filter_map(|slot| match slot {
                Slot::Dir(child) => Some(*child),
                _ => None,
            }));
            let dated = loaded.properties.mtime.is_some()
                || loaded.entries.values().any(|slot| match slot {
                    Slot::File(f) => f.properties.mtime.is_some(),
                    Slot::Symlink(s) => s.properties.mtime.is_some(),
                    Slot::Dir(_) | Slot::Special(_) => false,
                });
            if dated {
                let loaded = self.changed(dir)?;
                loaded.properties.mtime = None;
                for slot in loaded.entries.values_mut() {
                    match slot {
                        Slot::File(f) => f.properties.mtime = None,
                        Slot::Symlink(s) => s.properties.mtime = None,
                        Slot::Dir(_) | Slot::Special(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Every entry below `id` with its path relative to `id`, depth first: a directory right
    /// before its contents, siblings in name-byte order.
    pub(crate) fn walk_entries(&mut self, id: NodeId) -> Result<Vec<(RelPath, Slot)>> {
        let mut out = Vec::new();
        self.walk_into(id, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    fn walk_into(&mut self, id: NodeId, prefix: &mut RelPath, out: &mut Vec<(RelPath, Slot)>) -> Result<()> {
        let entries: Vec<(EntryName, Slot)> = self
            .entries(id)?
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, slot) in entries {
            prefix.push(name);
            out.push((prefix.clone(), slot.clone()));
            if let Slot::Dir(child) = slot {
                self.walk_into(child, prefix, out)?;
            }
            prefix.pop();
        }
        Ok(())
    }

    /// The stored digest of directory `id` if it is current without computing anything.
    pub(crate) fn known_digest(&self, id: NodeId) -> Option<Digest> {
        match &self.nodes[id].state {
            DirState::Unloaded(Origin::Stored(digest)) => Some(*digest),
            DirState::Loaded(loaded) => loaded.digest,
            DirState::Unloaded(Origin::Disk(_)) => None,
        }
    }

    /// The digest of directory `id`, computed bottom-up where it is not current. Encodings of
    /// directories not known to be stored are appended to `new` (children before parents).
    /// Every file must be [`Content::Stored`].
    pub(crate) fn digest(&mut self, id: NodeId, new: &mut Vec<(Digest, Bytes)>) -> Result<Digest> {
        if let Some(digest) = self.known_digest(id) {
            return Ok(digest);
        }
        let entries: Vec<(EntryName, Slot)> = self
            .entries(id)?
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let mut directory = Directory::new();
        for (name, slot) in entries {
            let node = match slot {
                Slot::Dir(child) => Node::Directory(self.digest(child, new)?),
                Slot::Symlink(link) => Node::Symlink(link),
                Slot::File(StagedFile {
                    executable,
                    content: Content::Stored(digest),
                    properties,
                }) => Node::File(FileNode {
                    digest,
                    executable,
                    properties,
                }),
                Slot::File(_) | Slot::Special(_) => {
                    unreachable!("a stored tree holds only stored files")
                }
            };
            directory.insert(name, node);
        }
        let DirState::Loaded(loaded) = &mut self.nodes[id].state else {
            unreachable!("loaded above")
        };
        directory.set_properties(loaded.properties.clone());
        let bytes = Bytes::from(directory.encode());
        let digest = Digest::of(self.function, &bytes);
        loaded.digest = Some(digest);
        self.directories.insert(digest, Arc::new(directory));
        new.push((digest, bytes));
        Ok(digest)
    }
}
