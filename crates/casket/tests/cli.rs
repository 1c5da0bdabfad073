//! The CLI end to end: every command, its JSON output and its exit codes.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::tree::Tree;
use support::{casket, ok, run};

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&ok(cmd)).unwrap()
}

fn small_tree(root: &Path, tag: &str) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/run"), format!("#!/bin/sh\necho {tag}\n")).unwrap();
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("data"), tag.repeat(1000)).unwrap();
    std::os::unix::fs::symlink("bin/run", root.join("link")).unwrap();
}

/// Sets the mtime of everything under `path` two days back.
fn age(path: &Path) {
    let status = Command::new("find")
        .arg(path)
        .args([
            "-type",
            "f",
            "-exec",
            "touch",
            "-m",
            "-d",
            "2 days ago",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn capture_ls_checkout_and_refs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = dir.path().join("src");
    small_tree(&src, "a");

    let captured = json(
        casket(&store)
            .args(["capture", "--json", "--ref", "p/e/key"])
            .arg(&src),
    );
    let root = captured["root"].as_str().unwrap().to_owned();
    assert_eq!(
        (captured["files"].as_u64(), captured["symlinks"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(ok(casket(&store).args(["ref", "get", "p/e/key"])).trim(), root);

    let listing = json(casket(&store).args(["ls", "-r", "--json", "p/e/key"]));
    let paths: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["bin", "bin/run", "data", "link"]);
    assert_eq!(listing[1]["executable"], true);
    assert_eq!(listing[3]["target"], "bin/run");
    assert!(ok(casket(&store).args(["ls", &root])).contains("link"));

    let out = dir.path().join("out");
    let done = json(
        casket(&store)
            .args(["checkout", "--copy", "--json", "p/e/key"])
            .arg(&out),
    );
    assert_eq!(done["copied"], 2);
    assert_eq!(fs::read_to_string(out.join("data")).unwrap(), "a".repeat(1000));
    assert_eq!(fs::read_link(out.join("link")).unwrap(), Path::new("bin/run"));

    let refs = json(casket(&store).args(["ref", "list", "--json"]));
    assert_eq!(refs[0]["name"], "p/e/key");
    ok(casket(&store).args(["ref", "set", "p/e/other", "p/e/key"]));
    assert_eq!(ok(casket(&store).args(["ref", "get", "p/e/other"])).trim(), root);
    ok(casket(&store).args(["ref", "rm", "p/e/other"]));
    assert_eq!(
        run(casket(&store).args(["ref", "get", "p/e/other"]))
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn concurrent_processes_capture_into_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = dir.path().join("src");
    Tree {
        files: 3000,
        size: 3000,
        dirs: 30,
        large: (2, 5_000_000),
        ..Tree::default()
    }
    .write(&src);
    let children: Vec<_> = (0..4)
        .map(|_| {
            casket(&store)
                .arg("capture")
                .arg(&src)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let roots: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(roots.windows(2).all(|w| w[0] == w[1]), "{roots:?}");
    let report = json(casket(&store).args(["fsck", "--json"]));
    assert_eq!(report["clean"], true, "{report}");
    assert_eq!(report["blobs"], 3000 + 2 + 31, "every blob stored exactly once");
}

#[test]
fn the_tests_tree_generator_is_deterministic_and_shaped_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let knobs = Tree {
        files: 500,
        size: 10,
        dirs: 20,
        large: (1, 100_000),
        seed: 1,
    };
    let roots: Vec<String> = [knobs, knobs, Tree { seed: 2, ..knobs }]
        .iter()
        .enumerate()
        .map(|(i, tree)| {
            let src = dir.path().join(format!("src{i}"));
            tree.write(&src);
            ok(casket(&store).arg("capture").arg(&src))
        })
        .collect();
    assert_eq!(roots[0], roots[1], "same knobs, same tree");
    assert_ne!(roots[0], roots[2], "another seed, other content");
    // Every file and directory distinct: nothing shared by the two trees, nothing within one.
    let report = json(casket(&store).args(["fsck", "--json"]));
    assert_eq!(report["blobs"], 2 * (501 + 21), "{report}");

    let (mut dirs, mut files, mut executables, mut links, mut dir_links) = (0, 0, 0, 0, 0);
    let mut stack = vec![dir.path().join("src0")];
    while let Some(here) = stack.pop() {
        for entry in fs::read_dir(&here).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_symlink() {
                links += 1;
                assert!(fs::read_link(&path).unwrap().is_relative());
                // And it resolves.
                dir_links += usize::from(fs::metadata(&path).unwrap().is_dir());
            } else if meta.is_dir() {
                dirs += 1;
                stack.push(path);
            } else {
                files += 1;
                executables += usize::from(meta.permissions().mode() & 0o111 != 0);
            }
        }
    }
    assert_eq!((dirs, files, executables, links), (20, 501, 50, 10));
    assert_eq!(dir_links, 1, "symlink 9 points at a directory");
}

#[test]
fn put_and_cat_round_trip_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = dir.path().join("blob");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&file, &data).unwrap();
    let digest = ok(casket(&store).arg("put").arg(&file));
    let cat = Command::new(env!("CARGO_BIN_EXE_casket"))
        .arg("--store")
        .arg(&store)
        .args(["cat", digest.trim()])
        .output()
        .unwrap();
    assert!(cat.status.success());
    assert_eq!(cat.stdout, data);
    let blake = ok(casket(&store)
        .args(["put", "--digest-function", "blake3"])
        .arg(&file));
    assert!(blake.starts_with("blake3:"), "{blake}");

    // Usage errors exit 2, failures exit 1, both with a message.
    for (args, code) in [
        (vec!["cat", "not-a-digest"], 2),
        (vec!["frobnicate"], 2),
        (vec!["gc"], 2),
        (vec!["gc", "--quota", "ten"], 2),
        (vec!["ref", "set", "../escape", "p"], 2),
        (vec!["ref", "set", "/abs", "p"], 2),
        (vec!["checkout", "no/such/ref", "x"], 1),
        (
            vec![
                "cat",
                "0000000000000000000000000000000000000000000000000000000000000000/1",
            ],
            1,
        ),
    ] {
        let out = run(casket(&store).args(&args));
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} gave no message");
    }
}

#[test]
fn gc_expires_lru_but_keeps_recent_refs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    for tag in ["keep", "old"] {
        let src = dir.path().join(tag);
        small_tree(&src, tag);
        ok(casket(&store)
            .args(["capture", "--ref", &format!("{tag}/tree")])
            .arg(&src));
    }
    let loose = dir.path().join("loose");
    fs::write(&loose, b"nobody references me").unwrap();
    ok(casket(&store).arg("put").arg(&loose));
    age(&store.join("cas"));
    age(&store.join("refs"));
    ok(casket(&store).args(["ref", "get", "keep/tree"]));

    let before = json(casket(&store).args(["du", "--json"]));
    assert_eq!(before["blobs"], 9, "two trees of 4 objects and a loose blob");
    let report = run(casket(&store).args(["gc", "--quota", "0", "--grace", "1h", "--json"]));
    assert_eq!(
        report.status.code(),
        Some(1),
        "the quota cannot be met while keep/tree is protected"
    );
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["removed_refs"], serde_json::json!(["old/tree"]));
    assert_eq!(report["kept_protected"], 4);
    assert_eq!(report["removed_blobs"], 5);
    let after = json(casket(&store).args(["du", "--json"]));
    assert_eq!(after["blobs"], 4);
    assert_eq!(after["stored_bytes"], report["after"]["stored_bytes"]);
    ok(casket(&store)
        .args(["checkout", "keep/tree"])
        .arg(dir.path().join("out")));
    ok(casket(&store).arg("fsck"));
}

#[test]
fn fsck_finds_and_repairs_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = dir.path().join("src");
    small_tree(&src, "x");
    ok(casket(&store).args(["capture", "--ref", "victim"]).arg(&src));
    assert_eq!(json(casket(&store).args(["fsck", "--json"]))["clean"], true);

    let data_digest = json(casket(&store).args(["ls", "--json", "victim"]))[1]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = data_digest.split('/').next().unwrap();
    let object = store.join("cas/sha256").join(&hash[..2]).join(&hash[2..]);
    fs::set_permissions(&object, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&object, "y".repeat(1000)).unwrap();

    let found = run(casket(&store).args(["fsck", "--json"]));
    assert_eq!(found.status.code(), Some(1));
    let found: Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(found["corrupt"][0]["digest"], data_digest.as_str());

    let repaired = run(casket(&store).args(["fsck", "--repair", "--json"]));
    assert_eq!(repaired.status.code(), Some(1), "the ref is now incomplete");
    let repaired: Value = serde_json::from_slice(&repaired.stdout).unwrap();
    assert!(!object.exists());
    let problem = repaired["incomplete_refs"][0]["problem"].as_str().unwrap();
    assert!(problem.starts_with("data: file content"), "{problem}");
    let checkout = run(casket(&store)
        .args(["checkout", "victim"])
        .arg(dir.path().join("out")));
    assert_eq!(checkout.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&checkout.stderr).contains("data: file content"));
}
