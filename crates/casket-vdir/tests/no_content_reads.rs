//! A CAS -> CAS import reads Directory messages only, never a file's content, and gives the
//! tree a file-backend import of the same trees captures to.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod common;

use async_trait::async_trait;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, BlobStream, BlobWriter, MemoryStore, NewBlob, ReadRange, Result, Usage};
use casket_tree::{CaptureOptions, Tree, capture};
use casket_vdir::{CasDirectory, Directory, FileDirectory, ImportFilter, ImportOptions};
use common::trees::{Shape, write_tree};

/// A store that delegates to a [`MemoryStore`] and counts, by digest, every call that hands
/// out a blob's content (or a file holding it).
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryStore,
    reads: Mutex<HashMap<Digest, usize>>,
}

impl Counting {
    fn note(&self, digest: &Digest) {
        *self.reads.lock().unwrap().entry(*digest).or_default() += 1;
    }

    fn take(&self) -> HashMap<Digest, usize> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

#[async_trait]
impl BlobStore for Counting {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.inner.find_missing(digests).await
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        self.note(digest);
        self.inner.read(digest, range).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.inner.begin_write(digest).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.inner.delete(digest).await
    }

    async fn usage(&self) -> Result<Usage> {
        self.inner.usage().await
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        self.inner.put_many(function, blobs).await
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<bytes::Bytes>>> {
        digests.iter().for_each(|d| self.note(d));
        self.inner.get_many(digests).await
    }

    async fn ingest_file(&self, path: &Path, function: DigestFunction) -> Result<Digest> {
        self.inner.ingest_file(path, function).await
    }

    fn local_file(&self, digest: &Digest, executable: bool) -> Result<Option<PathBuf>> {
        self.note(digest);
        self.inner.local_file(digest, executable)
    }
}

/// 3 top directories of 3 each of 2 (30 directories) and 600 files.
const SHAPE: Shape = Shape {
    tops: 3,
    mids: 3,
    leaves: 2,
    files: 600,
};

/// A tree of [`write_tree`], plus an empty directory.
fn write_trees(root: &Path, second: bool) {
    write_tree(root, SHAPE, second);
    std::fs::create_dir_all(root.join("t0/empty")).unwrap();
}

fn file_digests(tree: &Tree) -> HashSet<Digest> {
    tree.files().map(|(_, f)| f.digest).collect()
}

#[tokio::test]
async fn cas_to_cas_import_reads_no_file_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_trees(&dir_a, false);
    write_trees(&dir_b, true);

    let counting = Arc::new(Counting::default());
    let store: Arc<dyn BlobStore> = counting.clone();
    let options = CaptureOptions::default();
    let a = capture(store.as_ref(), &dir_a, &options, &()).await.unwrap().root;
    let b = capture(store.as_ref(), &dir_b, &options, &()).await.unwrap().root;
    let (tree_a, tree_b) = (
        Tree::load(&counting.inner, &a, 4).await.unwrap(),
        Tree::load(&counting.inner, &b, 4).await.unwrap(),
    );
    let files: HashSet<Digest> = file_digests(&tree_a)
        .union(&file_digests(&tree_b))
        .copied()
        .collect();
    assert!(
        !files.contains(&DigestFunction::Sha256.empty_digest()),
        "no empty files"
    );
    let directories: HashSet<Digest> = tree_a
        .into_directories()
        .into_keys()
        .chain(tree_b.into_directories().into_keys())
        .collect();
    assert!(files.is_disjoint(&directories));
    counting.take();

    // Merge B into A.
    let dest = CasDirectory::open(store.clone(), &a).await.unwrap();
    let source = CasDirectory::open(store.clone(), &b).await.unwrap();
    let report = dest
        .import_files(&source, &ImportFilter::All, &ImportOptions::default())
        .await
        .unwrap();
    let merged = dest.digest().await.unwrap();
    let reads = counting.take();
    assert!(!report.overwritten.is_empty(), "the trees really merge");
    let content_reads: Vec<_> = reads.keys().filter(|d| files.contains(d)).collect();
    assert!(content_reads.is_empty(), "file contents read: {content_reads:?}");
    assert!(
        reads.keys().all(|d| directories.contains(d)),
        "only the Directory messages of the two trees are read"
    );
    assert!(!reads.is_empty());

    // Graft B whole below a new name of A.
    let dest = CasDirectory::open(store.clone(), &a).await.unwrap();
    let source = CasDirectory::open(store.clone(), &b).await.unwrap();
    dest.descend("imported", true)
        .await
        .unwrap()
        .import_files(&source, &ImportFilter::All, &ImportOptions::default())
        .await
        .unwrap();
    dest.digest().await.unwrap();
    let reads = counting.take();
    assert!(
        reads.keys().all(|d| directories.contains(d)),
        "graft reads: {reads:?}"
    );

    // The file backend, on the trees on disk, agrees.
    let file_report = FileDirectory::open(&dir_a)
        .unwrap()
        .import_files(
            &FileDirectory::open(&dir_b).unwrap(),
            &ImportFilter::All,
            &ImportOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(file_report, report);
    let on_disk = capture(&counting.inner, &dir_a, &options, &())
        .await
        .unwrap()
        .root;
    assert_eq!(on_disk, merged);
}
