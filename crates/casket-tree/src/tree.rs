//! `Tree`: every `Directory` of a Merkle tree, fetched and validated before anyone acts on it.

use std::collections::{HashMap, HashSet};

use casket_model::{Digest, Directory, FileNode, Node};
use casket_store::{BlobStore, BlobStoreExt};
use futures::{StreamExt, TryStreamExt};

use crate::error::{Result, TreeError, join, store_error};

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
        let mut directories: HashMap<Digest, Directory> = HashMap::new();
        let mut level = vec![(".".to_owned(), *root)];
        while !level.is_empty() {
            let mut seen = HashSet::new();
            level.retain(|(_, d)| !directories.contains_key(d) && seen.insert(*d));
            let fetched: Vec<(String, Digest, Directory)> = futures::stream::iter(level)
                .map(|(path, digest)| fetch_directory(store, path, digest))
                .buffer_unordered(concurrency.max(1))
                .try_collect()
                .await?;
            level = Vec::new();
            for (path, digest, directory) in fetched {
                for (name, node) in directory.entries() {
                    if let Node::Directory(child) = node {
                        level.push((join(&path, name.as_str()), *child));
                    }
                }
                directories.insert(digest, directory);
            }
        }
        Ok(Tree {
            root: *root,
            directories,
        })
    }

    /// Why the tree under `root` cannot be checked out from `store`, if it cannot: the first
    /// missing or invalid directory, or else the first file whose content is missing.
    /// `Err` is kept for failures to look (I/O), not for what was found.
    pub async fn problem(store: &dyn BlobStore, root: &Digest) -> Result<Option<TreeError>> {
        let tree = match Tree::load(store, root, crate::default_concurrency()).await {
            Ok(tree) => tree,
            Err(
                e @ (TreeError::MissingDirectory { .. }
                | TreeError::InvalidDirectory { .. }
                | TreeError::Store { .. }),
            ) => return Ok(Some(e)),
            Err(e) => return Err(e),
        };
        Ok(tree
            .first_missing_file(store)
            .await?
            .map(|(path, digest)| TreeError::MissingFile { path, digest }))
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
        let files: Vec<(String, Digest)> = self.files().map(|(p, f)| (p, f.digest)).collect();
        let unique: Vec<Digest> = files
            .iter()
            .map(|(_, d)| *d)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let missing: HashSet<Digest> = store
            .find_missing_uncached(&unique)
            .await
            .map_err(store_error("."))?
            .into_iter()
            .collect();
        Ok(files.into_iter().find(|(_, d)| missing.contains(d)))
    }
}

async fn fetch_directory(
    store: &dyn BlobStore,
    path: String,
    digest: Digest,
) -> Result<(String, Digest, Directory)> {
    let bytes = store
        .get_bytes(&digest)
        .await
        .map_err(store_error(path.clone()))?;
    let Some(bytes) = bytes else {
        return Err(TreeError::MissingDirectory { path, digest });
    };
    match Directory::decode(digest.function(), &bytes) {
        Ok(directory) => Ok((path, digest, directory)),
        Err(source) => Err(TreeError::InvalidDirectory {
            path,
            digest,
            source: Box::new(source),
        }),
    }
}
