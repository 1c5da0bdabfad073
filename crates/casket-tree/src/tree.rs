//! `Tree`: every `Directory` of a Merkle tree, fetched and validated before anyone acts on it.

use std::collections::{HashMap, HashSet};

use casket_model::{Digest, Directory, FileNode, Node};
use casket_store::{BlobStore, BlobStoreExt, StoreError};
use futures::{StreamExt, TryStreamExt};

use crate::error::{Result, TreeError, join, store_error};

/// What a walk does with a directory it cannot use ([`TreeError::is_gap`]): one the store does
/// not have (or has with another size), or one that is not a valid canonical `Directory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gaps {
    /// Fail on the first, naming its path.
    Fail,
    /// Record it and go on: everything else reachable is still walked.
    Skip,
}

/// The directories reachable from a root, fetched breadth first by [`walk`], each once. This
/// is the one tree walker: loading a [`Tree`], marking what refs and action results keep alive,
/// GetTree and completeness checks all use it. Store failures are always errors; only absent
/// or invalid directories can be skipped.
#[derive(Debug)]
pub struct Walk {
    root: Digest,
    /// Found directories in breadth-first order, each once.
    order: Vec<Digest>,
    directories: HashMap<Digest, Directory>,
    /// Directories skipped ([`Gaps::Skip`]), as errors for which [`TreeError::is_gap`] holds.
    gaps: Vec<TreeError>,
}

/// Directories read per store call: a level of a wide tree takes a few batched reads, not
/// one round trip per directory.
const DIRECTORIES_PER_READ: usize = 64;

/// Walks the tree under `root` breadth first, up to `concurrency` batches of directories at a
/// time. The order of a level is the order its parents name the directories, so two walks of
/// one tree list the directories in the same order.
pub async fn walk(store: &dyn BlobStore, root: &Digest, concurrency: usize, gaps: Gaps) -> Result<Walk> {
    let mut walk = Walk {
        root: *root,
        order: Vec::new(),
        directories: HashMap::new(),
        gaps: Vec::new(),
    };
    let mut seen = HashSet::from([*root]);
    let mut level = vec![(".".to_owned(), *root)];
    while !level.is_empty() {
        let batches: Vec<Vec<(String, Digest)>> =
            level.chunks(DIRECTORIES_PER_READ).map(<[_]>::to_vec).collect();
        let fetched: Vec<Vec<(String, Digest, Result<Directory>)>> = futures::stream::iter(batches)
            .map(|batch| fetch_directories(store, batch))
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
        level = Vec::new();
        for (path, digest, directory) in fetched.into_iter().flatten() {
            let directory = match directory {
                Ok(directory) => directory,
                Err(gap) if gaps == Gaps::Skip => {
                    walk.gaps.push(gap);
                    continue;
                }
                Err(gap) => return Err(gap),
            };
            for (name, node) in directory.entries() {
                if let Node::Directory(child) = node
                    && seen.insert(*child)
                {
                    level.push((join(&path, name.as_str()), *child));
                }
            }
            walk.order.push(digest);
            walk.directories.insert(digest, directory);
        }
    }
    Ok(walk)
}

impl Walk {
    /// The found directories, breadth first, each once.
    pub fn directories(&self) -> impl Iterator<Item = (&Digest, &Directory)> {
        self.order.iter().map(|d| (d, &self.directories[d]))
    }

    /// The directories that were skipped (see [`TreeError::is_gap`]).
    pub fn gaps(&self) -> &[TreeError] {
        &self.gaps
    }

    /// Every digest the tree names: the root, and every file and directory named by a found
    /// directory (skipped directories included, their contents unknown).
    pub fn reachable(&self) -> HashSet<Digest> {
        let mut all = HashSet::from([self.root]);
        for directory in self.directories.values() {
            all.extend(directory.entries().filter_map(|(_, node)| node.digest().copied()));
        }
        all
    }
}

/// A whole tree's directories, keyed by digest, every one decoded and validated.
#[derive(Debug, Clone)]
pub struct Tree {
    root: Digest,
    directories: HashMap<Digest, Directory>,
}

impl Tree {
    /// Fetches the tree under `root` breadth-first, up to `concurrency` directories at a time.
    /// Fails on the first missing or invalid directory, naming its path.
    pub async fn load(store: &dyn BlobStore, root: &Digest, concurrency: usize) -> Result<Tree> {
        let walk = walk(store, root, concurrency, Gaps::Fail).await?;
        Ok(Tree {
            root: *root,
            directories: walk.directories,
        })
    }

    /// Why the tree under `root` cannot be checked out from `store`, if it cannot: the first
    /// missing or invalid directory, or else the first directory or file that the store of
    /// record lacks (directories may have been read through a cache in front of it).
    /// `Err` is kept for failures to look (I/O), not for what was found.
    pub async fn problem(store: &dyn BlobStore, root: &Digest) -> Result<Option<TreeError>> {
        match Tree::load(store, root, crate::default_concurrency()).await {
            Ok(tree) => tree.first_missing(store).await,
            Err(e) if e.is_gap() => Ok(Some(e)),
            Err(e) => Err(e),
        }
    }

    /// The root digest.
    pub fn root(&self) -> &Digest {
        &self.root
    }

    /// The root directory.
    pub fn root_directory(&self) -> &Directory {
        &self.directories[&self.root]
    }

    /// The directory with `digest`, if it is part of the tree.
    pub fn directory(&self, digest: &Digest) -> Option<&Directory> {
        self.directories.get(digest)
    }

    /// Every directory of the tree, keyed by digest.
    pub fn into_directories(self) -> HashMap<Digest, Directory> {
        self.directories
    }

    /// The number of distinct directories.
    pub fn directory_count(&self) -> usize {
        self.directories.len()
    }

    /// Every entry with its path, depth first: a directory comes right before its contents,
    /// siblings in name-byte order.
    pub fn walk(&self) -> Vec<(String, &Node)> {
        let mut out = Vec::new();
        let mut stack = vec![(".".to_owned(), self.root_directory().entries())];
        while let Some((path, entries)) = stack.last_mut() {
            let Some((name, node)) = entries.next() else {
                stack.pop();
                continue;
            };
            let child = join(path, name.as_str());
            if let Node::Directory(d) = node {
                stack.push((child.clone(), self.directories[d].entries()));
            }
            out.push((child, node));
        }
        out
    }

    /// Every file entry with its path.
    pub fn files(&self) -> impl Iterator<Item = (String, &FileNode)> {
        self.walk().into_iter().filter_map(|(path, node)| match node {
            Node::File(f) => Some((path, f)),
            _ => None,
        })
    }

    /// Every digest the tree references: its directories and its files' contents.
    pub fn digests(&self) -> HashSet<Digest> {
        let mut all: HashSet<Digest> = self.directories.keys().copied().collect();
        for directory in self.directories.values() {
            for (_, node) in directory.entries() {
                if let Node::File(f) = node {
                    all.insert(f.digest);
                }
            }
        }
        all
    }

    /// The first file whose content is not in `store`, if any, asking the store of record
    /// (a tree found complete here is safe to hand out by name).
    pub async fn first_missing_file(&self, store: &dyn BlobStore) -> Result<Option<(String, Digest)>> {
        let files: Vec<Digest> = self
            .directories
            .values()
            .flat_map(Directory::entries)
            .filter_map(|(_, node)| match node {
                Node::File(file) => Some(file.digest),
                _ => None,
            })
            .collect();
        let missing = missing_of(store, files.into_iter()).await?;
        // Paths are worked out only when one is to be named.
        if missing.is_empty() {
            return Ok(None);
        }
        Ok(self
            .files()
            .map(|(path, file)| (path, file.digest))
            .find(|(_, digest)| missing.contains(digest)))
    }

    /// The first directory or file, depth first, that the store of record lacks.
    async fn first_missing(&self, store: &dyn BlobStore) -> Result<Option<TreeError>> {
        let entries = self.walk();
        let named = entries.iter().filter_map(|(_, node)| node.digest().copied());
        let missing = missing_of(store, named.chain([self.root])).await?;
        if missing.contains(&self.root) {
            return Ok(Some(TreeError::MissingDirectory {
                path: ".".to_owned(),
                digest: self.root,
            }));
        }
        Ok(entries.into_iter().find_map(|(path, node)| match node {
            Node::Directory(digest) if missing.contains(digest) => Some(TreeError::MissingDirectory {
                path,
                digest: *digest,
            }),
            Node::File(file) if missing.contains(&file.digest) => Some(TreeError::MissingFile {
                path,
                digest: file.digest,
            }),
            _ => None,
        }))
    }
}

/// Which of `digests` the store of record lacks (each asked once).
async fn missing_of(store: &dyn BlobStore, digests: impl Iterator<Item = Digest>) -> Result<HashSet<Digest>> {
    let unique: Vec<Digest> = digests.collect::<HashSet<_>>().into_iter().collect();
    Ok(store
        .find_missing_uncached(&unique)
        .await
        .map_err(store_error("."))?
        .into_iter()
        .collect())
}

/// Fetches a batch of directories in one store call: `Err` for store failures, `Ok` with a gap
/// for each directory that is absent, stored with another size than its parent says, or
/// invalid.
async fn fetch_directories(
    store: &dyn BlobStore,
    batch: Vec<(String, Digest)>,
) -> Result<Vec<(String, Digest, Result<Directory>)>> {
    let digests: Vec<Digest> = batch.iter().map(|(_, digest)| *digest).collect();
    let contents = match store.get_many(&digests).await {
        Ok(contents) => contents,
        Err(e) => return Err(store_error(batch[0].0.clone())(e)),
    };
    let mut fetched = Vec::with_capacity(batch.len());
    for ((path, digest), bytes) in batch.into_iter().zip(contents) {
        fetched.push(match bytes {
            Some(bytes) => {
                let directory = decode(&path, digest, &bytes);
                (path, digest, directory)
            }
            // A gap: asked again alone, to say whether it is absent or of another size.
            None => fetch_directory(store, path, digest).await?,
        });
    }
    Ok(fetched)
}

/// Fetches one directory, as `fetch_directories` does a batch.
async fn fetch_directory(
    store: &dyn BlobStore,
    path: String,
    digest: Digest,
) -> Result<(String, Digest, Result<Directory>)> {
    let bytes = match store.get_bytes(&digest).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let gap = TreeError::MissingDirectory {
                path: path.clone(),
                digest,
            };
            return Ok((path, digest, Err(gap)));
        }
        // A parent that names the wrong size names a directory that is not there.
        Err(e @ StoreError::SizeMismatch { .. }) => {
            let gap = store_error(path.clone())(e);
            return Ok((path, digest, Err(gap)));
        }
        Err(e) => return Err(store_error(path)(e)),
    };
    let directory = decode(&path, digest, &bytes);
    Ok((path, digest, directory))
}

/// The directory at `path` from its bytes; a gap if they are not a canonical `Directory`.
fn decode(path: &str, digest: Digest, bytes: &[u8]) -> Result<Directory> {
    Directory::decode(digest.function(), bytes).map_err(|source| TreeError::InvalidDirectory {
        path: path.to_owned(),
        digest,
        source: Box::new(source),
    })
}
