//! Capture: turn a directory on disk into a Merkle tree of `Directory` messages in a store.
//!
//! Three phases: a single-threaded scan (`readdir`, file types from `d_type`, no `stat` of
//! files), the files read in batches on blocking threads (`open`, `fstat`, one `read`) and
//! stored with [`BlobStore::put_many`] (files over 64 KiB go through the store's one-pass
//! [`BlobStore::ingest_file`]), then the directories encoded bottom-up and written if missing. The result is identical to BuildStream's
//! `CASCache._commit_directory` for the same tree: entries sorted by name bytes, executable =
//! owner execute bit, symlink targets verbatim, no node properties unless asked for.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use casket_model::{
    Digest, DigestFunction, Directory, EntryName, FileNode, Node, NodeProperties, SymlinkNode, Timestamp,
};
use casket_store::{BlobStore, NewBlob};
use futures::{StreamExt, TryStreamExt};

use crate::Progress;
use crate::error::{Result, TreeError, blocking, io_error, store_error};

/// How to capture.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// The digest function for every blob of the tree.
    pub function: DigestFunction,
    /// Record each file's, symlink's and directory's mtime as a node property.
    pub mtime: bool,
    /// Record each file's and directory's permission bits as a node property.
    pub unix_mode: bool,
    /// The permission bits recorded, when `unix_mode` is set.
    pub unix_mode_mask: u32,
    /// Leave out sockets, FIFOs and devices (as buildbox-casd does) instead of failing.
    pub skip_special_files: bool,
    /// Record node properties as buildbox-casd does: mtimes to the microsecond, none on
    /// symlinks (so that both daemons capture the same trees).
    pub casd_properties: bool,
    /// Files stored at once.
    pub concurrency: usize,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            function: DigestFunction::Sha256,
            mtime: false,
            unix_mode: false,
            unix_mode_mask: 0o7777,
            skip_special_files: false,
            casd_properties: false,
            concurrency: crate::default_concurrency(),
        }
    }
}

/// What a capture stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// The digest of the root `Directory`.
    pub root: Digest,
    /// Regular files captured.
    pub files: u64,
    /// Directories captured, the root included.
    pub directories: u64,
    /// Symlinks captured.
    pub symlinks: u64,
    /// Total size of the files.
    pub file_bytes: u64,
    /// Every `Directory` stored, encoded, children before their parents (the root last); a
    /// directory that occurs twice is here twice. For callers that need the tree's messages
    /// (a REAPI `Tree`) without reading them back.
    pub encoded_directories: Vec<(Digest, Bytes)>,
}

/// Files at most this large are read into memory by the capture and stored in batches.
const SMALL_FILE: u64 = 64 << 10;

/// Files read and stored per blocking task; bounds memory to `concurrency * BATCH * SMALL_FILE`.
const BATCH: usize = 128;

enum Item {
    File(usize),
    Directory(usize),
    Symlink(SymlinkNode),
}

struct ScannedDirectory {
    entries: Vec<(EntryName, Item)>,
    properties: NodeProperties,
}

/// Directories in pre-order (a parent's index is below its children's) and file paths.
#[derive(Default)]
struct Scan {
    directories: Vec<ScannedDirectory>,
    files: Vec<PathBuf>,
    symlinks: u64,
}

/// A file as read: its node, and its content if small.
struct ReadFile {
    node: FileNode,
    content: Option<Bytes>,
}

/// Captures the directory at `root` into `store`. A symlink given as `root` is followed; no
/// symlink inside the tree is.
pub async fn capture(
    store: &dyn BlobStore,
    root: &Path,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Captured> {
    let scan = {
        let (root, options) = (root.to_owned(), options.clone());
        blocking(move || scan(&root, &options)).await?
    };
    progress.start(scan.files.len() as u64, 0);

    let files = store_files(store, scan.files, options, progress).await?;
    let file_bytes = files.iter().map(|f| f.digest.size()).sum();

    let mut directory_digests = vec![None; scan.directories.len()];
    let mut encoded = Vec::with_capacity(scan.directories.len());
    for (index, scanned) in scan.directories.iter().enumerate().rev() {
        let mut directory = Directory::new();
        directory.set_properties(scanned.properties.clone());
        for (name, item) in &scanned.entries {
            let node = match item {
                Item::File(i) => Node::File(files[*i].clone()),
                Item::Directory(i) => Node::Directory(directory_digests[*i].expect("children come first")),
                Item::Symlink(link) => Node::Symlink(link.clone()),
            };
            directory.insert(name.clone(), node);
        }
        let bytes = Bytes::from(directory.encode());
        let digest = Digest::of(options.function, &bytes);
        directory_digests[index] = Some(digest);
        encoded.push((digest, bytes));
    }
    // Cloning shares the buffers.
    store_directories(store, encoded.clone(), options.concurrency).await?;

    Ok(Captured {
        root: directory_digests[0].expect("the root was encoded"),
        files: files.len() as u64,
        directories: scan.directories.len() as u64,
        symlinks: scan.symlinks,
        file_bytes,
        encoded_directories: encoded,
    })
}

/// Stores the regular files at `paths` (opened without following symlinks), `concurrency`
/// batches at a time: small files read whole and stored together with `put_many`, large ones
/// streamed with `ingest_file`. Returns their nodes in the order of `paths`.
pub async fn store_files(
    store: &dyn BlobStore,
    paths: Vec<PathBuf>,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Vec<FileNode>> {
    let mut files: Vec<Option<FileNode>> = vec![None; paths.len()];
    // Owned batches: a stream borrowing `paths` would not be `Send` for every lifetime.
    let batches: Vec<(usize, Vec<PathBuf>)> = paths
        .chunks(BATCH)
        .enumerate()
        .map(|(i, paths)| (i * BATCH, paths.to_vec()))
        .collect();
    let mut stored = futures::stream::iter(batches)
        .map(|(first, paths)| store_batch(store, first, paths, options, progress))
        .buffer_unordered(options.concurrency.max(1));
    while let Some(batch) = stored.try_next().await? {
        for (index, node) in batch {
            files[index] = Some(node);
        }
    }
    drop(stored);
    Ok(files
        .into_iter()
        .map(|f| f.expect("every batch completed"))
        .collect())
}

/// Reads a batch of files on a blocking thread, then stores the small ones with one
/// `put_many` and the large ones one by one. Returns each file's index and node.
async fn store_batch(
    store: &dyn BlobStore,
    first: usize,
    paths: Vec<PathBuf>,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Vec<(usize, FileNode)>> {
    let read = {
        let (paths, options) = (paths.clone(), options.clone());
        blocking(move || {
            paths
                .iter()
                .map(|p| read_file(p, &options))
                .collect::<Result<Vec<_>>>()
        })
        .await?
    };
    let small: Vec<NewBlob> = read
        .iter()
        .filter_map(|r| r.content.clone().map(NewBlob::new))
        .collect();
    let mut small_digests = store
        .put_many(options.function, small)
        .await
        .map_err(store_error(paths[0].display().to_string()))?
        .into_iter();
    let mut nodes = Vec::with_capacity(read.len());
    for (offset, (file, path)) in read.into_iter().zip(&paths).enumerate() {
        let mut node = file.node;
        node.digest = match file.content {
            Some(_) => small_digests
                .next()
                .expect("one result per small file")
                .map_err(store_error(path.display().to_string()))?,
            None => store
                .ingest_file(path, options.function)
                .await
                .map_err(store_error(path.display().to_string()))?,
        };
        progress.advance(1, node.digest.size());
        nodes.push((first + offset, node));
    }
    Ok(nodes)
}

/// Opens a file without following symlinks and reads it whole if it is small. The node's
/// digest is a placeholder until the content is stored.
fn read_file(path: &Path, options: &CaptureOptions) -> Result<ReadFile> {
    let mut file = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("stat", path))?;
    if !meta.is_file() {
        return Err(TreeError::Unsupported {
            path: path.to_owned(),
            reason: "changed into something other than a regular file during capture",
        });
    }
    let content = if meta.len() <= SMALL_FILE {
        // Read until end of file: a short read is not the end on every file system (FUSE,
        // network file systems), and the file may have grown since fstat.
        // Through `take`, std's generic read_to_end fills the buffer we sized instead of
        // calling fstat and lseek again to size one.
        let mut data = Vec::with_capacity(meta.len() as usize + 1);
        (&mut file)
            .take(u64::MAX)
            .read_to_end(&mut data)
            .map_err(io_error("read", path))?;
        Some(Bytes::from(data))
    } else {
        None
    };
    Ok(ReadFile {
        node: FileNode {
            digest: options.function.empty_digest(),
            executable: meta.permissions().mode() & 0o100 != 0,
            properties: properties(&meta, options, true),
        },
        content,
    })
}

/// Writes the directory messages the store lacks.
async fn store_directories(
    store: &dyn BlobStore,
    mut encoded: Vec<(Digest, Bytes)>,
    concurrency: usize,
) -> Result<()> {
    encoded.sort_by_key(|(d, _)| *d);
    encoded.dedup_by_key(|(d, _)| *d);
    let digests: Vec<Digest> = encoded.iter().map(|(d, _)| *d).collect();
    let missing = store.find_missing(&digests).await.map_err(store_error("."))?;
    futures::stream::iter(
        encoded
            .into_iter()
            .filter(|(d, _)| missing.binary_search(d).is_ok()),
    )
    .map(|(digest, bytes)| async move {
        use casket_store::BlobStoreExt;
        store
            .put_verified(&digest, bytes)
            .await
            .map_err(store_error(format!("directory {digest}")))
    })
    .buffer_unordered(concurrency.max(1))
    .try_collect::<()>()
    .await
}

fn scan(root: &Path, options: &CaptureOptions) -> Result<Scan> {
    let meta = fs::metadata(root).map_err(io_error("stat", root))?;
    if !meta.is_dir() {
        return Err(TreeError::Unsupported {
            path: root.to_owned(),
            reason: "not a directory",
        });
    }
    let want_metadata = options.mtime || options.unix_mode;
    let mut scan = Scan::default();
    let mut pending = vec![(root.to_owned(), Some(meta), None::<(usize, EntryName)>)];
    while let Some((path, meta, parent)) = pending.pop() {
        let index = scan.directories.len();
        if let Some((parent, name)) = parent {
            scan.directories[parent]
                .entries
                .push((name, Item::Directory(index)));
        }
        let own_properties = match (&meta, want_metadata) {
            (Some(meta), true) => properties(meta, options, true),
            (None, true) => properties(
                &fs::symlink_metadata(&path).map_err(io_error("stat", &path))?,
                options,
                true,
            ),
            _ => NodeProperties::default(),
        };
        scan.directories.push(ScannedDirectory {
            entries: Vec::new(),
            properties: own_properties,
        });
        for entry in fs::read_dir(&path).map_err(io_error("list", &path))? {
            let entry = entry.map_err(io_error("list", &path))?;
            let child = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .ok()
                .and_then(|n| EntryName::new(n).ok())
                .ok_or_else(|| TreeError::Unsupported {
                    path: child.clone(),
                    reason: "the name is not UTF-8",
                })?;
            let file_type = entry.file_type().map_err(io_error("stat", &child))?;
            let item = if file_type.is_dir() {
                pending.push((child, None, Some((index, name))));
                continue;
            } else if file_type.is_file() {
                scan.files.push(child);
                Item::File(scan.files.len() - 1)
            } else if file_type.is_symlink() {
                let target = fs::read_link(&child).map_err(io_error("read link", &child))?;
                let mut link = target
                    .into_os_string()
                    .into_string()
                    .ok()
                    .and_then(SymlinkNode::new)
                    .ok_or_else(|| TreeError::Unsupported {
                        path: child.clone(),
                        reason: "the symlink target is not UTF-8",
                    })?;
                if want_metadata && !options.casd_properties {
                    let meta = fs::symlink_metadata(&child).map_err(io_error("stat", &child))?;
                    link.properties = properties(&meta, options, false);
                }
                scan.symlinks += 1;
                Item::Symlink(link)
            } else if options.skip_special_files {
                continue;
            } else {
                return Err(TreeError::Unsupported {
                    path: child,
                    reason: "not a regular file, directory or symlink",
                });
            };
            scan.directories[index].entries.push((name, item));
        }
    }
    Ok(scan)
}

fn properties(meta: &fs::Metadata, options: &CaptureOptions, with_mode: bool) -> NodeProperties {
    NodeProperties {
        mtime: options.mtime.then(|| {
            let nanos = meta.mtime_nsec().clamp(0, 999_999_999) as u32;
            Timestamp {
                seconds: meta.mtime(),
                nanos: if options.casd_properties {
                    nanos / 1000 * 1000
                } else {
                    nanos
                },
            }
        }),
        unix_mode: (options.unix_mode && with_mode).then(|| meta.mode() & options.unix_mode_mask),
        other: Default::default(),
    }
}
