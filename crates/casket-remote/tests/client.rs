//! The REAPI client against a real casket server on loopback: the store conformance suite,
//! tree push and pull (re-push is FindMissingBlobs only), small batch limits, a server without
//! BatchReadBlobs or GetTree, corrupt blobs, refs both ways, and tokens (and how a refusal
//! reads).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use casket_model::{Digest, DigestFunction, RefName};
use casket_remote::client::transfer::{TransferError, pull_tree, push_tree};
use casket_remote::client::{RemoteCas, RemoteOptions};
use casket_remote::server::{Access, AccessPolicy, ServerOptions};
use casket_store::{BlobStore, BlobStoreExt, DiskOptions, DiskStore, conformance};
use casket_tree::{CaptureOptions, Tree, capture};
use common::{Server, start, start_with};

async fn client(server: &Server) -> RemoteCas {
    RemoteCas::connect(RemoteOptions::new(format!("grpc://{}", server.address)))
        .await
        .unwrap()
}

fn store(dir: &Path, name: &str) -> DiskStore {
    DiskStore::open(dir.join(name), DiskOptions::default()).unwrap()
}

/// A tree with many small files, a few large ones, an executable, symlinks and empty
/// directories, `depth` levels deep; returns its directory.
fn make_tree(dir: &Path, depth: usize, large: usize) -> std::path::PathBuf {
    let root = dir.join("tree");
    let mut path = root.clone();
    for level in 0..depth {
        path = path.join(format!("level{level}"));
        std::fs::create_dir_all(path.join("empty")).unwrap();
        for i in 0..40 {
            let size = (i * 997 + level * 131) % 9000;
            let data: Vec<u8> = (0..size).map(|b| (b * 7 + i + level) as u8).collect();
            std::fs::write(path.join(format!("f{i}")), data).unwrap();
        }
        std::os::unix::fs::symlink("f1", path.join("link")).unwrap();
    }
    for i in 0..large {
        let data: Vec<u8> = (0..(9 << 20) + i).map(|b| (b % 253) as u8 ^ i as u8).collect();
        std::fs::write(root.join(format!("large{i}")), data).unwrap();
    }
    let tool = root.join("tool");
    std::fs::write(&tool, b"#!/bin/sh\necho hi\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&tool).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    root
}

async fn captured(store: &DiskStore, tree: &Path) -> Digest {
    capture(store, tree, &CaptureOptions::default(), &())
        .await
        .unwrap()
        .root
}

async fn assert_complete(store: &DiskStore, root: &Digest) {
    assert!(
        Tree::problem(store, root).await.unwrap().is_none(),
        "the pulled tree is incomplete"
    );
}

#[tokio::test]
async fn the_client_passes_the_store_conformance_suite() {
    let server = start(true).await;
    conformance::run_remote(&client(&server).await).await;
}

#[tokio::test]
async fn trees_push_pull_and_re_push_with_find_missing_only() {
    let server = start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let root = captured(&source, &make_tree(dir.path(), 4, 2)).await;

    let remote = client(&server).await;
    let pushed = push_tree(Arc::new(source.clone()), &remote, &root, &())
        .await
        .unwrap();
    // Only the empty blob (the empty directories) is there already: every server has it.
    assert_eq!(pushed.present, 1);
    assert!(pushed.transferred_blobs > 160);
    assert!(Tree::problem(&server.store, &root).await.unwrap().is_none());

    // Again: the server has everything, so only existence checks go out.
    let again = client(&server).await;
    let before = again.stats().rpcs();
    let repushed = push_tree(Arc::new(source), &again, &root, &()).await.unwrap();
    assert_eq!(repushed.transferred_blobs, 0);
    let mut sent = again.stats().rpcs();
    for (method, count) in before {
        *sent.entry(method).or_default() -= count;
    }
    sent.retain(|_, n| *n > 0);
    assert_eq!(sent.keys().copied().collect::<Vec<_>>(), vec!["FindMissingBlobs"]);

    let target = store(dir.path(), "target");
    let pulled = pull_tree(&remote, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap();
    assert_eq!(pulled.present, 1);
    assert_complete(&target, &root).await;
    // Pulling again fetches nothing.
    let repull = pull_tree(&remote, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap();
    assert_eq!(repull.transferred_blobs, 0);
}

#[tokio::test]
async fn a_64_kib_batch_limit_is_never_exceeded() {
    let options = ServerOptions {
        access: AccessPolicy::new(Access::Write),
        max_batch_bytes: 64 << 10,
        ..ServerOptions::default()
    };
    let server = start_with(options, None).await;
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let root = captured(&source, &make_tree(dir.path(), 3, 0)).await;
    let remote = client(&server).await;
    assert_eq!(remote.limits().batch_bytes, 64 << 10);
    // The server refuses any batch over its limit, so success means none was sent.
    push_tree(Arc::new(source), &remote, &root, &()).await.unwrap();
    let target = store(dir.path(), "target");
    pull_tree(&remote, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap();
    assert_complete(&target, &root).await;
    let rpcs = remote.stats().rpcs();
    assert!(
        rpcs["BatchUpdateBlobs"] > 5 && rpcs["BatchReadBlobs"] > 5,
        "{rpcs:?}"
    );
}

#[tokio::test]
async fn without_batch_reads_or_get_tree_everything_streams_level_by_level() {
    let options = ServerOptions {
        access: AccessPolicy::new(Access::Write),
        disabled_methods: vec![
            "ContentAddressableStorage/BatchReadBlobs".to_owned(),
            "ContentAddressableStorage/GetTree".to_owned(),
        ],
        ..ServerOptions::default()
    };
    let server = start_with(options, None).await;
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let root = captured(&source, &make_tree(dir.path(), 3, 1)).await;
    let remote = client(&server).await;
    assert!(!remote.limits().batch_read);
    push_tree(Arc::new(source), &remote, &root, &()).await.unwrap();
    let target = store(dir.path(), "target");
    pull_tree(&remote, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap();
    assert_complete(&target, &root).await;
    let rpcs = remote.stats().rpcs();
    assert_eq!(rpcs["BatchReadBlobs"], 1, "only the start-up probe: {rpcs:?}");
    assert!(rpcs["ByteStream.Read"] > 100, "{rpcs:?}");
}

#[tokio::test]
async fn pull_rpcs_stay_within_bytes_over_the_batch_limit_plus_depth() {
    let server = start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let depth = 6;
    let root = captured(&source, &make_tree(dir.path(), depth, 0)).await;
    let remote = client(&server).await;
    push_tree(Arc::new(source.clone()), &remote, &root, &())
        .await
        .unwrap();
    let tree = Tree::load(&source, &root, 8).await.unwrap();
    let bytes: u64 = tree.digests().iter().map(Digest::size).sum();

    let puller = client(&server).await;
    let probes = puller.stats().rpcs().values().sum::<u64>();
    let target = store(dir.path(), "target");
    pull_tree(&puller, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap();
    assert_complete(&target, &root).await;
    let rpcs = puller.stats().rpcs();
    let calls = rpcs.values().sum::<u64>() - probes;
    let bound = bytes.div_ceil(puller.limits().batch_bytes) + depth as u64 + 3;
    assert!(
        calls <= bound,
        "{calls} calls for {bytes} bytes, depth {depth}: {rpcs:?}"
    );
}

#[tokio::test]
async fn a_corrupt_blob_from_the_server_is_reported_and_not_stored() {
    let server = start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let tree_dir = dir.path().join("small");
    std::fs::create_dir_all(&tree_dir).unwrap();
    std::fs::write(tree_dir.join("victim"), b"the original content").unwrap();
    let root = captured(&source, &tree_dir).await;
    let remote = client(&server).await;
    push_tree(Arc::new(source), &remote, &root, &()).await.unwrap();

    // Corrupt the server's copy at rest (same size, different bytes).
    let victim = Digest::of(DigestFunction::Sha256, b"the original content");
    let object = server.store.object_path(&victim);
    std::fs::set_permissions(&object, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&object, b"THE ORIGINAL CONTENT").unwrap();

    let target = store(dir.path(), "target");
    let err = pull_tree(&remote, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransferError::Corrupt { expected, .. } if expected == victim),
        "{err}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!target.contains(&victim).await.unwrap());
}

#[tokio::test]
async fn refs_round_trip_through_remote_asset_and_reference_storage() {
    for remote_asset in [true, false] {
        let options = ServerOptions {
            access: AccessPolicy::new(Access::Write),
            remote_asset,
            ..ServerOptions::default()
        };
        let server = start_with(options, None).await;
        let dir = tempfile::tempdir().unwrap();
        let source = store(dir.path(), "source");
        let root = captured(&source, &make_tree(dir.path(), 1, 0)).await;
        let remote = client(&server).await;
        let name = RefName::new("project/element/0123abcd").unwrap();
        assert_eq!(remote.get_ref(&name).await.unwrap(), None);
        push_tree(Arc::new(source), &remote, &root, &()).await.unwrap();
        remote.set_ref(&name, &root).await.unwrap();
        assert_eq!(
            remote.get_ref(&name).await.unwrap(),
            Some(root),
            "remote asset: {remote_asset}"
        );
        let stored_as_ref = server.store.refs_dir().join("project/element/0123abcd").exists();
        assert_eq!(stored_as_ref, !remote_asset);
    }
}

#[tokio::test]
async fn tokens_travel_with_every_request() {
    let mut access = AccessPolicy::new(Access::Read);
    access.add_token("ci-secret", Access::Write);
    let server = start_with(
        ServerOptions {
            access,
            ..ServerOptions::default()
        },
        None,
    )
    .await;
    let url = format!("grpc://{}", server.address);
    let anonymous = RemoteCas::connect(RemoteOptions::new(url.clone())).await.unwrap();
    let data = bytes::Bytes::from_static(b"needs a token");
    let err = anonymous
        .put_bytes(DigestFunction::Sha256, data.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(": PERMISSION_DENIED: "), "{err}");
    // Transfers and refs read the same way, in gRPC's own code names.
    let dir = tempfile::tempdir().unwrap();
    let source = store(dir.path(), "source");
    let root = captured(&source, &make_tree(dir.path(), 1, 0)).await;
    let err = push_tree(Arc::new(source), &anonymous, &root, &())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("remote BatchUpdateBlobs failed: PERMISSION_DENIED: "),
        "{err}"
    );
    let name = RefName::new("project/element/0123abcd").unwrap();
    let err = anonymous.set_ref(&name, &root).await.unwrap_err();
    assert!(err.to_string().contains(" failed: PERMISSION_DENIED: "), "{err}");
    let with_token = RemoteCas::connect(RemoteOptions {
        token: Some("ci-secret".into()),
        ..RemoteOptions::new(url)
    })
    .await
    .unwrap();
    let digest = with_token.put_bytes(DigestFunction::Sha256, data).await.unwrap();
    assert!(server.store.contains(&digest).await.unwrap());
    assert!(with_token.find_missing(&[digest]).await.unwrap().is_empty());
}

#[tokio::test]
async fn large_blobs_travel_in_zstd_when_asked_and_offered() {
    let server = start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("compressible");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..2u8 {
        let data: Vec<u8> = (0..(12 << 20)).map(|b: u32| (b / 4096) as u8 ^ i).collect();
        std::fs::write(tree.join(format!("big{i}")), data).unwrap();
    }
    let source = store(dir.path(), "source");
    let root = captured(&source, &tree).await;
    let remote = RemoteCas::connect(RemoteOptions {
        compression: true,
        ..RemoteOptions::new(format!("grpc://{}", server.address))
    })
    .await
    .unwrap();
    push_tree(Arc::new(source), &remote, &root, &()).await.unwrap();
    let target = store(dir.path(), "target");
    pull_tree(&remote, Arc::new(target.clone()), &root, Arc::new(()))
        .await
        .unwrap();
    assert_complete(&target, &root).await;
    // 24 MiB of blobs crossed the wire in a small fraction of that.
    let metrics = server.metrics.encode();
    let received: f64 = metrics
        .lines()
        .find(|l| l.starts_with("casket_received_bytes_total{method=\"ByteStream/Write\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ByteStream/Write bytes in\n{metrics}"));
    assert!(received < f64::from(4u32 << 20), "{received} bytes on the wire");
}
