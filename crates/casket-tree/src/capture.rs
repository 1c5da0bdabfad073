//! Capture: turn a directory on disk into a Merkle tree of `Directory` messages in a store.
//!
//! Three phases: a single-threaded scan (`readdir` + `lstat`), the files' contents stored with
//! bounded concurrency (the store hashes each file in one pass), then the directories encoded
//! bottom-up and written if missing. The result is identical to BuildStream's
//! `CASCache._commit_directory` for the same tree: entries sorted by name bytes, executable =
//! owner execute bit, symlink targets verbatim, no node properties unless asked for.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use casket_model::{
    Digest, DigestFunction, Directory, EntryName, FileNode, Node, NodeProperties, SymlinkNode, Timestamp,
};
use casket_store::BlobStore;
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
    /// Files stored at once.
    pub concurrency: usize,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            function: DigestFunction::Sha256,
            mtime: false,
            unix_mode: false,
            concurrency: crate::default_concurrency(),
        }
    }
}

/// What a capture stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

enum Item {
    File(usize),
    Directory(usize),
    Symlink(SymlinkNode),
}

struct ScannedDirectory {
    entries: Vec<(EntryName, Item)>,
    properties: NodeProperties,
}

struct ScannedFile {
    path: PathBuf,
    size: u64,
    executable: bool,
    properties: NodeProperties,
}

/// Directories in pre-order (a parent's index is below its children's) and files.
#[derive(Default)]
struct Scan {
    directories: Vec<ScannedDirectory>,
    files: Vec<ScannedFile>,
    symlinks: u64,
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
    let total_bytes = scan.files.iter().map(|f| f.size).sum();
    progress.start(scan.files.len() as u64, total_bytes);

    let mut file_digests = vec![None; scan.files.len()];
    let mut ingested = futures::stream::iter(scan.files.iter().enumerate())
        .map(|(index, file)| async move {
            let digest = store
                .ingest_file(&file.path, options.function)
                .await
                .map_err(store_error(file.path.display().to_string()))?;
            progress.advance(1, file.size);
            Ok::<_, TreeError>((index, digest))
        })
        .buffer_unordered(options.concurrency.max(1));
    while let Some((index, digest)) = ingested.try_next().await? {
        file_digests[index] = Some(digest);
    }
    drop(ingested);

    let mut directory_digests = vec![None; scan.directories.len()];
    let mut encoded = Vec::with_capacity(scan.directories.len());
    for (index, scanned) in scan.directories.iter().enumerate().rev() {
        let mut directory = Directory::new();
        directory.set_properties(scanned.properties.clone());
        for (name, item) in &scanned.entries {
            let node = match item {
                Item::File(i) => Node::File(FileNode {
                    digest: file_digests[*i].expect("every file was stored"),
                    executable: scan.files[*i].executable,
                    properties: scan.files[*i].properties.clone(),
                }),
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
    store_directories(store, encoded, options.concurrency).await?;

    Ok(Captured {
        root: directory_digests[0].expect("the root was encoded"),
        files: scan.files.len() as u64,
        directories: scan.directories.len() as u64,
        symlinks: scan.symlinks,
        file_bytes: total_bytes,
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
    let mut scan = Scan::default();
    let mut pending = vec![(root.to_owned(), meta, None::<(usize, EntryName)>)];
    while let Some((path, meta, parent)) = pending.pop() {
        let index = scan.directories.len();
        if let Some((parent, name)) = parent {
            scan.directories[parent]
                .entries
                .push((name, Item::Directory(index)));
        }
        scan.directories.push(ScannedDirectory {
            entries: Vec::new(),
            properties: properties(&meta, options, true),
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
            let meta = fs::symlink_metadata(&child).map_err(io_error("stat", &child))?;
            let file_type = meta.file_type();
            let item = if file_type.is_dir() {
                pending.push((child, meta, Some((index, name))));
                continue;
            } else if file_type.is_file() {
                scan.files.push(ScannedFile {
                    executable: meta.permissions().mode() & 0o100 != 0,
                    size: meta.len(),
                    properties: properties(&meta, options, true),
                    path: child,
                });
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
                link.properties = properties(&meta, options, false);
                scan.symlinks += 1;
                Item::Symlink(link)
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
        mtime: options.mtime.then(|| Timestamp {
            seconds: meta.mtime(),
            nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        }),
        unix_mode: (options.unix_mode && with_mode).then(|| meta.mode() & 0o7777),
        other: Default::default(),
    }
}
