//! BuildStream 1.6.8's own client (shared/peers/bst1/client.py, which drives CASCache and
//! CASRemote) against `casket serve`: push a tree with a ref, push it again (FindMissingBlobs
//! only), pull it into a fresh cache, check out and verify the root digest: with the Remote
//! Asset service (the client then stores refs as asset URIs) and without it (the client then
//! uses BuildStream's ReferenceStorage).
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use support::tree::Tree;
use support::{Serve, bst1_client as client, buildstream1, ok, peer_available, run};

/// The `RESULT {json}` line client.py ends with.
fn result(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

fn phase<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("PHASE {name} ")))
        .unwrap_or_else(|| panic!("no {name} phase in:\n{stdout}"))
}

/// Pushes, re-pushes, pulls and verifies a tree through a server started with `extra`;
/// `asset_mode` says which protocol the client must have chosen.
fn round_trip(extra: &[&str], asset_mode: bool) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // Small files for the batches, two files over 1 MiB for ByteStream.
    Tree {
        files: 3000,
        dirs: 60,
        large: (2, 3_000_000),
        ..Tree::default()
    }
    .write(&src);
    let mut args = vec!["--allow-push"];
    args.extend_from_slice(extra);
    let server = Serve::start(&dir.path().join("store"), &args);

    let out = ok(client()
        .args([
            "roundtrip",
            "--url",
            &server.url,
            "--verify",
            "--repush",
            "--work",
        ])
        .arg(dir.path().join("work"))
        .arg(&src));
    let connect = phase(&out, "connect-push");
    assert!(
        connect.contains(&format!(
            "asset_fetch={}",
            if asset_mode { "True" } else { "False" }
        )),
        "{connect}"
    );
    let push = phase(&out, "push");
    assert!(push.contains("pushed=True"), "{push}");
    let refs_rpc = if asset_mode {
        "Push.PushDirectory"
    } else {
        "ReferenceStorage.UpdateReference"
    };
    assert!(push.contains(refs_rpc), "{push}");
    let repush = phase(&out, "repush");
    assert!(
        !repush.contains("BatchUpdateBlobs") && !repush.contains("ByteStream.Write"),
        "{repush}"
    );
    assert!(phase(&out, "verify").contains("ok=True"), "{out}");
    let digest = |name| {
        phase(&out, name)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("digest="))
            .unwrap_or_else(|| panic!("no digest in the {name} phase"))
            .to_owned()
    };
    assert_eq!(digest("pull"), digest("import"));
    let result = result(&out);
    assert!(
        result["phases"].as_array().is_some_and(|p| p.len() >= 6),
        "{result}"
    );
}

#[test]
fn buildstream_1_round_trips_through_remote_asset() {
    if peer_available("BuildStream 1.6.8", buildstream1()) {
        round_trip(&[], true);
    }
}

#[test]
fn buildstream_1_round_trips_through_reference_storage() {
    if peer_available("BuildStream 1.6.8", buildstream1()) {
        round_trip(&["--no-remote-asset"], false);
    }
}

#[test]
fn buildstream_1_cannot_push_to_a_read_only_casket() {
    if !peer_available("BuildStream 1.6.8", buildstream1()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    Tree {
        files: 50,
        size: 100,
        dirs: 2,
        ..Tree::default()
    }
    .write(&src);
    let store = dir.path().join("store");
    let server = Serve::start(&store, &[]);
    let repo = dir.path().join("repo");
    ok(client()
        .args(["import", "--repo"])
        .arg(&repo)
        .arg(&src)
        .args(["--ref", "p/e/k"]));
    let push =
        run(client()
            .args(["push", "--repo"])
            .arg(&repo)
            .args(["--url", &server.url, "--ref", "p/e/k"]));
    let stdout = String::from_utf8_lossy(&push.stdout);
    assert!(
        !push.status.success() || stdout.contains("pushed=False"),
        "a read-only server accepted a push:\n{stdout}"
    );
    let blobs: Value = serde_json::from_str(&ok(support::casket(&store).args(["du", "--json"]))).unwrap();
    assert_eq!(blobs["blobs"], 0, "nothing was stored");
}
