//! The one tree walker: gaps skipped or fatal, store failures always surfaced, and
//! completeness checked against the store of record even through a cache in front of it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use casket_model::{Digest, DigestFunction, Directory, EntryName, FileNode, Node};
use casket_store::fault::{Fault, FaultyStore};
use casket_store::{BlobStore, BlobStoreExt, DiskOptions, DiskStore, MemoryStore, TieredStore};
use casket_tree::{Gaps, Tree, TreeError, walk};

async fn put(store: &dyn BlobStore, data: &[u8]) -> Digest {
    store
        .put_bytes(DigestFunction::Sha256, Bytes::copy_from_slice(data))
        .await
        .unwrap()
}

async fn directory(store: &dyn BlobStore, entries: &[(&str, Node)]) -> Digest {
    let mut directory = Directory::default();
    for (name, node) in entries {
        directory.insert(EntryName::new(*name).unwrap(), node.clone());
    }
    put(store, &directory.encode()).await
}

fn file(digest: Digest) -> Node {
    Node::File(FileNode {
        digest,
        executable: false,
        properties: Default::default(),
    })
}

/// `root/{a: {f}, b: {g}}`, returning (root, a, b, f, g).
async fn two_subdirectories(store: &dyn BlobStore) -> [Digest; 5] {
    let (f, g) = (put(store, b"f").await, put(store, b"g").await);
    let a = directory(store, &[("f", file(f))]).await;
    let b = directory(store, &[("g", file(g))]).await;
    let root = directory(store, &[("a", Node::Directory(a)), ("b", Node::Directory(b))]).await;
    [root, a, b, f, g]
}

#[tokio::test]
async fn skipped_gaps_hide_only_what_is_below_them_and_store_failures_are_errors() {
    let store = FaultyStore::new(MemoryStore::new());
    let [root, a, b, f, g] = two_subdirectories(&store).await;
    store.inject(a, Fault::Hide);
    let partial = walk(&store, &root, 4, Gaps::Skip).await.unwrap();
    let reachable = partial.reachable();
    assert!(reachable.contains(&b) && reachable.contains(&g) && reachable.contains(&a));
    assert!(!reachable.contains(&f), "below the gap");
    assert!(matches!(partial.gaps(), [TreeError::MissingDirectory { path, .. }] if path == "a"));
    let order: Vec<Digest> = partial.directories().map(|(d, _)| *d).collect();
    assert_eq!(order, vec![root, b]);
    assert!(matches!(
        walk(&store, &root, 4, Gaps::Fail).await,
        Err(TreeError::MissingDirectory { .. })
    ));

    store.clear();
    store.inject(b, Fault::Fail);
    for gaps in [Gaps::Skip, Gaps::Fail] {
        assert!(
            matches!(walk(&store, &root, 4, gaps).await, Err(TreeError::Store { .. })),
            "{gaps:?}"
        );
    }
    assert!(
        Tree::problem(&store, &root).await.is_err(),
        "a failure to look is not an answer"
    );
}

/// A directory still in the near cache but gone from the store of record is a problem: the
/// tree cannot be handed out by name.
#[tokio::test]
async fn completeness_is_checked_against_the_store_of_record() {
    let dir = tempfile::tempdir().unwrap();
    let near = DiskStore::open(dir.path(), DiskOptions::default()).unwrap();
    let far = Arc::new(MemoryStore::new());
    let tiered = TieredStore::new(Arc::new(near), far.clone(), None);
    let [root, a, ..] = two_subdirectories(&tiered).await;
    assert!(Tree::problem(&tiered, &root).await.unwrap().is_none());
    far.delete(&a).await.unwrap();
    let problem = Tree::problem(&tiered, &root).await.unwrap();
    assert!(
        matches!(&problem, Some(TreeError::MissingDirectory { path, digest }) if path == "a" && *digest == a),
        "{problem:?}"
    );
    far.delete(&root).await.unwrap();
    let problem = Tree::problem(&tiered, &root).await.unwrap();
    assert!(
        matches!(&problem, Some(TreeError::MissingDirectory { path, .. }) if path == "."),
        "{problem:?}"
    );
}
