//! The root digest of a captured tree equals the one BuildStream 1.6.8 computes for the same
//! tree (`CASCache._commit_directory`, via the shared `client.py import`). Needs the peer:
//! Debian's `python3-buildstream`. The trees come from the shared `gen_tree.py`, the generator
//! `cargo xtask bench-peers` runs both on; it also has the knobs this test needs for deep
//! chains, empty files and no executables, which the tests' own `support/tree.rs` leaves out.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{buildstream1, casket, ok, peer_available, shared_dir};

/// Generates the tree `args` describe into `out` with the shared `gen_tree.py`.
fn gen_tree(out: &std::path::Path, args: &[&str]) {
    ok(Command::new("python3")
        .arg(shared_dir().join("peers/gen_tree.py"))
        .arg(out)
        .args(args));
}

/// Runs BuildStream's import of `src` into a fresh CAS and returns its root digest.
fn buildstream_root(repo: &std::path::Path, src: &std::path::Path) -> String {
    let out = ok(Command::new("/usr/bin/python3")
        .arg(shared_dir().join("peers/bst1/client.py"))
        .args(["import", "--repo"])
        .arg(repo)
        .arg(src));
    let phase = out
        .lines()
        .find(|l| l.starts_with("PHASE import"))
        .unwrap_or_else(|| panic!("no import phase in:\n{out}"));
    let digest = phase
        .split_whitespace()
        .find_map(|w| w.strip_prefix("digest="))
        .unwrap();
    digest.to_owned()
}

#[test]
fn root_digests_match_buildstream_1_6_8() {
    if !peer_available("BuildStream 1.6.8", buildstream1()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 4] = [
        // Files, 10% executables, relative symlinks (some to directories), nested directories.
        &["--files", "3000", "--size", "1000", "--dirs", "60", "--seed", "7"],
        // Empty files, a deep chain of single-child directories, and files larger than 1 MiB.
        &[
            "--files",
            "200",
            "--size",
            "0",
            "--dirs",
            "30",
            "--fanout",
            "1",
            "--empty",
            "20",
            "--large",
            "2:3000000",
        ],
        // Only empty directories.
        &["--files", "0", "--dirs", "12", "--seed", "3"],
        // A flat directory, no executables.
        &[
            "--files",
            "500",
            "--size",
            "10",
            "--dirs",
            "0",
            "--exec-every",
            "0",
        ],
    ];
    for (i, args) in cases.iter().enumerate() {
        let src = dir.path().join(format!("tree{i}"));
        gen_tree(&src, args);
        let ours = ok(casket(&dir.path().join("store")).arg("capture").arg(&src));
        let theirs = buildstream_root(&dir.path().join(format!("bst-repo{i}")), &src);
        assert_eq!(ours.trim(), theirs, "tree {i} ({args:?})");
    }
}
