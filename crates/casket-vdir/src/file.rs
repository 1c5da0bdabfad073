//! The file-backed directory: a directory on disk, edited by planning on a staged model and
//! then writing the plan through directory file descriptors that never follow a symlink.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, EntryName, NodeProperties};
use casket_store::{BlobStore, ReadRange};
use casket_tree::{CheckoutMode, CheckoutOptions};
use futures::StreamExt;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{Result, VdirError, io_error, store_error};
use crate::import::{ImportFilter, ImportOptions, ImportReport};
use crate::path::{RelPath, display};
use crate::snapshot::{self, Baseline, DETERMINISTIC_MTIME, Snapshot, Stat};
use crate::stage::{Content, NodeId, Op, ROOT, Stage, StagedFile};
use crate::{Directory, edit};

/// A directory on disk. Every operation reads the disk afresh, so changes made by others are
/// always seen. An edit is planned in full before anything is written; an error while
/// writing (a full disk, a concurrent change) can still leave it half done.
#[derive(Clone)]
pub struct FileDirectory {
    root: PathBuf,
    baseline: Baseline,
}

impl fmt::Debug for FileDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDirectory").field("root", &self.root).finish()
    }
}

impl FileDirectory {
    /// The existing directory `root` (not a symlink).
    pub fn open(root: impl Into<PathBuf>) -> Result<FileDirectory> {
        let root = root.into();
        let meta = std::fs::symlink_metadata(&root).map_err(io_error("open", &root))?;
        if !meta.is_dir() {
            return Err(VdirError::NotADirectory {
                path: root.display().to_string(),
            });
        }
        Ok(FileDirectory {
            root,
            baseline: Baseline::default(),
        })
    }

    /// The directory `root`, created (with its parents) if missing.
    pub fn create(root: impl Into<PathBuf>) -> Result<FileDirectory> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_error("create directory", &root))?;
        FileDirectory::open(root)
    }

    /// Where the directory is.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn stage(&self) -> Stage {
        Stage::disk(self.root.clone(), DigestFunction::Sha256)
    }

    fn read<T>(&self, f: impl FnOnce(&mut Stage, NodeId) -> Result<T>) -> Result<T> {
        f(&mut self.stage(), ROOT)
    }

    /// Plans `f` on a model of the disk, then writes the plan.
    async fn edit<T>(
        &self,
        store: Option<&Arc<dyn BlobStore>>,
        link: bool,
        f: impl FnOnce(&mut Stage, NodeId) -> Result<T>,
    ) -> Result<T> {
        let mut stage = self.stage();
        let out = f(&mut stage, ROOT)?;
        let writer = Writer {
            root: &self.root,
            root_fd: open_dir(rustix::fs::CWD, &self.root)?,
            store,
            link,
        };
        for op in stage.take_ops() {
            writer.apply(op).await?;
        }
        Ok(out)
    }
}

/// Writes planned ops below one root.
struct Writer<'a> {
    root: &'a Path,
    root_fd: OwnedFd,
    store: Option<&'a Arc<dyn BlobStore>>,
    link: bool,
}

fn errno(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> VdirError {
    let path = path.into();
    move |e| VdirError::Io {
        op,
        path,
        source: io::Error::from(e),
    }
}

fn open_dir(at: impl AsFd, path: impl rustix::path::Arg + Copy + fmt::Debug) -> Result<OwnedFd> {
    rustix::fs::openat(
        at,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open directory", format!("{path:?}")))
}

impl Writer<'_> {
    fn full(&self, path: &[EntryName]) -> PathBuf {
        path.iter().fold(self.root.to_owned(), |p, n| p.join(n.as_str()))
    }

    /// The directory holding `path` and the last name, every component opened without
    /// following symlinks.
    fn parent<'p>(&self, path: &'p [EntryName]) -> Result<(OwnedFd, &'p str)> {
        let (name, parents) = path.split_last().expect("ops never name the root");
        let mut fd = open_dir(&self.root_fd, ".")?;
        for (i, component) in parents.iter().enumerate() {
            fd = rustix::fs::openat(
                &fd,
                component.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno("open directory", self.full(&path[..=i])))?;
        }
        Ok((fd, name.as_str()))
    }

    async fn apply(&self, op: Op) -> Result<()> {
        match op {
            Op::Mkdir(path) => {
                let (dir, name) = self.parent(&path)?;
                rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))
                    .map_err(errno("create directory", self.full(&path)))
            }
            Op::Remove(path) => {
                let (dir, name) = self.parent(&path)?;
                let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno("stat", self.full(&path)))?;
                let flags =
                    if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::Directory {
                        AtFlags::REMOVEDIR
                    } else {
                        AtFlags::empty()
                    };
                rustix::fs::unlinkat(&dir, name, flags).map_err(errno("remove", self.full(&path)))
            }
            Op::RemoveTree(path) => {
                let (dir, name) = self.parent(&path)?;
                remove_tree(&dir, name, &self.full(&path))
            }
            Op::Symlink(path, target) => {
                let (dir, name) = self.parent(&path)?;
                rustix::fs::symlinkat(target.as_str(), &dir, name)
                    .map_err(errno("create symlink", self.full(&path)))
            }
            Op::Rename(from, to) => {
                let (from_dir, from_name) = self.parent(&from)?;
                let (to_dir, to_name) = self.parent(&to)?;
                rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, RenameFlags::NOREPLACE)
                    .map_err(errno("rename", self.full(&from)))
            }
            Op::File(path, file) => self.write_file(&path, &file).await,
            Op::Graft(path, digest) => {
                let store = self.store.expect("stored trees come with their store");
                let options = CheckoutOptions {
                    mode: if self.link {
                        CheckoutMode::Hardlink
                    } else {
                        CheckoutMode::Copy
                    },
                    ..CheckoutOptions::default()
                };
                // The parent is reached through its descriptor (`/proc/self/fd`), so no symlink
                // on the way is followed, as for every other op.
                let (dir, name) = self.parent(&path)?;
                let target = PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()));
                casket_tree::checkout(store, &digest, &target, &options, &()).await?;
                drop(dir);
                Ok(())
            }
        }
    }

    async fn write_file(&self, path: &RelPath, file: &StagedFile) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        let full = self.full(path);
        let mode = if file.executable { 0o755 } else { 0o644 };
        match &file.content {
            Content::Disk { path: source, .. } => {
                if self.link && link_into(source, &dir, name)? {
                    return Ok(());
                }
                let mut from = open_source(source)?;
                let mut to = create(&dir, name, mode, &full)?;
                io::copy(&mut from, &mut to).map_err(io_error("copy into", &full))?;
                Ok(())
            }
            Content::Inline(bytes) => {
                let mut to = create(&dir, name, mode, &full)?;
                to.write_all(bytes).map_err(io_error("write", &full))
            }
            Content::Stored(digest) => {
                let store = self.store.expect("stored files come with their store");
                if let Some(local) = store
                    .local_file(digest, file.executable)
                    .map_err(store_error(display(path)))?
                {
                    if self.link && link_into(&local, &dir, name)? {
                        return Ok(());
                    }
                    let mut from = open_source(&local)?;
                    let mut to = create(&dir, name, mode, &full)?;
                    io::copy(&mut from, &mut to).map_err(io_error("copy into", &full))?;
                    return Ok(());
                }
                let to = create(&dir, name, mode, &full)?;
                stream_into(store.as_ref(), digest, to, &full).await
            }
        }
    }
}

/// Hard-links `source` as `name` in `dir`; false when the file systems differ or refuse.
fn link_into(source: &Path, dir: &OwnedFd, name: &str) -> Result<bool> {
    match rustix::fs::linkat(rustix::fs::CWD, source, dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::XDEV | Errno::PERM | Errno::MLINK) => Ok(false),
        Err(e) => Err(errno("link", source)(e)),
    }
}

fn open_source(path: &Path) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open", path))?;
    Ok(File::from(fd))
}

/// Creates a new file, never following a symlink and never reusing an existing file.
fn create(dir: &OwnedFd, name: &str, mode: u32, full: &Path) -> Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map_err(errno("create", full))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(errno("chmod", full))?;
    Ok(File::from(fd))
}

async fn stream_into(store: &dyn BlobStore, digest: &Digest, mut to: File, full: &Path) -> Result<()> {
    let mut stream = store
        .read(digest, ReadRange::ALL)
        .await
        .map_err(store_error(full.display().to_string()))?
        .ok_or_else(|| {
            VdirError::Tree(Box::new(casket_tree::TreeError::MissingFile {
                path: full.display().to_string(),
                digest: *digest,
            }))
        })?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_error(full.display().to_string()))?;
        to.write_all(&chunk).map_err(io_error("write", full))?;
    }
    Ok(())
}

/// Removes `name` in `dir` and everything below it, never following a symlink.
fn remove_tree(dir: &OwnedFd, name: &str, full: &Path) -> Result<()> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno("stat", full))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno("remove", full));
    }
    let child = open_dir(dir, name)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&child).map_err(errno("read directory", full))? {
        let entry = entry.map_err(errno("read directory", full))?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(entry.file_name().to_owned());
        }
    }
    for entry_name in names {
        let text = entry_name.to_string_lossy().into_owned();
        remove_tree(&child, &text, &full.join(&text))?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno("remove", full))
}

#[async_trait]
impl Directory for FileDirectory {
    async fn descend(&self, path: &str, create: bool) -> Result<Box<dyn Directory>> {
        if create {
            self.edit(None, false, |stage, root| {
                edit::descend(stage, root, path, true).map(drop)
            })
            .await?;
        }
        let mut stage = self.stage();
        let id = edit::descend(&mut stage, ROOT, path, false)?;
        let real = stage
            .path_of(id)
            .iter()
            .fold(self.root.clone(), |p, n| p.join(n.as_str()));
        Ok(Box::new(FileDirectory::open(real)?))
    }

    async fn import_files(
        &self,
        source: &dyn Directory,
        filter: &ImportFilter,
        options: &ImportOptions,
    ) -> Result<ImportReport> {
        let mut snapshot = source.snapshot().await?;
        let mut report = ImportReport::default();
        let entries = edit::select(&mut snapshot, filter, options, &mut report)?;
        let store = snapshot.store.clone();
        self.edit(store.as_ref(), options.link, |stage, root| {
            edit::import(stage, root, &snapshot, entries, &mut report)
        })
        .await?;
        Ok(report)
    }

    async fn list_relative_paths(&self) -> Result<Vec<String>> {
        self.read(snapshot::list)
    }

    async fn stat(&self, path: &str) -> Result<Stat> {
        self.read(|stage, root| snapshot::stat(stage, root, path))
    }

    async fn read_file(&self, path: &str) -> Result<Bytes> {
        let file = self.read(|stage, root| snapshot::file_at(stage, root, path))?;
        snapshot::read_content(&file, None, path).await
    }

    async fn write_file(&self, path: &str, data: Bytes, executable: bool) -> Result<()> {
        let file = StagedFile {
            executable,
            content: Content::Inline(data),
            properties: NodeProperties::default(),
        };
        self.edit(None, false, |stage, root| {
            edit::write_file(stage, root, path, file)
        })
        .await
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.edit(None, false, |stage, root| {
            edit::remove(stage, root, path, recursive)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.edit(None, false, |stage, root| edit::rename(stage, root, from, to))
            .await
    }

    async fn mark_unmodified(&self) -> Result<()> {
        self.read(|stage, root| self.baseline.mark(stage, root))
    }

    async fn list_modified_paths(&self) -> Result<Vec<String>> {
        self.read(|stage, root| self.baseline.modified(stage, root))
    }

    async fn get_size(&self) -> Result<u64> {
        self.read(snapshot::size)
    }

    async fn set_deterministic_mtime(&self) -> Result<()> {
        let paths = self.read(snapshot::list)?;
        let time = Timespec {
            tv_sec: DETERMINISTIC_MTIME,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: time,
            last_modification: time,
        };
        for path in paths.iter().map(|p| self.root.join(p)).chain([self.root.clone()]) {
            let stat = rustix::fs::lstat(&path).map_err(errno("stat", &path))?;
            // A file with other links (a store object, a linked source) is left alone: its
            // time is theirs too, and the store's objects are never modified.
            if rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile
                && stat.st_nlink > 1
            {
                continue;
            }
            rustix::fs::utimensat(rustix::fs::CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno("set mtime", &path))?;
        }
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            stage: self.stage(),
            root: ROOT,
            store: None,
        })
    }

    fn as_directory(&self) -> &dyn Directory {
        self
    }
}
