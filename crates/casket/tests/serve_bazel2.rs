//! Bazel 2.1.0, an older REAPI 2.0 client than serve_bazel.rs's 4.2.3 (the official binary,
//! installed by .ci/peers/bazel2.sh), with `casket serve` as its remote cache over gRPC: a cold
//! build runs every action locally and uploads its result; after `bazel clean` the rebuild is
//! all remote cache hits with byte-identical outputs.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use support::bazel::{Processes, make_writable, tail};
use support::{Serve, peer_available};

/// The workspace: genrules only, so that Bazel needs no external repository.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bazel2");

const BUILD_FLAGS: &[&str] = &[
    "--spawn_strategy=local",
    "--symlink_prefix=/",
    "--incompatible_strict_action_env",
    "--jobs=4",
    "--color=no",
    "--curses=no",
];

const MIB: u64 = 1 << 20;

/// `$CASKET_BAZEL2`, or where .ci/peers/bazel2.sh puts the binary of the npm package.
fn bazel_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CASKET_BAZEL2") {
        return PathBuf::from(path);
    }
    let peers = std::env::var_os("CASKET_PEERS_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/casket-peers"), PathBuf::from);
    peers.join("bazel-2.1.0/node_modules/@bazel/bazel-linux_x64/bazel-2.1.0-linux-x86_64")
}

/// Why Bazel 2.1.0 cannot be used here, if it cannot. (2.1.0 takes `--version` only as its
/// sole argument; it starts no server.)
fn bazel_2_1_0() -> Option<String> {
    let bazel = bazel_binary();
    match Command::new(&bazel).arg("--version").output() {
        Err(e) => Some(format!("{}: {e}", bazel.display())),
        Ok(out) => match String::from_utf8_lossy(&out.stdout).trim() {
            "bazel 2.1.0" if out.status.success() => None,
            other => Some(format!(
                "{} --version says {other:?} ({}), not bazel 2.1.0",
                bazel.display(),
                out.status
            )),
        },
    }
}

/// `bazel` with no rc files, its own output root, and a server that exits by itself should the
/// test die before shutting it down.
fn bazel_command(output_user_root: &Path) -> Command {
    let mut cmd = Command::new(bazel_binary());
    cmd.arg("--ignore_all_rc_files")
        .arg(format!("--output_user_root={}", output_user_root.display()))
        .arg("--max_idle_secs=300");
    cmd
}

/// A Bazel client with its own workspace and output root; dropping it shuts its server down
/// and makes the output root removable (Bazel leaves read-only directories).
struct Bazel {
    workspace: PathBuf,
    output_user_root: PathBuf,
    remote_cache: String,
}

impl Bazel {
    /// Runs `bazel COMMAND [build flags] ARGS` (`clean` takes no build flags), asserts that it
    /// succeeded without warnings (a failing remote cache is only a warning to Bazel) and
    /// returns its stdout and stderr.
    fn ok(&self, command: &str, args: &[&str]) -> (String, String) {
        let mut cmd = bazel_command(&self.output_user_root);
        cmd.current_dir(&self.workspace).arg(command);
        if command != "clean" {
            cmd.args(BUILD_FLAGS)
                .arg(format!("--remote_cache={}", self.remote_cache));
        }
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.args(args).output().unwrap();
        assert!(
            status.success(),
            "`bazel {command} {}` failed with {status}; the end of its stderr:\n{}",
            args.join(" "),
            tail(&stderr)
        );
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("WARNING:")).collect();
        assert!(
            warnings.is_empty(),
            "`bazel {command}` warned:\n{}\nthe end of its stderr:\n{}",
            warnings.join("\n"),
            tail(stderr.as_bytes())
        );
        (String::from_utf8_lossy(&stdout).into_owned(), stderr)
    }

    /// Builds everything and returns the build's process counts.
    fn build(&self, what: &str) -> Processes {
        let started = Instant::now();
        let (_, stderr) = self.ok("build", &["//..."]);
        let processes = Processes::parse(&stderr);
        eprintln!("{what} ({:.1?}): {}", started.elapsed(), processes.line);
        processes
    }
}

impl Drop for Bazel {
    fn drop(&mut self) {
        let _ = bazel_command(&self.output_user_root)
            .current_dir(&self.workspace)
            .arg("shutdown")
            .output();
        make_writable(&self.output_user_root);
    }
}

/// Every file under `dir` (relative path → content and whether it is executable).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, bool)> {
    fn walk(root: &Path, rel: &Path, files: &mut BTreeMap<PathBuf, (Vec<u8>, bool)>) {
        for entry in fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let path = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                walk(root, &path, files);
            } else {
                assert!(meta.is_file(), "{} is not a file", path.display());
                let executable = meta.permissions().mode() & 0o111 != 0;
                files.insert(path, (fs::read(entry.path()).unwrap(), executable));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, Path::new(""), &mut files);
    files
}

/// Copies the fixture (plain files) to `to`.
fn copy_fixture(to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(FIXTURE).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn bazel_2_1_0_builds_with_casket_as_its_remote_cache() {
    if !peer_available("bazel 2.1.0", bazel_2_1_0()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("workspace");
    copy_fixture(&workspace);
    let store = dir.path().join("store");
    let server = Serve::start(&store, &["--allow-push"]);
    let bazel = Bazel {
        workspace,
        output_user_root: dir.path().join("output_user_root"),
        remote_cache: server.url.replace("http://", "grpc://"),
    };

    // Cold: every action runs here and its result is uploaded.
    let cold = bazel.build("cold build");
    assert!(
        cold.spawned() >= 30,
        "at least 30 actions must run: {}",
        cold.line
    );
    assert_eq!(
        cold.count("local"),
        cold.spawned(),
        "a fresh store has no hits: {}",
        cold.line
    );
    let (bin_dir, _) = bazel.ok("info", &["bazel-bin"]);
    let bin_dir = PathBuf::from(bin_dir.trim());
    let first = snapshot(&bin_dir);
    let size = |name: &str| first[Path::new(name)].0.len() as u64;
    assert!(size("g_07.txt") > MIB, "an output over 1 MiB");
    assert_eq!(size("empty.txt"), 0, "an empty output");
    assert!(first[Path::new("tool.sh")].1, "an executable output");
    assert_eq!(first.len(), 33, "{:?}", first.keys().collect::<Vec<_>>());

    // One action result stored per action that ran.
    let records = fs::read_dir(store.join("ac/sha256")).unwrap().count() as u64;
    assert_eq!(records, cold.spawned(), "action results in the store");

    bazel.ok("clean", &[]);
    assert!(!bin_dir.exists(), "bazel clean left {}", bin_dir.display());

    // Warm: every action is a remote cache hit, and the outputs are the same.
    let warm = bazel.build("rebuild after bazel clean");
    assert_eq!(
        warm.count("remote cache hit"),
        warm.spawned(),
        "every action must be a remote cache hit: {}",
        warm.line
    );
    assert_eq!(
        warm.spawned(),
        cold.spawned(),
        "the same actions as the cold build ({}): {}",
        cold.line,
        warm.line
    );
    let second = snapshot(&bin_dir);
    let differences: Vec<_> = first
        .keys()
        .chain(second.keys())
        .filter(|path| first.get(*path) != second.get(*path))
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        differences.is_empty(),
        "bazel-bin differs from the first build's: {differences:?}"
    );
}
