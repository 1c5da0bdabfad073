//! casket on a real distributed object store: a three-node Garage cluster on loopback
//! (replication factor 3, quorums of two), started by `support::garage`.
//!
//! * The store conformance suite passes against the S3 backend and against a tiered store
//!   (local disk in front of S3); refs and records written through one node are read through
//!   another.
//! * Two `casket serve` frontends share one bucket, each with its own near disk and its own
//!   Garage node: a tree and its ref pushed through A are pulled through B, with BuildStream
//!   1.6.8's own client and with casket's (Bazel's cold build through A and warm build through B
//!   are in `serve_bazel.rs`).
//! * A Garage node killed during a push and during a pull: both complete, and what was pulled
//!   is verified blob by blob and again through the restarted node.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use casket_model::{DigestFunction, RefName};
use casket_store::{
    BlobStore, BlobStoreExt, DiskOptions, DiskStore, ObjectRecords, ObjectRefs, ObjectStoreBlobs,
    RecordStore, RefStore, TOUCH_INTERVAL, TieredStore,
};
use support::garage::Garage;
use support::tree::Tree;
use support::{
    buildstream1, casket, garage_s3, ok, peer_available, tiered_frontend as frontend, tiered_frontend_with,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn s3_and_tiered_stores_pass_the_conformance_suite_on_garage() {
    let Some(garage) = Garage::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let through_1 = garage_s3(&garage, 1).connect().unwrap();
        let through_2 = garage_s3(&garage, 2).connect().unwrap();
        casket_store::conformance::run_all(&ObjectStoreBlobs::new(through_1.clone(), "conformance-s3")).await;

        let records = ObjectRecords::new(through_1.clone(), "conformance-records", "ac");
        casket_store::conformance::run_records(&records, TOUCH_INTERVAL).await;
        let refs = ObjectRefs::new(through_2.clone(), "conformance-refs");
        let raw = ObjectRecords::new(through_2.clone(), "conformance-refs", "refs");
        casket_store::conformance::run_refs(&refs, Some(&raw), TOUCH_INTERVAL).await;

        let near = DiskStore::open(dir.path().join("near"), DiskOptions::default()).unwrap();
        let far = Arc::new(ObjectStoreBlobs::new(through_2.clone(), "conformance-tiered"));
        casket_store::conformance::run_all(&TieredStore::new(Arc::new(near), far, None)).await;

        // Written through node 1, read through node 2: blobs, refs and records.
        let (a, b) = (
            ObjectStoreBlobs::new(through_1.clone(), "shared"),
            ObjectStoreBlobs::new(through_2.clone(), "shared"),
        );
        let digest = a
            .put_bytes(DigestFunction::Sha256, Bytes::from_static(b"seen by all"))
            .await
            .unwrap();
        assert_eq!(
            b.get_bytes(&digest).await.unwrap(),
            Some(Bytes::from_static(b"seen by all"))
        );
        let name = RefName::new("project/element/key").unwrap();
        ObjectRefs::new(through_1.clone(), "shared")
            .set(&name, &digest)
            .await
            .unwrap();
        assert_eq!(
            ObjectRefs::new(through_2.clone(), "shared")
                .get(&name)
                .await
                .unwrap(),
            Some(digest)
        );
        ObjectRecords::new(through_1, "shared", "ac")
            .put("sha256/x-1", Bytes::from_static(b"r"))
            .await
            .unwrap();
        let record = ObjectRecords::new(through_2, "shared", "ac")
            .get("sha256/x-1")
            .await
            .unwrap();
        assert_eq!(record, Some(Bytes::from_static(b"r")));
    });
}

/// How many incomplete multipart uploads Garage had to abort (none, if casket aborted its own).
fn leftover_uploads(garage: &Garage) -> String {
    let out = garage.cli(&[
        "bucket",
        "cleanup-incomplete-uploads",
        "--older-than",
        "0s",
        garage.bucket(),
    ]);
    // "<bucket id>: no uploads deleted" or "<bucket id>: N uploads deleted".
    let words: Vec<&str> = out.split_whitespace().collect();
    match words.iter().position(|w| *w == "uploads") {
        Some(i) if i > 0 && words[i - 1] == "no" => "0".to_owned(),
        Some(i) if i > 0 => words[i - 1].to_owned(),
        _ => panic!("unexpected output: {out}"),
    }
}

#[test]
fn a_large_upload_that_does_not_match_or_is_abandoned_is_aborted_and_never_visible() {
    let Some(garage) = Garage::start() else { return };
    runtime().block_on(async {
        let store = ObjectStoreBlobs::new(garage_s3(&garage, 1).connect().unwrap(), "aborts");
        let data = vec![5u8; 20 << 20];
        let right = casket_model::Digest::of(DigestFunction::Sha256, &data);
        let wrong = casket_model::Digest::new(DigestFunction::Sha256, [0; 32], right.size()).unwrap();
        let mut writer = store.begin_write(&wrong).await.unwrap();
        for chunk in data.chunks(1 << 20) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert!(matches!(
            writer.commit().await,
            Err(casket_store::StoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.find_missing_uncached(&[wrong]).await.unwrap(), vec![wrong]);

        let mut abandoned = store.begin_write(&right).await.unwrap();
        abandoned
            .write(Bytes::copy_from_slice(&data[..12 << 20]))
            .await
            .unwrap();
        drop(abandoned);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(store.find_missing_uncached(&[right]).await.unwrap(), vec![right]);
    });
    assert_eq!(
        leftover_uploads(&garage),
        "0",
        "casket left multipart uploads behind"
    );
}

/// `casket capture DIR` into `store`; the root digest.
fn capture(store: &Path, dir: &Path) -> String {
    ok(casket(store).arg("capture").arg(dir)).trim().to_owned()
}

#[test]
fn a_tree_pushed_through_one_frontend_is_pulled_through_another() {
    let Some(garage) = Garage::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    Tree {
        files: 500,
        large: (1, 20_000_000),
        ..Tree::default()
    }
    .write(&src);
    // B signs with credentials from its environment, A with those in its file.
    let (a, b) = (
        frontend(&garage, 1, dir.path(), "a"),
        tiered_frontend_with(&garage, 2, dir.path(), "b", false),
    );
    ok(casket(&dir.path().join("client-a"))
        .args(["push", "--remote", &a.url, "--ref", "app/main"])
        .arg(&src));
    let out = dir.path().join("out");
    ok(casket(&dir.path().join("client-b"))
        .args(["pull", "--remote", &b.url, "app/main"])
        .arg(&out));
    assert_eq!(
        capture(&dir.path().join("check"), &out),
        capture(&dir.path().join("check"), &src)
    );
    // B answers from its near disk now, A never read any of it back.
    assert!(
        std::fs::read_dir(dir.path().join("b-near/cas/sha256"))
            .unwrap()
            .count()
            > 0
    );
}

#[test]
fn buildstream_1_pushes_through_one_frontend_and_pulls_through_another() {
    if !peer_available("BuildStream 1.6.8", buildstream1()) {
        return;
    }
    let Some(garage) = Garage::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    Tree {
        dirs: 30,
        large: (2, 3_000_000),
        ..Tree::default()
    }
    .write(&src);
    let (a, b) = (
        frontend(&garage, 1, dir.path(), "a"),
        frontend(&garage, 2, dir.path(), "b"),
    );
    let client = support::bst1_client;
    let repo = dir.path().join("repo");
    ok(client()
        .args(["import", "--repo"])
        .arg(&repo)
        .arg(&src)
        .args(["--ref", "p/hello/key"]));
    let pushed =
        ok(client()
            .args(["push", "--repo"])
            .arg(&repo)
            .args(["--url", &a.url, "--ref", "p/hello/key"]));
    assert!(pushed.contains("pushed=True"), "{pushed}");
    let checkout = dir.path().join("checkout");
    let pulled = ok(client()
        .args(["pull", "--repo"])
        .arg(dir.path().join("repo2"))
        .args(["--url", &b.url, "--ref", "p/hello/key", "--checkout"])
        .arg(&checkout));
    assert!(pulled.contains("PHASE pull"), "{pulled}");
    assert_eq!(
        capture(&dir.path().join("check"), &checkout),
        capture(&dir.path().join("check"), &src)
    );
}

/// Runs `cmd` in the background, kills Garage node `victim` once it has run `after`, and
/// returns its stdout once it exits successfully.
fn with_node_killed(garage: &mut Garage, victim: usize, after: Duration, mut cmd: Command) -> String {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    thread::sleep(after);
    let running = garage.health(1);
    garage.kill(victim);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed with node {victim} killed (cluster was {running}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_node_killed_during_a_push_and_a_pull_loses_nothing() {
    let Some(mut garage) = Garage::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    Tree {
        files: 3000,
        dirs: 60,
        large: (2, 40_000_000),
        ..Tree::default()
    }
    .write(&src);
    let root = capture(&dir.path().join("client"), &src);
    let (a, b) = (
        frontend(&garage, 1, dir.path(), "a"),
        frontend(&garage, 2, dir.path(), "b"),
    );

    let mut push = casket(&dir.path().join("client"));
    push.args(["push", "--remote", &a.url, "--ref", "app/killed", &root]);
    with_node_killed(&mut garage, 3, Duration::from_millis(700), push);
    assert_eq!(garage.health(1), "degraded");
    garage.restart(3);

    let mut pull = casket(&dir.path().join("pulled"));
    pull.args(["pull", "--remote", &b.url, "app/killed"]);
    with_node_killed(&mut garage, 3, Duration::from_millis(700), pull);
    ok(casket(&dir.path().join("pulled")).arg("fsck"));
    let out = dir.path().join("out");
    ok(casket(&dir.path().join("pulled"))
        .args(["checkout", &root])
        .arg(&out));
    assert_eq!(capture(&dir.path().join("check"), &out), root);

    // The node that missed writes catches up: a frontend on it serves the whole tree.
    garage.restart(3);
    let c = frontend(&garage, 3, dir.path(), "c");
    ok(casket(&dir.path().join("pulled-c")).args(["pull", "--remote", &c.url, "app/killed"]));
    ok(casket(&dir.path().join("pulled-c")).arg("fsck"));
}
