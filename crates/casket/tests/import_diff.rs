//! `casket import` and `casket diff` end to end: trees and directories, reports, refs, lists.
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{casket, ok, run};

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&ok(cmd)).unwrap()
}

/// A usr-merged base: `sbin -> usr/sbin`, a real `etc/` with content.
fn base(root: &Path) {
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("usr/sbin/init"), "init").unwrap();
    fs::write(root.join("etc/os-release"), "base").unwrap();
    symlink("usr/sbin", root.join("sbin")).unwrap();
}

/// An overlay with a file through the merged link, a replacement, and a link onto `etc/`.
fn overlay(root: &Path) {
    fs::create_dir_all(root.join("sbin")).unwrap();
    fs::write(root.join("sbin/hello"), "hello").unwrap();
    fs::write(root.join("os-release"), "overlay").unwrap();
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    fs::write(root.join("usr/sbin/init"), "new init").unwrap();
    symlink("elsewhere", root.join("etc")).unwrap();
}

#[test]
fn import_tree_into_tree_matches_import_into_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    base(&a);
    overlay(&b);
    let root_a = ok(casket(&store).arg("capture").arg(&a)).trim().to_owned();
    let root_b = ok(casket(&store).arg("capture").arg(&b)).trim().to_owned();

    let imported =
        json(casket(&store).args(["import", "--json", "--ref", "staged", &root_b, "--into", &root_a]));
    assert_eq!(
        imported["report"],
        json!({
            "written": ["os-release", "sbin/hello", "usr/sbin/init"],
            "overwritten": ["usr/sbin/init"],
            "ignored": ["etc"],
            "skipped": [],
            "missing": [],
        })
    );
    let merged = imported["root"].as_str().unwrap().to_owned();
    assert_eq!(ok(casket(&store).args(["ref", "get", "staged"])).trim(), merged);

    // The same import on disk gives the same tree.
    ok(casket(&store).arg("import").arg(&b).arg("--into").arg(&a));
    assert_eq!(fs::read_to_string(a.join("usr/sbin/hello")).unwrap(), "hello");
    assert_eq!(fs::read_link(a.join("sbin")).unwrap(), Path::new("usr/sbin"));
    assert_eq!(ok(casket(&store).arg("capture").arg(&a)).trim(), merged);
    let same = run(casket(&store).arg("diff").arg(&a).arg(&merged));
    assert!(same.status.success(), "{}", String::from_utf8_lossy(&same.stderr));
    assert!(same.stdout.is_empty());

    // The differences from the base, by path.
    let out = run(casket(&store).args(["diff", &root_a, "staged"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "+ os-release\n+ usr/sbin/hello\n~ usr/sbin/init\n"
    );
    let out = run(casket(&store).args(["diff", "--json", "staged", &root_a]));
    assert_eq!(out.status.code(), Some(1));
    let diff: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diff["removed"], json!(["os-release", "usr/sbin/hello"]));
}

#[test]
fn explicit_lists_missing_paths_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    base(&a);
    overlay(&b);
    let root_a = ok(casket(&store).arg("capture").arg(&a)).trim().to_owned();
    let list = dir.path().join("list");
    fs::write(&list, "sbin/hello\nnot/there\n").unwrap();

    let refused = run(casket(&store)
        .arg("import")
        .arg(&b)
        .args(["--into", &root_a, "--files"])
        .arg(&list));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not/there: listed for import but missing"));

    let out = json(
        casket(&store)
            .arg("import")
            .arg(&b)
            .args(["--into", &root_a, "--ignore-missing", "--json", "--files"])
            .arg(&list),
    );
    assert_eq!(out["report"]["written"], json!(["sbin/hello"]));
    assert_eq!(out["report"]["missing"], json!(["not/there"]));

    let bad = run(casket(&store)
        .arg("import")
        .arg(&b)
        .args(["--into", "no-such-ref"]));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no ref named"));
    let bad_ref = run(casket(&store)
        .arg("import")
        .arg(&b)
        .arg("--into")
        .arg(&a)
        .args(["--ref", "x"]));
    assert!(String::from_utf8_lossy(&bad_ref.stderr).contains("is a directory"));
    fs::write(&list, "../escape\n").unwrap();
    let dotdot = run(casket(&store)
        .arg("import")
        .arg(&b)
        .arg("--into")
        .arg(&a)
        .arg("--files")
        .arg(&list));
    assert!(String::from_utf8_lossy(&dotdot.stderr).contains("`..` is not allowed"));
}

#[test]
fn a_failed_import_into_a_directory_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::write(a.join("x"), "a file where the source has a directory").unwrap();
    fs::create_dir_all(b.join("first")).unwrap();
    fs::write(b.join("first/f"), "f").unwrap();
    fs::create_dir_all(b.join("x/inner")).unwrap();
    let before = ok(casket(&store).arg("capture").arg(&a));

    let out = run(casket(&store).arg("import").arg(&b).arg("--into").arg(&a));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("x: not a directory"));
    assert!(
        !a.join("first").exists(),
        "nothing is written before the plan succeeds"
    );
    assert_eq!(ok(casket(&store).arg("capture").arg(&a)), before);
}

#[test]
fn checkout_as_tar_streams_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let a = dir.path().join("a");
    base(&a);
    let root = ok(casket(&store).arg("capture").arg(&a)).trim().to_owned();
    let tar = dir.path().join("a.tar");
    ok(casket(&store).args(["checkout", "--tar", &root]).arg(&tar));
    let listing = ok(Command::new("tar").arg("-tvf").arg(&tar));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 6, "{listing}");
    assert!(
        lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with("etc/"),
        "{listing}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("sbin -> usr/sbin"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("2011-11-11") && l.ends_with("usr/sbin/init"))
    );
    let again = run(casket(&store).args(["checkout", "--tar", &root]).arg(&tar));
    assert!(!again.status.success(), "an existing file is never overwritten");
    let stdout = run(casket(&store).args(["checkout", "--tar", &root, "-"]));
    assert_eq!(stdout.stdout, fs::read(&tar).unwrap());
}
