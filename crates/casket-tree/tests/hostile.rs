//! Checkout of hostile trees and into hostile targets: refused with an error naming the path,
//! and nothing is ever written outside the target.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use casket_model::proto::reapi;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, BlobStoreExt, DiskOptions, DiskStore};
use casket_tree::{CaptureOptions, CheckoutOptions, TreeError, capture, checkout};
use prost::Message;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn BlobStore>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DiskStore::open(dir.path().join("store"), DiskOptions::default()).unwrap());
        Fixture { dir, store }
    }

    async fn put(&self, data: &[u8]) -> Digest {
        self.store
            .put_bytes(DigestFunction::Sha256, Bytes::copy_from_slice(data))
            .await
            .unwrap()
    }

    async fn put_dir(&self, dir: &reapi::Directory) -> Digest {
        self.put(&dir.encode_to_vec()).await
    }

    /// Checks `root` out into a fresh target inside a sandbox folder and returns the error. The
    /// sandbox must afterwards hold nothing but the (empty or partial) target.
    async fn refused(&self, root: &Digest) -> TreeError {
        let sandbox = self.dir.path().join("sandbox");
        let _ = fs::remove_dir_all(&sandbox);
        fs::create_dir(&sandbox).unwrap();
        let target = sandbox.join("target");
        let err = checkout(&self.store, root, &target, &CheckoutOptions::default(), &())
            .await
            .unwrap_err();
        let outside: Vec<_> = fs::read_dir(&sandbox)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            outside.iter().all(|n| n == "target"),
            "written outside the target: {outside:?}"
        );
        assert!(
            !target.exists(),
            "nothing is written before the tree is validated"
        );
        err
    }
}

fn file_node(name: &str, digest: Digest) -> reapi::FileNode {
    reapi::FileNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
        ..Default::default()
    }
}

fn dir_node(name: &str, digest: Digest) -> reapi::DirectoryNode {
    reapi::DirectoryNode {
        name: name.into(),
        digest: Some(digest.to_proto()),
    }
}

#[tokio::test]
async fn dot_dot_entries_are_refused_naming_the_path() {
    let f = Fixture::new();
    let content = f.put(b"evil").await;
    for name in ["../x", "..", ".", "", "a/b", "/abs", "nul\0"] {
        let inner = f
            .put_dir(&reapi::Directory {
                files: vec![file_node(name, content)],
                ..Default::default()
            })
            .await;
        let root = f
            .put_dir(&reapi::Directory {
                directories: vec![dir_node("sub", inner)],
                ..Default::default()
            })
            .await;
        let err = f.refused(&root).await;
        assert!(
            matches!(err, TreeError::InvalidDirectory { ref path, .. } if path == "sub"),
            "{name:?}: {err}"
        );
        assert!(err.to_string().starts_with("sub: invalid directory"), "{err}");
    }
}

#[tokio::test]
async fn unsorted_and_duplicate_names_are_refused() {
    let f = Fixture::new();
    let a = f.put(b"a").await;
    for files in [
        vec![file_node("b", a), file_node("a", a)],
        vec![file_node("a", a), file_node("a", a)],
    ] {
        let root = f
            .put_dir(&reapi::Directory {
                files,
                ..Default::default()
            })
            .await;
        let err = f.refused(&root).await;
        assert!(
            matches!(err, TreeError::InvalidDirectory { ref path, .. } if path == "."),
            "{err}"
        );
    }
}

#[tokio::test]
async fn wrong_child_sizes_are_refused() {
    let f = Fixture::new();
    let child = f.put_dir(&reapi::Directory::default()).await;
    let real_child = f
        .put_dir(&reapi::Directory {
            files: vec![file_node("f", f.put(b"content").await)],
            ..Default::default()
        })
        .await;
    let lying_dir = Digest::new(DigestFunction::Sha256, *real_child.hash(), real_child.size() + 1).unwrap();
    let root = f
        .put_dir(&reapi::Directory {
            directories: vec![dir_node("d", lying_dir), dir_node("e", child)],
            ..Default::default()
        })
        .await;
    let err = f.refused(&root).await;
    assert!(err.to_string().starts_with("d: "), "{err}");
    assert!(err.to_string().contains("is stored with size"), "{err}");

    let content = f.put(b"12345").await;
    let lying_file = Digest::new(DigestFunction::Sha256, *content.hash(), 4).unwrap();
    let root = f
        .put_dir(&reapi::Directory {
            files: vec![file_node("short", lying_file)],
            ..Default::default()
        })
        .await;
    let err = f.refused(&root).await;
    assert!(err.to_string().starts_with("short: "), "{err}");
}

#[tokio::test]
async fn missing_content_is_refused_before_writing() {
    let f = Fixture::new();
    let absent = Digest::of(DigestFunction::Sha256, b"never stored");
    let inner = f
        .put_dir(&reapi::Directory {
            files: vec![file_node("gone", absent)],
            ..Default::default()
        })
        .await;
    let root = f
        .put_dir(&reapi::Directory {
            directories: vec![dir_node("a", inner)],
            ..Default::default()
        })
        .await;
    let err = f.refused(&root).await;
    assert!(
        matches!(err, TreeError::MissingFile { ref path, .. } if path == "a/gone"),
        "{err}"
    );
}

#[tokio::test]
async fn symlinked_or_occupied_targets_are_refused() {
    let f = Fixture::new();
    let src = f.dir.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/passwd"), b"not yours").unwrap();
    let captured = capture(f.store.as_ref(), &src, &CaptureOptions::default(), &())
        .await
        .unwrap();
    let outside = f.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();

    // The target itself is a symlink to a directory elsewhere.
    let link = f.dir.path().join("link-target");
    symlink(&outside, &link).unwrap();
    let err = checkout(&f.store, &captured.root, &link, &CheckoutOptions::default(), &())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");

    // The target holds a planted symlink where the tree has a directory.
    let planted = f.dir.path().join("planted");
    fs::create_dir(&planted).unwrap();
    symlink(&outside, planted.join("etc")).unwrap();
    let err = checkout(
        &f.store,
        &captured.root,
        &planted,
        &CheckoutOptions::default(),
        &(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("is not empty"), "{err}");

    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through a symlink"
    );
}

#[tokio::test]
async fn symlinks_in_the_tree_are_created_never_followed() {
    // A tree holding `etc -> /outside` and then `etc/passwd` is impossible (names are unique),
    // but a symlink and a directory that resolve to the same place are not: the checkout must
    // create the symlink verbatim and write the directory's files in the directory only.
    let f = Fixture::new();
    let outside = f.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let src = f.dir.path().join("src");
    fs::create_dir_all(src.join("real")).unwrap();
    fs::write(src.join("real/file"), b"inside").unwrap();
    symlink(&outside, src.join("escape")).unwrap();
    symlink("escape/../../x", src.join("relative")).unwrap();
    let captured = capture(f.store.as_ref(), &src, &CaptureOptions::default(), &())
        .await
        .unwrap();
    let dest = f.dir.path().join("dest");
    checkout(&f.store, &captured.root, &dest, &CheckoutOptions::default(), &())
        .await
        .unwrap();
    assert_eq!(fs::read_link(dest.join("escape")).unwrap(), outside);
    assert_eq!(
        fs::read_link(dest.join("relative")).unwrap(),
        Path::new("escape/../../x")
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}
