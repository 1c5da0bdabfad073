//! `casket casd` and casket run as `buildbox-casd`, as BuildStream 2 meets them before any RPC:
//! the version line it parses, casd's flags, the socket appearing when the daemon is ready,
//! and SIGTERM ending it with status 0 well within the half second BuildStream waits.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test, through a link named `buildbox-casd` in `dir`.
fn as_casd(dir: &Path) -> PathBuf {
    let link = dir.join("buildbox-casd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_casket"), &link).unwrap();
    link
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited with {status} before its socket appeared");
        }
        assert!(Instant::now() < deadline, "no socket at {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_first_version_line_is_the_one_buildstream_parses() {
    let dir = tempfile::tempdir().unwrap();
    for mut cmd in [
        Command::new(as_casd(dir.path())),
        Command::new(env!("CARGO_BIN_EXE_casket")),
    ] {
        if cmd.get_program().to_string_lossy().ends_with("casket") {
            cmd.arg("casd");
        }
        let out = cmd.args(["--version", "/"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let first = text.lines().next().unwrap();
        // BuildStream: re.match(r".*buildbox-casd (\d+).(\d+).(\d+).*"), at least 1.3.41.
        let version = first.split("buildbox-casd ").nth(1).unwrap();
        let numbers: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(numbers >= vec![1, 3, 41], "{first}");
        assert!(first.contains("casket"), "{first}");
    }
}

#[test]
fn bad_command_lines_are_usage_errors_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let casd = as_casd(dir.path());
    for (args, reason) in [
        (&["--frobnicate", "/tmp/x"][..], "unknown option --frobnicate"),
        (&["--exec-remote=http://x:1", "/tmp/x"], "remote execution"),
        (&["--bind=unix:/tmp/s.sock"], "exactly one cache path"),
    ] {
        let out = Command::new(&casd).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}

#[test]
fn the_socket_appears_when_ready_and_sigterm_exits_zero_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("casd.sock");
    let root = dir.path().join("cache");
    let mut child = Command::new(as_casd(dir.path()))
        .arg(format!("--bind=unix:{}", socket.display()))
        .args([
            "--log-level=warning",
            "--cache-failures=false",
            "--quota-high=1G",
            "--quota-low=50%",
            "--protect-session-blobs",
            "--jobs=4",
        ])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&socket, &mut child);
    // Ready means the cache is in casd's layout already, the empty blob included.
    let empty = "e3/b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert!(root.join("cas/objects").join(empty).is_file());
    assert!(root.join("cas/tmp").is_dir() && root.join("cas/staging").is_dir());

    let asked = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_millis(500), "took {took:?} to exit");
    assert!(!socket.exists(), "the socket is removed on exit");
}
