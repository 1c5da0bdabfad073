//! `casket serve` on a block store (`[store] kind = "blocks"`), end to end through the binary:
//! push and pull, `/status`, the CLI's `du`, `fsck` and `gc` on it; and SIGKILL under load, after
//! which everything a push reported stored is still there and `fsck` is clean.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::tree::Tree;
use support::{Serve, casket, ok, run};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("casket.toml");
    std::fs::write(
        &config,
        format!(
            "anonymous = \"write\"\n{extra}\n[store]\nkind = \"blocks\"\npath = \"blocks\"\nsmall_blob_limit = \"64K\"\n"
        ),
    )
    .unwrap();
    config
}

fn push(source: &Path, tree: &Path, url: &str) -> Command {
    let mut cmd = casket(source);
    cmd.args(["push", tree.to_str().unwrap(), "--remote", url, "--json"]);
    cmd
}

#[test]
fn a_block_store_serves_and_the_cli_maintains_it() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    Tree {
        files: 2000,
        size: 3000,
        dirs: 40,
        large: (2, 300_000),
        seed: 11,
    }
    .write(&tree);
    let config = write_config(
        dir.path(),
        "quota = \"256M\"\nmonitoring_listen = \"127.0.0.1:0\"",
    );
    let server = Serve::start_with_config(&config, &[], &[]);
    let url = server.url.replace("http://", "grpc://");
    let pushed = json(&ok(&mut push(&dir.path().join("source"), &tree, &url)));
    let root = pushed["root"].as_str().unwrap().to_owned();

    // 2,000 small blobs and some directories, but only a few files in the store.
    let blocks = dir.path().join("blocks/blocks");
    let block_files = std::fs::read_dir(&blocks).unwrap().count();
    assert!(block_files < 10, "{block_files} files in {}", blocks.display());

    let checkout = dir.path().join("checkout");
    ok(casket(&dir.path().join("target"))
        .args(["pull", &root, "--remote", &url])
        .arg(&checkout));
    let same = Command::new("diff")
        .arg("-r")
        .arg(&tree)
        .arg(&checkout)
        .status()
        .unwrap();
    assert!(same.success(), "the pulled tree differs");

    let monitoring = server.monitoring();
    let status = support::http_get(&monitoring, "/status");
    let status = json(&status);
    let namespace = &status["namespaces"][0];
    assert_eq!(namespace["quota_bytes"], 256u64 << 20, "{status}");
    assert!(namespace["blobs"].as_u64().unwrap() > 2000, "{status}");
    drop(server);

    let store = dir.path().join("blocks");
    let du = json(&ok(casket(&store).args(["du", "--json"])));
    assert_eq!(du["blobs"], namespace["blobs"], "{du}");
    let fsck = json(&ok(casket(&store).args(["fsck", "--json"])));
    assert_eq!(fsck["clean"], true, "{fsck}");
    assert_eq!(fsck["blobs"], du["blobs"], "{fsck}");
    // Everything was used just now: a gc within the grace period keeps it all.
    let kept = run(casket(&store).args(["gc", "--quota", "0", "--json"]));
    assert!(!kept.status.success(), "the quota cannot be met");
    assert_eq!(json(&String::from_utf8_lossy(&kept.stdout))["removed_blobs"], 0);
    let gc = json(&ok(
        casket(&store).args(["gc", "--quota", "0", "--grace", "0s", "--json"])
    ));
    assert_eq!(gc["after"]["stored_bytes"], 0, "{gc}");
    let du = json(&ok(casket(&store).args(["du", "--json"])));
    assert_eq!(du["blobs"], 0, "{du}");
}

/// Pushes running while the server is killed with SIGKILL, again and again: a push that
/// reported success must find its whole tree on the restarted server, and the store is clean.
#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let trees: Vec<_> = (0..4)
        .map(|seed| {
            let tree = dir.path().join(format!("tree-{seed}"));
            Tree {
                files: 3000,
                size: 2000,
                dirs: 30,
                large: (1, 200_000),
                seed: 100 + seed,
            }
            .write(&tree);
            tree
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut interrupted = 0;
    for (round, delay_ms) in [40u64, 120, 250, 500].into_iter().enumerate() {
        let server = Serve::start_with_config(&config, &[], &[]);
        let url = server.url.replace("http://", "grpc://");
        let pushes: Vec<Child> = trees
            .iter()
            .enumerate()
            .map(|(i, tree)| {
                push(&dir.path().join(format!("source-{round}-{i}")), tree, &url)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        drop(server); // SIGKILL
        for push in pushes {
            let out = push.wait_with_output().unwrap();
            if out.status.success() {
                acknowledged.push(
                    json(&String::from_utf8_lossy(&out.stdout))["root"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            } else {
                interrupted += 1;
            }
        }
    }
    assert!(
        interrupted > 0,
        "every push finished before the kill: the test proved nothing"
    );
    let store = dir.path().join("blocks");
    let fsck = json(&ok(casket(&store).args(["fsck", "--json"])));
    assert_eq!(fsck["clean"], true, "{fsck}");
    let server = Serve::start_with_config(&config, &[], &[]);
    let url = server.url.replace("http://", "grpc://");
    for (i, root) in acknowledged.iter().enumerate() {
        let checkout = dir.path().join(format!("checkout-{i}"));
        ok(casket(&dir.path().join(format!("check-{i}")))
            .args(["pull", root, "--remote", &url])
            .arg(&checkout));
    }
    // Every tree pushes through to the end after the kills.
    for (i, tree) in trees.iter().enumerate() {
        ok(&mut push(&dir.path().join(format!("final-{i}")), tree, &url));
    }
}
