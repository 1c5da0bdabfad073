//! The CAS-backed directory: a Merkle tree in a store, edited in memory, no file system needed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, Directory as DirectoryMessage, NodeProperties};
use casket_store::{BlobStore, NewBlob};
use casket_tree::{CaptureOptions, Tree};

use crate::error::{Result, VdirError, store_error};
use crate::import::{ImportFilter, ImportOptions, ImportReport, SourceEntry};
use crate::snapshot::{self, Baseline, Snapshot, Stat};
use crate::stage::{Content, NodeId, ROOT, Slot, Stage, StagedFile};
use crate::{Directory, edit};

/// A directory of a Merkle tree in a store. Handles from [`Directory::descend`] share the
/// tree: an edit through any of them is seen by all. The digest is computed on demand, cached,
/// and forgotten on every edit below it.
#[derive(Clone)]
pub struct CasDirectory {
    shared: Arc<Shared>,
    node: NodeId,
    baseline: Baseline,
}

struct Shared {
    store: Arc<dyn BlobStore>,
    stage: Mutex<Stage>,
    /// Directory messages computed but not yet stored.
    unstored: Mutex<Vec<(Digest, Bytes)>>,
}

impl fmt::Debug for CasDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CasDirectory")
            .field("store", &self.shared.store)
            .field("node", &self.node)
            .finish()
    }
}

impl CasDirectory {
    /// An empty tree in `store`.
    pub fn empty(store: Arc<dyn BlobStore>, function: DigestFunction) -> CasDirectory {
        CasDirectory::with_stage(
            store,
            Stage::stored(DirectoryMessage::new().digest(function), HashMap::new()),
        )
    }

    /// The stored tree `root`. Its directories are fetched and validated now (file contents
    /// are not read).
    pub async fn open(store: Arc<dyn BlobStore>, root: &Digest) -> Result<CasDirectory> {
        let tree = Tree::load(store.as_ref(), root, casket_tree::default_concurrency()).await?;
        let directories = tree
            .into_directories()
            .into_iter()
            .map(|(digest, directory)| (digest, Arc::new(directory)))
            .collect();
        Ok(CasDirectory::with_stage(store, Stage::stored(*root, directories)))
    }

    fn with_stage(store: Arc<dyn BlobStore>, stage: Stage) -> CasDirectory {
        CasDirectory {
            shared: Arc::new(Shared {
                store,
                stage: Mutex::new(stage),
                unstored: Mutex::new(Vec::new()),
            }),
            node: ROOT,
            baseline: Baseline::default(),
        }
    }

    /// The store the tree lives in.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.shared.store
    }

    /// The digest of this directory. Directories edited since the last call are encoded and
    /// stored now; the result is cached until the next edit.
    pub async fn digest(&self) -> Result<Digest> {
        let (digest, mut pending) = {
            let mut stage = self.stage();
            let mut new = Vec::new();
            let digest = stage.digest(self.node, &mut new)?;
            let mut unstored = lock(&self.shared.unstored);
            unstored.extend(new);
            (digest, std::mem::take(&mut *unstored))
        };
        if pending.is_empty() {
            return Ok(digest);
        }
        let function = digest.function();
        let blobs = pending
            .iter()
            .map(|(_, bytes)| NewBlob::new(bytes.clone()))
            .collect();
        let outcome = self.shared.store.put_many(function, blobs).await;
        let failure = match outcome {
            Ok(results) => {
                let mut kept = Vec::new();
                let mut first = None;
                for (blob, result) in pending.drain(..).zip(results) {
                    if let Err(e) = result {
                        first.get_or_insert(e);
                        kept.push(blob);
                    }
                }
                pending = kept;
                first
            }
            Err(e) => Some(e),
        };
        match failure {
            None => Ok(digest),
            Some(e) => {
                lock(&self.shared.unstored).extend(pending);
                Err(store_error(".")(e))
            }
        }
    }

    fn stage(&self) -> MutexGuard<'_, Stage> {
        lock(&self.shared.stage)
    }

    fn handle(&self, node: NodeId) -> CasDirectory {
        CasDirectory {
            shared: self.shared.clone(),
            node,
            baseline: Baseline::default(),
        }
    }

    /// Runs `f` on a copy of the tree and keeps the copy only if `f` succeeds.
    fn edit<T>(&self, f: impl FnOnce(&mut Stage, NodeId) -> Result<T>) -> Result<T> {
        let mut stage = self.stage();
        let mut draft = stage.clone();
        let out = f(&mut draft, self.node)?;
        *stage = draft;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&mut Stage, NodeId) -> Result<T>) -> Result<T> {
        f(&mut self.stage(), self.node)
    }

    /// Stores the files of `entries` that are on disk, so that the tree refers to them by
    /// digest.
    async fn store_disk_files(&self, function: DigestFunction, entries: &mut [SourceEntry]) -> Result<()> {
        let mut indices = Vec::new();
        let mut paths = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            if let Slot::File(StagedFile {
                content: Content::Disk { path, .. },
                ..
            }) = &entry.slot
            {
                indices.push(index);
                paths.push(path.clone());
            }
        }
        let options = CaptureOptions {
            function,
            ..CaptureOptions::default()
        };
        let nodes = casket_tree::store_files(self.shared.store.as_ref(), paths, &options, &()).await?;
        for (index, node) in indices.into_iter().zip(nodes) {
            if let Slot::File(file) = &mut entries[index].slot {
                file.content = Content::Stored(node.digest);
            }
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Directory for CasDirectory {
    async fn descend(&self, path: &str, create: bool) -> Result<Box<dyn Directory>> {
        let node = if create {
            self.edit(|stage, root| edit::descend(stage, root, path, true))?
        } else {
            self.read(|stage, root| edit::descend(stage, root, path, false))?
        };
        Ok(Box::new(self.handle(node)))
    }

    async fn import_files(
        &self,
        source: &dyn Directory,
        filter: &ImportFilter,
        options: &ImportOptions,
    ) -> Result<ImportReport> {
        let mut snapshot = source.snapshot().await?;
        if let Some(other) = &snapshot.store
            && !Arc::ptr_eq(other, &self.shared.store)
        {
            return Err(VdirError::Unsupported {
                path: ".".into(),
                reason: "importing between trees of two different stores is not supported".into(),
            });
        }
        let mut report = ImportReport::default();
        let mut entries = edit::select(&mut snapshot, filter, options, &mut report)?;
        let function = self.stage().function();
        self.store_disk_files(function, &mut entries).await?;
        self.edit(|stage, root| edit::import(stage, root, &snapshot, entries, &mut report))?;
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
        snapshot::read_content(&file, Some(&self.shared.store), path).await
    }

    async fn write_file(&self, path: &str, data: Bytes, executable: bool) -> Result<()> {
        let function = self.stage().function();
        let digest = self
            .shared
            .store
            .put_many(function, vec![NewBlob::new(data)])
            .await
            .and_then(|mut results| results.remove(0))
            .map_err(store_error(path))?;
        let file = StagedFile {
            executable,
            content: Content::Stored(digest),
            properties: NodeProperties::default(),
        };
        self.edit(|stage, root| edit::write_file(stage, root, path, file))
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        self.edit(|stage, root| edit::remove(stage, root, path, recursive))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.edit(|stage, root| edit::rename(stage, root, from, to))
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
        self.edit(|stage, root| stage.clear_mtimes(root))
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            stage: self.stage().clone(),
            root: self.node,
            store: Some(self.shared.store.clone()),
        })
    }

    fn as_directory(&self) -> &dyn Directory {
        self
    }
}
