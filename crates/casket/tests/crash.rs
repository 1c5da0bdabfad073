//! A capture killed with SIGKILL midway leaves no corrupt or partial object: `fsck` is clean,
//! a later capture of the same tree completes, and `fsck --repair` clears the temp files.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::tree::Tree;
use support::{casket, ok, run};

#[test]
fn sigkill_during_capture_leaves_no_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = dir.path().join("src");
    // Small files keep the store busy creating objects, large ones keep temp files open.
    Tree {
        files: 20_000,
        size: 2048,
        dirs: 200,
        large: (4, 50_000_000),
        ..Tree::default()
    }
    .write(&src);

    let mut killed_midway = false;
    for delay_ms in [150u64, 300, 600] {
        let mut child = casket(&store).arg("capture").arg(&src).spawn().unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            killed_midway = true;
        }
        child.wait().unwrap();
        let fsck = run(casket(&store).args(["fsck", "--json"]));
        let report: serde_json::Value = serde_json::from_slice(&fsck.stdout).unwrap();
        assert!(
            fsck.status.success(),
            "fsck after a kill at {:?}: {report}",
            started.elapsed()
        );
        assert_eq!(report["corrupt"], serde_json::json!([]));
        assert_eq!(report["strays"], serde_json::json!([]));
    }
    assert!(
        killed_midway,
        "the capture always finished before the kill; the test proved nothing"
    );

    let root = ok(casket(&store).arg("capture").arg(&src));
    ok(casket(&store).args(["fsck", "--repair"]));
    let report: serde_json::Value =
        serde_json::from_str(&ok(casket(&store).args(["fsck", "--json"]))).unwrap();
    assert_eq!(report["temp_files"], 0);
    let out = dir.path().join("out");
    ok(casket(&store).arg("checkout").arg(root.trim()).arg(&out));
}
