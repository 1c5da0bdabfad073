//! Pants 2.17.1 (PyPI, installed by .ci/peers/pants.sh) with `casket serve` as its remote cache
//! over gRPC: a cold run of a `shell_command` writes its result to the cache; after Pants' local
//! state is wiped (local store, named caches, .pants.d, dist; pantsd is off), the same run is a
//! remote cache hit, by Pants' own counters, with the first run's output.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use support::{Serve, peer_available};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pants");

/// The venv's own `pants` entry point: the scie launcher would download Pants.
fn pants_bin() -> PathBuf {
    let peers = std::env::var_os("CASKET_PEERS_DIR").unwrap_or_else(|| "/var/cache/casket-peers".into());
    Path::new(&peers).join("pants-2.17.1/venv/bin/pants")
}

/// Why Pants 2.17.1 cannot be used here, if it cannot. Asks from an empty build root in
/// `scratch`.
fn pants_2_17_1(scratch: &Path) -> Option<String> {
    fs::create_dir_all(scratch).unwrap();
    fs::write(scratch.join("pants.toml"), "").unwrap();
    let out = match pants(scratch, scratch).arg("--version").output() {
        Ok(out) => out,
        Err(e) => return Some(format!("{}: {e}", pants_bin().display())),
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (version != "2.17.1").then(|| {
        format!(
            "{} --version says {version:?}: {}",
            pants_bin().display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `pants` in `workspace`, without pantsd or rc files, with its local store, named caches and
/// sandboxes under `state` rather than in ~/.cache/pants and /tmp.
fn pants(workspace: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(pants_bin());
    cmd.current_dir(workspace)
        .args(["--no-pantsd", "--no-pantsrc"])
        .arg(format!(
            "--local-store-dir={}",
            state.join("lmdb_store").display()
        ))
        .arg(format!(
            "--named-caches-dir={}",
            state.join("named_caches").display()
        ))
        .arg(format!("--local-execution-root-dir={}", state.display()));
    cmd
}

/// Runs `export-codegen //:gen` with the stats log, asserts it succeeded without warnings, and
/// returns its counters and the stamp it wrote.
fn run(workspace: &Path, state: &Path, address: &str, what: &str) -> (BTreeMap<String, u64>, String) {
    fs::create_dir_all(state).unwrap();
    let started = Instant::now();
    let out = pants(workspace, state)
        .arg(format!("--remote-store-address={address}"))
        .args(["--stats-log", "export-codegen", "//:gen"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: pants failed with {}:\n{stderr}",
        out.status
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("[WARN]") || l.contains("[ERROR]"))
        .collect();
    assert!(warnings.is_empty(), "{what}: pants warned:\n{stderr}");
    let counters: BTreeMap<String, u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect();
    assert!(
        counters.contains_key("remote_cache_requests"),
        "{what}: no counters in:\n{stderr}"
    );
    let codegen = workspace.join("dist/codegen");
    assert_eq!(
        fs::read_to_string(codegen.join("out.txt")).unwrap(),
        "hello from pants\n"
    );
    let stamp = fs::read_to_string(codegen.join("sub/stamp.txt")).unwrap();
    let remote: Vec<String> = counters
        .iter()
        .filter(|(k, v)| k.starts_with("remote_cache") && **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!("{what} ({:.1?}): {}", started.elapsed(), remote.join(" "));
    (counters, stamp)
}

#[test]
fn pants_2_17_1_uses_casket_as_its_remote_cache() {
    let dir = tempfile::tempdir().unwrap();
    if !peer_available("pants 2.17.1", pants_2_17_1(&dir.path().join("probe"))) {
        return;
    }
    let workspace = dir.path().join("workspace");
    fs::create_dir(&workspace).unwrap();
    for file in ["pants.toml", "BUILD"] {
        fs::copy(Path::new(FIXTURE).join(file), workspace.join(file)).unwrap();
    }
    let state = dir.path().join("state");
    let store = dir.path().join("store");
    let server = Serve::start(&store, &["--allow-push"]);
    let address = server.url.replace("http://", "grpc://");

    let (cold, stamp) = run(&workspace, &state, &address, "cold run");
    assert_eq!(cold["remote_cache_requests_uncached"], 1, "{cold:?}");
    assert_eq!(cold["remote_cache_requests_cached"], 0, "{cold:?}");
    assert_eq!(cold["remote_cache_write_successes"], 1, "{cold:?}");
    assert_eq!(cold["remote_cache_write_errors"], 0, "{cold:?}");
    let results = fs::read_dir(store.join("ac/sha256")).unwrap().count();
    assert_eq!(results, 1, "one action result in the store");

    for wiped in [&state, &workspace.join(".pants.d"), &workspace.join("dist")] {
        fs::remove_dir_all(wiped).unwrap();
    }

    let (warm, warm_stamp) = run(&workspace, &state, &address, "run after wiping local state");
    assert_eq!(
        warm["remote_cache_requests_cached"], 1,
        "a remote cache hit: {warm:?}"
    );
    assert_eq!(warm["remote_cache_requests_uncached"], 0, "{warm:?}");
    assert_eq!(warm["remote_cache_read_errors"], 0, "{warm:?}");
    assert_eq!(
        warm["remote_cache_speculation_remote_completed_first"], 1,
        "{warm:?}"
    );
    assert_eq!(warm["remote_cache_write_attempts"], 0, "{warm:?}");
    assert_eq!(warm_stamp, stamp, "the output is the cold run's, from the cache");
}
