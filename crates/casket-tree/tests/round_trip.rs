//! Capture -> checkout -> capture gives the same root, in both checkout modes, without ever
//! modifying the store's objects.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;

use casket_model::{DigestFunction, Node};
use casket_store::{BlobStore, DiskOptions, DiskStore, MemoryStore};
use casket_tree::{CaptureOptions, CheckoutMode, CheckoutOptions, Tree, capture, checkout};
use proptest::prelude::*;

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Files, an executable, an empty file, an empty directory, nested directories, relative,
/// absolute and dangling symlinks, a symlink to a directory.
fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("usr/share/empty")).unwrap();
    write(&root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n", 0o755);
    write(&root.join("usr/bin/data"), &vec![3u8; 200_000], 0o644);
    write(&root.join("README"), b"hello", 0o600);
    write(&root.join("empty"), b"", 0o644);
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("/etc/passwd", root.join("absolute")).unwrap();
    symlink("../nowhere", root.join("usr/dangling")).unwrap();
}

async fn disk_store(dir: &Path) -> Arc<dyn BlobStore> {
    Arc::new(DiskStore::open(dir.join("store"), DiskOptions::default()).unwrap())
}

#[tokio::test]
async fn round_trip_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let store = disk_store(dir.path()).await;
    let src = dir.path().join("src");
    sample_tree(&src);
    let captured = capture(store.as_ref(), &src, &CaptureOptions::default(), &())
        .await
        .unwrap();
    assert_eq!(
        (captured.files, captured.directories, captured.symlinks),
        (4, 5, 3)
    );

    for (name, mode) in [("linked", CheckoutMode::Hardlink), ("copied", CheckoutMode::Copy)] {
        let dest = dir.path().join(name);
        let options = CheckoutOptions {
            mode,
            ..Default::default()
        };
        let done = checkout(&store, &captured.root, &dest, &options, &())
            .await
            .unwrap();
        assert_eq!(done.linked + done.copied, 4);
        assert_eq!(fs::read_link(dest.join("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(
            fs::read_link(dest.join("absolute")).unwrap(),
            Path::new("/etc/passwd")
        );
        let tool = fs::metadata(dest.join("usr/bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(tool & 0o100, 0o100, "{name}: executable bit");
        assert!(dest.join("usr/share/empty").is_dir());
        let again = capture(store.as_ref(), &dest, &CaptureOptions::default(), &())
            .await
            .unwrap();
        assert_eq!(again.root, captured.root, "{name}: recapture gives the same root");
    }

    // Hardlinked objects are still read-only and non-executable: checkout never chmods them.
    let linked = fs::metadata(dir.path().join("linked/usr/bin/data")).unwrap();
    assert_eq!(linked.permissions().mode() & 0o777, 0o444);
    assert!(std::os::unix::fs::MetadataExt::nlink(&linked) >= 2);
    let tool = fs::metadata(dir.path().join("linked/usr/bin/tool")).unwrap();
    assert_eq!(
        tool.permissions().mode() & 0o777,
        0o555,
        "executables link the executable variant"
    );
    assert!(std::os::unix::fs::MetadataExt::nlink(&tool) >= 2);
    let copied = fs::metadata(dir.path().join("copied/usr/bin/data")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&copied), 1);
}

#[tokio::test]
async fn checkout_from_a_store_without_local_files_copies() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let src = dir.path().join("src");
    sample_tree(&src);
    let captured = capture(store.as_ref(), &src, &CaptureOptions::default(), &())
        .await
        .unwrap();
    let dest = dir.path().join("dest");
    let done = checkout(&store, &captured.root, &dest, &CheckoutOptions::default(), &())
        .await
        .unwrap();
    assert_eq!((done.linked, done.copied), (0, 4));
    assert_eq!(fs::read(dest.join("usr/bin/data")).unwrap(), vec![3u8; 200_000]);
}

#[tokio::test]
async fn properties_are_captured_only_when_asked_and_restored() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = disk_store(dir.path()).await;
    let src = dir.path().join("src");
    sample_tree(&src);
    let plain = capture(store.as_ref(), &src, &CaptureOptions::default(), &())
        .await
        .unwrap();
    let options = CaptureOptions {
        mtime: true,
        unix_mode: true,
        ..Default::default()
    };
    let with = capture(store.as_ref(), &src, &options, &()).await.unwrap();
    assert_ne!(plain.root, with.root);
    let tree = Tree::load(store.as_ref(), &with.root, 4).await.unwrap();
    let (_, readme) = tree.files().find(|(p, _)| p == "README").unwrap();
    assert_eq!(readme.properties.unix_mode, Some(0o600));

    let dest = dir.path().join("dest");
    checkout(&store, &with.root, &dest, &CheckoutOptions::default(), &())
        .await
        .unwrap();
    let restored = fs::metadata(dest.join("README")).unwrap();
    let original = fs::metadata(src.join("README")).unwrap();
    assert_eq!(restored.mode() & 0o7777, 0o600);
    assert_eq!(
        (restored.mtime(), restored.mtime_nsec()),
        (original.mtime(), original.mtime_nsec())
    );
    let again = capture(store.as_ref(), &dest, &options, &()).await.unwrap();
    let again_tree = Tree::load(store.as_ref(), &again.root, 4).await.unwrap();
    let files = |t: &Tree| t.files().map(|(p, f)| (p, f.clone())).collect::<Vec<_>>();
    assert_eq!(files(&again_tree), files(&tree));
}

#[tokio::test]
async fn walk_is_depth_first_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = disk_store(dir.path()).await;
    let src = dir.path().join("src");
    sample_tree(&src);
    let captured = capture(store.as_ref(), &src, &CaptureOptions::default(), &())
        .await
        .unwrap();
    let tree = Tree::load(store.as_ref(), &captured.root, 4).await.unwrap();
    let paths: Vec<String> = tree.walk().into_iter().map(|(p, _)| p).collect();
    let expected = [
        "README",
        "absolute",
        "bin",
        "empty",
        "usr",
        "usr/bin",
        "usr/bin/data",
        "usr/bin/tool",
        "usr/dangling",
        "usr/share",
        "usr/share/empty",
    ];
    assert_eq!(paths, expected);
    assert!(matches!(tree.walk()[4].1, Node::Directory(_)));
}

#[tokio::test]
async fn blake3_trees_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = disk_store(dir.path()).await;
    let src = dir.path().join("src");
    sample_tree(&src);
    let options = CaptureOptions {
        function: DigestFunction::Blake3,
        ..Default::default()
    };
    let captured = capture(store.as_ref(), &src, &options, &()).await.unwrap();
    assert_eq!(captured.root.function(), DigestFunction::Blake3);
    let dest = dir.path().join("dest");
    checkout(&store, &captured.root, &dest, &CheckoutOptions::default(), &())
        .await
        .unwrap();
    let again = capture(store.as_ref(), &dest, &options, &()).await.unwrap();
    assert_eq!(again.root, captured.root);
}

/// A random tree: names from a small alphabet so collisions across depths are common.
#[derive(Debug, Clone)]
enum Entry {
    File(Vec<u8>, bool),
    Link(String),
    Dir(Vec<(String, Entry)>),
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    let leaf = prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..64), any::<bool>()).prop_map(|(d, x)| Entry::File(d, x)),
        "[a-c./]{1,6}".prop_map(Entry::Link),
        Just(Entry::Dir(vec![])),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        proptest::collection::vec(("[a-d]{1,2}", inner), 0..6).prop_map(Entry::Dir)
    })
}

fn materialise(path: &Path, entries: &[(String, Entry)]) {
    fs::create_dir_all(path).unwrap();
    for (name, entry) in entries {
        let child = path.join(name);
        if fs::symlink_metadata(&child).is_ok() {
            continue;
        }
        match entry {
            Entry::File(data, x) => write(&child, data, if *x { 0o755 } else { 0o644 }),
            Entry::Link(target) => symlink(target, &child).unwrap(),
            Entry::Dir(inner) => materialise(&child, inner),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_round_trips(entries in proptest::collection::vec(("[a-d]{1,2}", arb_entry()), 0..8)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = disk_store(dir.path()).await;
            let src = dir.path().join("src");
            materialise(&src, &entries);
            let first = capture(store.as_ref(), &src, &CaptureOptions::default(), &()).await.unwrap();
            for (name, mode) in [("a", CheckoutMode::Hardlink), ("b", CheckoutMode::Copy)] {
                let dest = dir.path().join(name);
                let options = CheckoutOptions { mode, ..Default::default() };
                checkout(&store, &first.root, &dest, &options, &()).await.unwrap();
                let again = capture(store.as_ref(), &dest, &CaptureOptions::default(), &()).await.unwrap();
                assert_eq!(again.root, first.root);
            }
        });
    }
}
