//! Checkout: materialise a tree from a store into a directory.
//!
//! Safety rules, in order:
//! 1. the whole tree is fetched and validated first (every `Directory` decoded, every file's
//!    content present), so an invalid tree is refused before anything is written;
//! 2. the target must be an empty directory or not exist, and must not be a symlink;
//! 3. every write goes through a directory file descriptor opened with `O_NOFOLLOW`, names are
//!    single validated components, and files are created with `O_EXCL`, so nothing is written
//!    outside the target and no symlink is ever followed while writing;
//! 4. in hardlink mode the store's objects are linked, never modified: executables link the
//!    store's read-only executable variant (`0555`), and files with recorded properties (mode,
//!    mtime) are copied, since those live in the inode.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use casket_model::{Digest, FileNode, Node, Timestamp};
use casket_store::{BlobStore, ReadRange};
use futures::{StreamExt, TryStreamExt};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::Progress;
use crate::error::{Result, TreeError, blocking, io_error, join, store_error};
use crate::tree::Tree;

/// How files are materialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckoutMode {
    /// Hard-link the store's read-only objects where possible (fast, no extra space).
    Hardlink,
    /// Copy every file (writable, independent of the store).
    Copy,
}

/// How to check out.
#[derive(Clone, Debug)]
pub struct CheckoutOptions {
    /// Link or copy.
    pub mode: CheckoutMode,
    /// Directories materialised at once.
    pub concurrency: usize,
    /// The mtime of copied files that have none recorded (BuildStream stages every file at
    /// its fixed 2011-11-11 11:11:11 UTC, for reproducible builds); `None` leaves them new.
    pub mtime: Option<Timestamp>,
}

impl Default for CheckoutOptions {
    fn default() -> Self {
        CheckoutOptions {
            mode: CheckoutMode::Hardlink,
            concurrency: crate::default_concurrency(),
            mtime: None,
        }
    }
}

/// What a checkout wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckedOut {
    /// Files hard-linked from the store.
    pub linked: u64,
    /// Files copied.
    pub copied: u64,
    /// Directories created below the target.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Total size of the files.
    pub file_bytes: u64,
}

/// Checks out the tree `root` from `store` into `dest`.
pub async fn checkout(
    store: &Arc<dyn BlobStore>,
    root: &Digest,
    dest: &Path,
    options: &CheckoutOptions,
    progress: &dyn Progress,
) -> Result<CheckedOut> {
    let tree = Arc::new(Tree::load(store.as_ref(), root, options.concurrency).await?);
    if let Some((path, digest)) = tree.first_missing_file(store.as_ref()).await? {
        // A stored blob of another size is worth a precise message.
        if let Err(e) = store.read(&digest, ReadRange::ALL).await {
            return Err(store_error(path)(e));
        }
        return Err(TreeError::MissingFile { path, digest });
    }
    let files: Vec<(String, &FileNode)> = tree.files().collect();
    progress.start(
        files.len() as u64,
        files.iter().map(|(_, f)| f.digest.size()).sum(),
    );

    let root_fd = {
        let dest = dest.to_owned();
        blocking(move || open_target(&dest)).await?
    };
    let (directories, mut report) = {
        let (tree, root_fd, dest) = (Arc::clone(&tree), root_fd.try_clone(), dest.to_owned());
        let root_fd = root_fd.map_err(io_error("dup", &dest))?;
        blocking(move || create_directories(&tree, &root_fd, &dest)).await?
    };

    let runtime = tokio::runtime::Handle::current();
    let counts: Vec<CheckedOut> = futures::stream::iter(directories.clone())
        .map(|(path, digest)| {
            let job = DirectoryJob {
                tree: Arc::clone(&tree),
                digest,
                path,
                dest: dest.to_owned(),
                root_fd: root_fd.try_clone(),
                mode: options.mode,
                mtime: options.mtime,
                runtime: runtime.clone(),
            };
            let store = Arc::clone(store);
            async move {
                let done = blocking(move || job.run(store.as_ref())).await?;
                progress.advance(done.linked + done.copied, done.file_bytes);
                Ok::<_, TreeError>(done)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    for c in counts {
        report.linked += c.linked;
        report.copied += c.copied;
        report.symlinks += c.symlinks;
        report.file_bytes += c.file_bytes;
    }

    let (dest, mtime) = (dest.to_owned(), options.mtime);
    blocking(move || apply_directory_properties(&tree, &directories, mtime, &root_fd, &dest)).await?;
    Ok(report)
}

/// Creates or opens the target: absent (created), or an empty real directory.
fn open_target(dest: &Path) -> Result<OwnedFd> {
    let refuse = |reason| TreeError::Target {
        path: dest.to_owned(),
        reason,
    };
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(refuse("is a symlink")),
        Ok(meta) if !meta.is_dir() => return Err(refuse("is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dest).map_err(io_error("list", dest))?;
            if entries.next().is_some() {
                return Err(refuse("is not empty"));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(dest).map_err(io_error("create", dest))?;
        }
        Err(e) => return Err(io_error("stat", dest)(e)),
    }
    rustix::fs::open(dest, dir_flags(), Mode::empty()).map_err(|e| io_error("open", dest)(e.into()))
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the directory at tree path `path` below `root`, refusing symlinks at every step.
fn open_beneath(root: &OwnedFd, path: &str, dest: &Path) -> Result<OwnedFd> {
    let mut fd = root.try_clone().map_err(io_error("dup", dest))?;
    if path == "." {
        return Ok(fd);
    }
    for component in path.split('/') {
        fd = rustix::fs::openat(&fd, component, dir_flags(), Mode::empty())
            .map_err(|e| io_error("open", dest.join(path))(e.into()))?;
    }
    Ok(fd)
}

/// Creates every directory (pre-order), returning each with its tree path, the root first.
fn create_directories(
    tree: &Tree,
    root: &OwnedFd,
    dest: &Path,
) -> Result<(Vec<(String, Digest)>, CheckedOut)> {
    let mut created = vec![(".".to_owned(), *tree.root())];
    // Open descriptors along the current path only, so depth bounds them, not width.
    let mut open: Vec<(String, OwnedFd)> =
        vec![(".".to_owned(), root.try_clone().map_err(io_error("dup", dest))?)];
    for (path, node) in tree.walk() {
        let Node::Directory(digest) = node else { continue };
        let (parent, name) = path.rsplit_once('/').unwrap_or((".", &path));
        while open.last().is_some_and(|(p, _)| p != parent) {
            open.pop();
        }
        let (_, parent_fd) = open.last().expect("the root is never popped");
        let target = dest.join(&path);
        rustix::fs::mkdirat(parent_fd, name, Mode::from_raw_mode(0o755))
            .map_err(|e| io_error("create directory", &target)(e.into()))?;
        let fd = rustix::fs::openat(parent_fd, name, dir_flags(), Mode::empty())
            .map_err(|e| io_error("open", &target)(e.into()))?;
        open.push((path.clone(), fd));
        created.push((path, *digest));
    }
    let report = CheckedOut {
        directories: created.len() as u64 - 1,
        ..Default::default()
    };
    Ok((created, report))
}

/// Files and symlinks of one directory, materialised on a blocking thread.
struct DirectoryJob {
    tree: Arc<Tree>,
    digest: Digest,
    path: String,
    dest: PathBuf,
    root_fd: io::Result<OwnedFd>,
    mode: CheckoutMode,
    mtime: Option<Timestamp>,
    runtime: tokio::runtime::Handle,
}

impl DirectoryJob {
    fn run(self, store: &dyn BlobStore) -> Result<CheckedOut> {
        let root_fd = self.root_fd.map_err(io_error("dup", &self.dest))?;
        let dir = open_beneath(&root_fd, &self.path, &self.dest)?;
        let mut done = CheckedOut::default();
        let directory = self.tree.directory(&self.digest).expect("loaded");
        for (name, node) in directory.entries() {
            let target = self.dest.join(join(&self.path, name.as_str()));
            match node {
                Node::File(file) => {
                    let linkable = self.mode == CheckoutMode::Hardlink
                        && !file.digest.is_empty_blob()
                        && file.properties.is_empty();
                    let source = match linkable {
                        true => store
                            .local_file(&file.digest, file.executable)
                            .map_err(store_error(target.display().to_string()))?,
                        false => None,
                    };
                    let linked = match source {
                        Some(source) => try_link(&source, &dir, name.as_str(), &target)?,
                        None => false,
                    };
                    if linked {
                        done.linked += 1;
                    } else {
                        copy_file(
                            store,
                            &self.runtime,
                            file,
                            self.mtime,
                            &dir,
                            name.as_str(),
                            &target,
                        )?;
                        done.copied += 1;
                    }
                    done.file_bytes += file.digest.size();
                }
                Node::Symlink(link) => {
                    rustix::fs::symlinkat(link.target(), &dir, name.as_str())
                        .map_err(|e| io_error("create symlink", &target)(e.into()))?;
                    done.symlinks += 1;
                }
                Node::Directory(_) => {}
            }
        }
        Ok(done)
    }
}

/// Hard-links `source` as `name` in `dir`; `Ok(false)` when the file system will not (too many
/// links, another device), so the caller copies instead.
fn try_link(source: &Path, dir: &OwnedFd, name: &str, target: &Path) -> Result<bool> {
    match rustix::fs::linkat(rustix::fs::CWD, source, dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::MLINK | Errno::XDEV | Errno::PERM) => Ok(false),
        Err(e) => Err(io_error("link", target)(e.into())),
    }
}

/// Creates `name` in `dir` exclusively and fills it with the blob, from the store's local file
/// when there is one, streamed otherwise.
fn copy_file(
    store: &dyn BlobStore,
    runtime: &tokio::runtime::Handle,
    file: &FileNode,
    default_mtime: Option<Timestamp>,
    dir: &OwnedFd,
    name: &str,
    target: &Path,
) -> Result<()> {
    let mode = file
        .properties
        .unix_mode
        .unwrap_or(if file.executable { 0o755 } else { 0o644 });
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))
        .map_err(|e| io_error("create", target)(e.into()))?;
    let mut out = File::from(fd);
    let local = store
        .local_file(&file.digest, false)
        .map_err(store_error(target.display().to_string()))?;
    match local {
        Some(source) if !file.digest.is_empty_blob() => {
            let mut input = File::open(&source).map_err(io_error("open", &source))?;
            io::copy(&mut input, &mut out).map_err(io_error("copy into", target))?;
        }
        _ => runtime.block_on(async {
            let mut chunks = store
                .read(&file.digest, ReadRange::ALL)
                .await
                .map_err(store_error(target.display().to_string()))?
                .ok_or(TreeError::MissingFile {
                    path: target.display().to_string(),
                    digest: file.digest,
                })?;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(store_error(target.display().to_string()))?;
                out.write_all(&chunk).map_err(io_error("write", target))?;
            }
            Ok::<_, TreeError>(())
        })?,
    }
    if let Some(mode) = file.properties.unix_mode {
        // The umask applied at creation; the recorded mode is authoritative.
        rustix::fs::fchmod(&out, Mode::from_raw_mode(mode))
            .map_err(|e| io_error("chmod", target)(e.into()))?;
    }
    set_mtime(&out, file.properties.mtime.or(default_mtime), target)
}

fn set_mtime(fd: impl rustix::fd::AsFd, mtime: Option<Timestamp>, target: &Path) -> Result<()> {
    let Some(mtime) = mtime else {
        return Ok(());
    };
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.seconds,
            tv_nsec: i64::from(mtime.nanos),
        },
    };
    rustix::fs::futimens(fd, &times).map_err(|e| io_error("set mtime of", target)(e.into()))
}

/// Applies directories' recorded modes and mtimes (or `default_mtime`), deepest first, after
/// their contents exist.
fn apply_directory_properties(
    tree: &Tree,
    directories: &[(String, Digest)],
    default_mtime: Option<Timestamp>,
    root: &OwnedFd,
    dest: &Path,
) -> Result<()> {
    for (path, digest) in directories.iter().rev() {
        let properties = tree.directory(digest).expect("loaded").properties();
        if properties.is_empty() && default_mtime.is_none() {
            continue;
        }
        let target = dest.join(path);
        let fd = open_beneath(root, path, dest)?;
        if let Some(mode) = properties.unix_mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                .map_err(|e| io_error("chmod", &target)(e.into()))?;
        }
        set_mtime(&fd, properties.mtime.or(default_mtime), &target)?;
    }
    Ok(())
}
