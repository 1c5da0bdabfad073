//! `casket push` and `casket pull` end to end through the binary: against `casket serve` and
//! against BuildStream 1.6.8's own artifact server; re-pushes that only ask FindMissingBlobs;
//! refs both ways; a server killed and restarted in the middle of a push; a refusal in gRPC's
//! own terms.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use support::tree::Tree;
use support::{Serve, buildstream1, casket, ok, peer_available, run, shared_dir};

/// RPCs a client sends to get started (negotiation and the ref-service probe).
const STARTUP: &[&str] = &["GetCapabilities", "BatchReadBlobs", "FetchDirectory"];

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Methods the transfer itself used, beyond start-up.
fn transfer_methods(report: &Value) -> Vec<String> {
    report["rpcs"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|m| !STARTUP.contains(&m.as_str()))
        .cloned()
        .collect()
}

/// Every file's relative path, mode bits and content (or symlink target) under `root`.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else {
                let exec = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 != 0;
                format!("{exec} {:x?}", md5ish(&std::fs::read(&path).unwrap()))
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

/// Bytes of the files under `dir`, recursively.
fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map_while(Result::ok)
            .map(|e| match e.metadata() {
                Ok(meta) if meta.is_dir() => walk_bytes(&e.path()),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// A cheap content fingerprint for comparisons.
fn md5ish(data: &[u8]) -> (usize, u64) {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    (data.len(), hash)
}

/// Pushes `tree` to `url` with `--ref`, pulls it by ref into a fresh store and directory,
/// re-pushes, and checks every step.
fn round_trip(dir: &Path, url: &str, tree: &Path) {
    let source = dir.join("source-store");
    let name = "project/element/0a1b2c3d";
    let first = json(&ok(casket(&source).args([
        "push",
        tree.to_str().unwrap(),
        "--remote",
        url,
        "--ref",
        name,
        "--json",
    ])));
    assert!(first["transferred_blobs"].as_u64().unwrap() > 0, "{first}");

    let again = json(&ok(casket(&source).args([
        "push",
        tree.to_str().unwrap(),
        "--remote",
        url,
        "--json",
    ])));
    assert_eq!(again["transferred_blobs"], 0, "{again}");
    assert_eq!(transfer_methods(&again), vec!["FindMissingBlobs"], "{again}");

    let target = dir.join("target-store");
    let checkout = dir.join("checkout");
    let pulled = json(&ok(casket(&target)
        .args(["pull", name, "--remote", url, "--json"])
        .arg(&checkout)));
    assert_eq!(pulled["root"], first["root"]);
    assert_eq!(snapshot(&checkout), snapshot(tree));
    // The local ref now names the pulled tree.
    assert_eq!(
        ok(casket(&target).args(["ref", "get", name])).trim(),
        first["root"]
    );
    let fsck = json(&ok(casket(&target).args(["fsck", "--json"])));
    assert_eq!(fsck["clean"], true, "{fsck}");
}

#[test]
fn push_and_pull_through_casket_serve() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    Tree {
        files: 400,
        seed: 3,
        ..Tree::default()
    }
    .write(&tree);
    let server = Serve::start(&dir.path().join("server"), &["--allow-push"]);
    round_trip(dir.path(), &server.url.replace("http://", "grpc://"), &tree);
}

/// BuildStream 1.6.8's artifact server on a free loopback port, stopped when dropped.
struct Bst1Server {
    child: Child,
    url: String,
}

impl Bst1Server {
    fn start(repo: &Path) -> Bst1Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(shared_dir().join("peers/bst1/serve.sh"))
            .arg(port.to_string())
            .arg(repo)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It announces itself on stderr.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("listening on"));
        assert!(ready, "BuildStream's server did not start");
        std::thread::spawn(move || for _ in lines {});
        Bst1Server {
            child,
            url: format!("grpc://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Bst1Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_and_pull_through_buildstream_1_server() {
    if !peer_available("BuildStream 1.6.8", buildstream1()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    Tree {
        files: 300,
        seed: 5,
        ..Tree::default()
    }
    .write(&tree);
    let server = Bst1Server::start(&dir.path().join("bst1-repo"));
    round_trip(dir.path(), &server.url, &tree);
    // It keeps refs as files under refs/heads.
    assert!(
        dir.path()
            .join("bst1-repo/cas/refs/heads/project/element/0a1b2c3d")
            .exists()
    );
}

#[test]
fn a_refused_push_says_so_with_the_grpc_code_name() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("file"), b"refused").unwrap();
    let server = Serve::start(&dir.path().join("server"), &[]);
    let url = server.url.replace("http://", "grpc://");
    let out =
        run(casket(&dir.path().join("source")).args(["push", tree.to_str().unwrap(), "--remote", &url]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a read-only server took a push: {stderr}");
    assert!(stderr.contains("failed: PERMISSION_DENIED: "), "{stderr}");
}

#[test]
fn a_push_survives_the_server_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    Tree {
        files: 3000,
        seed: 9,
        ..Tree::default()
    }
    .write(&tree);
    for i in 0..4 {
        let data: Vec<u8> = (0..(24 << 20) + i).map(|b| (b % 251) as u8 ^ i as u8).collect();
        std::fs::write(tree.join(format!("big{i}")), data).unwrap();
    }
    let server_store = dir.path().join("server");
    let server = Serve::start(&server_store, &["--allow-push"]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let push = casket(&dir.path().join("source"))
        .args([
            "push",
            tree.to_str().unwrap(),
            "--remote",
            &format!("grpc://{address}"),
            "--retries",
            "8",
            "--jobs",
            "4",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server once the upload is well under way.
    let stored = || walk_bytes(&server_store);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stored() < 8 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(server);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let restarted = Serve::start_at(&server_store, &address, &["--allow-push"]);
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        report["retries"].as_u64().unwrap() > 0,
        "the server went away but nothing was retried: {report}"
    );
    // Everything arrived: pull it back into a fresh store and compare.
    let checkout = dir.path().join("checkout");
    let url = restarted.url.replace("http://", "grpc://");
    ok(casket(&dir.path().join("target"))
        .args(["pull", report["root"].as_str().unwrap(), "--remote", &url])
        .arg(&checkout));
    assert_eq!(snapshot(&checkout), snapshot(&tree));
}

#[test]
fn pulling_10000_files_takes_about_bytes_over_the_batch_limit_calls() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    Tree {
        files: 10_000,
        dirs: 200,
        seed: 11,
        ..Tree::default()
    }
    .write(&tree);
    let server = Serve::start(&dir.path().join("server"), &["--allow-push"]);
    let url = server.url.replace("http://", "grpc://");
    let pushed = json(&ok(casket(&dir.path().join("source")).args([
        "push",
        tree.to_str().unwrap(),
        "--remote",
        &url,
        "--json",
    ])));
    let checkout = dir.path().join("checkout");
    let pulled = json(&ok(casket(&dir.path().join("target"))
        .args([
            "pull",
            pushed["root"].as_str().unwrap(),
            "--remote",
            &url,
            "--json",
        ])
        .arg(&checkout)));
    let depth = snapshot(&checkout)
        .iter()
        .map(|(path, _)| path.matches('/').count() as u64 + 1)
        .max()
        .unwrap();
    let bytes = pulled["transferred_bytes"].as_u64().unwrap();
    let batch_limit = 8u64 << 20;
    let rpcs = pulled["rpcs"].as_object().unwrap();
    let count = |m: &str| rpcs.get(m).and_then(Value::as_u64).unwrap_or(0);
    // One BatchReadBlobs is the start-up probe.
    let calls = count("BatchReadBlobs") - 1 + count("ByteStream.Read") + count("GetTree");
    let bound = bytes.div_ceil(batch_limit) + depth + 3;
    assert!(
        calls <= bound,
        "{calls} calls for {bytes} bytes at depth {depth} (bound {bound}): {pulled}"
    );
    assert_eq!(snapshot(&checkout), snapshot(&tree));
}
