//! Bazel 4.2.3 (Debian's bazel-bootstrap) with `casket serve` as its remote cache: a cold build
//! of over 100 actions uploads every result, and after `bazel clean` the rebuild is all remote
//! cache hits with byte-identical outputs; the store then holds exactly what Bazel referenced.
//! The same builds over Bazel's HTTP cache protocol, then warm over gRPC from what HTTP
//! stored; and over a three-node Garage cluster: cold through one frontend, warm through
//! another that shares the bucket, all hits.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;
use support::bazel::{Processes, make_writable, tail};
use support::garage::Garage;
use support::{Serve, casket, ok, peer_available, run, tiered_frontend};

const BAZEL: &str = "/usr/bin/bazel";

/// The workspace and the two local stand-ins for `@rules_cc` and `@rules_java` that it loads.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bazel");

/// Build options for both builds (see shared/notes/bazel-offline.md). The genrules are cheap:
/// four jobs keep two cores busy while uploads run beside them.
const BUILD_FLAGS: &[&str] = &[
    "--host_javabase=@local_jdk//:jdk",
    "--spawn_strategy=local",
    "--symlink_prefix=/",
    "--incompatible_strict_action_env",
    "--jobs=4",
    "--color=no",
    "--curses=no",
];

/// The SHA-256 of nothing: the digest of an empty file or an empty `Directory`.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

const MIB: u64 = 1 << 20;

/// `bazel` with the startup options that make it reproducible: no rc files, Debian's unpacked
/// install base (without it 4.2.3 fails to open /proc/self/exe as a zip file), its own output
/// root, and a server that exits by itself should the test die before shutting it down.
fn bazel_command(output_user_root: &Path) -> Command {
    let mut cmd = Command::new(BAZEL);
    // /usr/bin/bazel is a wrapper that runs the newest /usr/bin/bazel-N: pin Debian's 4.x.
    cmd.env("USE_BAZEL_VERSION", "4")
        .arg("--ignore_all_rc_files")
        .arg("--install_base=/usr/share/bazel")
        .arg("--trust_install_base")
        .arg(format!("--output_user_root={}", output_user_root.display()))
        .arg("--max_idle_secs=300");
    cmd
}

/// Why Bazel 4.2.3 cannot be used here, if it cannot. Debian builds it unstamped, so its
/// `--version` says `bazel no_version`; the package's version then tells the release.
fn bazel_4_2_3() -> Option<String> {
    let root = tempfile::tempdir().unwrap();
    let out = match bazel_command(root.path()).arg("--version").output() {
        Ok(out) => out,
        Err(e) => return Some(format!("{BAZEL}: {e}")),
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Some(format!("{BAZEL} --version failed: {}", tail(&out.stderr)));
    }
    match version.as_str() {
        "bazel 4.2.3" => None,
        "bazel no_version" => {
            let package = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", "bazel-bootstrap"])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            if package.starts_with("4.2.3") {
                None
            } else {
                Some(format!(
                    "{BAZEL} is unstamped and bazel-bootstrap is {package:?}, not 4.2.3"
                ))
            }
        }
        other => Some(format!("{BAZEL} --version says {other:?}, not bazel 4.2.3")),
    }
}

/// A Bazel client with its own workspace and output root. Dropping it, even while a failed
/// assertion unwinds, shuts its server down and makes the output root removable (Bazel leaves
/// read-only directories), so that the temporary directory holding both goes with it.
struct Bazel {
    workspace: PathBuf,
    output_user_root: PathBuf,
    flags: Vec<String>,
}

impl Bazel {
    fn new(workspace: PathBuf, output_user_root: PathBuf, remote_cache: &str) -> Bazel {
        let mut flags: Vec<String> = BUILD_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        flags.push(format!("--remote_cache={remote_cache}"));
        Bazel {
            workspace,
            output_user_root,
            flags,
        }
    }

    /// Runs `bazel COMMAND [build flags] ARGS` (`clean` takes no build flags), asserts that it
    /// succeeded without warnings and returns its stdout and stderr (where Bazel reports).
    fn ok(&self, command: &str, args: &[&str]) -> (String, String) {
        let mut cmd = bazel_command(&self.output_user_root);
        cmd.current_dir(&self.workspace).arg(command);
        if command != "clean" {
            cmd.args(&self.flags);
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
        // A failing remote cache is only a warning to Bazel: the build itself succeeds.
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
        let (_, stderr) = self.ok("build", &["//:all"]);
        let processes = Processes::parse(&stderr);
        eprintln!("{what} ({:.1?}): {}", started.elapsed(), processes.line);
        processes
    }

    /// `bazel info KEY` for the build flags.
    fn info(&self, key: &str) -> PathBuf {
        let (stdout, _) = self.ok("info", &[key]);
        PathBuf::from(stdout.trim())
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

/// What a file-system entry under bazel-bin is.
#[derive(Debug, PartialEq)]
enum Entry {
    /// A file: its digest `HASH/SIZE` and whether it is executable.
    File {
        digest: String,
        executable: bool,
    },
    Symlink(PathBuf),
}

/// The contents of bazel-bin after a build. Directories with no file beneath them are listed
/// apart: on a cache hit Bazel 4.2.3 does not recreate the empty directories of a tree artifact.
struct Snapshot {
    entries: BTreeMap<PathBuf, Entry>,
    empty_dirs: BTreeSet<PathBuf>,
}

impl Snapshot {
    fn take(root: &Path) -> Snapshot {
        let mut snapshot = Snapshot {
            entries: BTreeMap::new(),
            empty_dirs: BTreeSet::new(),
        };
        let mut files = Vec::new();
        snapshot.walk(root, Path::new(""), &mut files);
        let hashes = sha256(root, files.iter().map(|(path, ..)| path));
        for (path, size, executable) in files {
            let digest = format!("{}/{size}", hashes[&path]);
            snapshot.entries.insert(path, Entry::File { digest, executable });
        }
        snapshot
    }

    /// Records the symlinks and empty directories under `root/rel`, adds its files to `files`
    /// (path, size, executable), and returns whether it has a file or symlink beneath it.
    fn walk(&mut self, root: &Path, rel: &Path, files: &mut Vec<(PathBuf, u64, bool)>) -> bool {
        let mut has_files = false;
        for entry in fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let path = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                has_files |= self.walk(root, &path, files);
            } else if meta.is_symlink() {
                let target = fs::read_link(entry.path()).unwrap();
                self.entries.insert(path, Entry::Symlink(target));
                has_files = true;
            } else {
                files.push((path, meta.len(), meta.permissions().mode() & 0o111 != 0));
                has_files = true;
            }
        }
        if !has_files && !rel.as_os_str().is_empty() {
            self.empty_dirs.insert(rel.to_owned());
        }
        has_files
    }

    /// The digest of file `path` and whether it is executable.
    fn file(&self, path: &str) -> (&str, bool) {
        match self.entries.get(Path::new(path)) {
            Some(Entry::File { digest, executable }) => (digest, *executable),
            other => panic!("bazel-bin/{path} is {other:?}, not a file"),
        }
    }

    fn size(&self, path: &str) -> u64 {
        self.file(path).0.split_once('/').unwrap().1.parse().unwrap()
    }

    fn is_executable(&self, path: &str) -> bool {
        self.file(path).1
    }

    /// The paths whose entries differ from `other`'s, each with both versions.
    fn differences(&self, other: &Snapshot) -> Vec<String> {
        let paths: BTreeSet<&PathBuf> = self.entries.keys().chain(other.entries.keys()).collect();
        paths
            .into_iter()
            .filter(|p| self.entries.get(*p) != other.entries.get(*p))
            .map(|p| {
                format!(
                    "{}: {:?} then {:?}",
                    p.display(),
                    self.entries.get(p),
                    other.entries.get(p)
                )
            })
            .collect()
    }
}

/// The SHA-256 of each of `files` (relative to `root`), by coreutils' sha256sum.
fn sha256<'a>(root: &Path, files: impl Iterator<Item = &'a PathBuf>) -> BTreeMap<PathBuf, String> {
    let files: Vec<&PathBuf> = files.collect();
    let mut digests = BTreeMap::new();
    for chunk in files.chunks(500) {
        let stdout = ok(Command::new("sha256sum").current_dir(root).arg("--").args(chunk));
        for line in stdout.lines() {
            let (hash, path) = line.split_once("  ").unwrap();
            digests.insert(PathBuf::from(path), hash.to_owned());
        }
    }
    digests
}

/// Copies the fixture (plain files and directories) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Just enough protobuf to read the ActionResults and Trees that Bazel stored: the fields of
/// one message, in order, as (field number, value).
fn fields(mut message: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut fields = Vec::new();
    while !message.is_empty() {
        let key = varint(&mut message);
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut message)),
            1 => {
                take(&mut message, 8);
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut message)).unwrap();
                Field::Bytes(take(&mut message, len))
            }
            5 => {
                take(&mut message, 4);
                Field::Fixed
            }
            wire => panic!("protobuf wire type {wire} in a REAPI message"),
        };
        fields.push((key >> 3, value));
    }
    fields
}

enum Field<'a> {
    Varint(u64),
    /// A string, bytes or an embedded message.
    Bytes(&'a [u8]),
    /// A fixed-width number: none in the messages read here.
    Fixed,
}

fn varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = buf.split_first().expect("truncated protobuf varint");
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("protobuf varint over 64 bits")
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> &'a [u8] {
    assert!(buf.len() >= len, "truncated protobuf field");
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    head
}

/// The embedded messages (or strings) of field `number`.
fn submessages(message: &[u8], number: u64) -> Vec<&[u8]> {
    fields(message)
        .into_iter()
        .filter_map(|(n, value)| match value {
            Field::Bytes(bytes) if n == number => Some(bytes),
            _ => None,
        })
        .collect()
}

/// The string in field `number` ("" when absent, as in protobuf).
fn string(message: &[u8], number: u64) -> String {
    submessages(message, number)
        .last()
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .unwrap_or_default()
}

/// A `Digest` message as `HASH/SIZE`.
fn digest(message: &[u8]) -> String {
    let size = fields(message)
        .into_iter()
        .find_map(|(n, value)| match value {
            Field::Varint(size) if n == 2 => Some(size),
            _ => None,
        })
        .unwrap_or(0);
    format!("{}/{size}", string(message, 1))
}

/// The digest in field `number` of `message`, if set.
fn digest_field(message: &[u8], number: u64) -> Option<String> {
    submessages(message, number).last().map(|d| digest(d))
}

/// A blob's content, read back through `casket cat`.
fn cat(store: &Path, digest: &str) -> Vec<u8> {
    let out = run(casket(store).args(["cat", digest]));
    assert!(
        out.status.success(),
        "casket cat {digest} failed: {}",
        tail(&out.stderr)
    );
    out.stdout
}

/// Checks the store against the builds: one action result per spawned action, with its Action
/// and Command; every output file's blob equal to the file Bazel wrote; the tree artifact's Tree
/// complete (with the empty directories that Bazel 4.2.3 does not recreate); no other blob.
fn check_store(store: &Path, spawned: u64, execroot: &Path, bin: &Snapshot) {
    let records: Vec<PathBuf> = fs::read_dir(store.join("ac/sha256"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(
        records.len() as u64,
        spawned,
        "action results in {}/ac/sha256, one per spawned action",
        store.display()
    );
    let mut referenced = BTreeSet::new();
    let mut trees = Vec::new();
    for record in &records {
        trees.extend(check_action_result(store, record, execroot, &mut referenced));
    }
    assert_eq!(trees.len(), 1, "one tree artifact");
    let (path, tree) = &trees[0];
    assert!(path.ends_with("/bin/tree"), "the tree artifact is {path}");
    referenced.extend(check_tree(store, tree, bin));

    // Bazel never uploads the empty blob; everything else it referenced is stored, and nothing
    // more.
    referenced.retain(|digest| !digest.ends_with("/0"));
    let du: Value = serde_json::from_str(&ok(casket(store).args(["du", "--json"]))).unwrap();
    eprintln!(
        "casket du: {} blobs, {} bytes; {} action results",
        du["blobs"],
        du["bytes"],
        records.len()
    );
    assert_eq!(
        du["blobs"].as_u64(),
        Some(referenced.len() as u64),
        "the store's blobs are the ones the action results reference: {du}"
    );
}

/// Checks one stored ActionResult (`ac/sha256/HASH`, keyed by the Action's hash): its
/// Action and Command are stored and each output file's blob is the file in `execroot`. Adds
/// the digests it references to `referenced` and returns its output directories' Trees.
fn check_action_result(
    store: &Path,
    record: &Path,
    execroot: &Path,
    referenced: &mut BTreeSet<String>,
) -> Vec<(String, Vec<u8>)> {
    let hash = record.file_name().unwrap().to_str().unwrap();
    let action_blob = cat(store, hash);
    let action = format!("{hash}/{}", action_blob.len());
    let command = digest_field(&action_blob, 1).unwrap();
    cat(store, &command);
    referenced.extend([action, command]);

    let result = fs::read(record).unwrap();
    for file in submessages(&result, 2) {
        let path = string(file, 1);
        let digest = digest_field(file, 2).unwrap_or_else(|| format!("{EMPTY_SHA256}/0"));
        let on_disk = fs::read(execroot.join(&path)).unwrap();
        assert!(
            on_disk.is_empty() || cat(store, &digest) == on_disk,
            "the store's {digest} differs from {path}"
        );
        referenced.insert(digest);
    }
    referenced.extend(digest_field(&result, 6)); // stdout
    referenced.extend(digest_field(&result, 8)); // stderr
    submessages(&result, 3)
        .into_iter()
        .map(|directory| {
            let tree = digest_field(directory, 3).unwrap();
            let blob = cat(store, &tree);
            referenced.insert(tree);
            (string(directory, 1), blob)
        })
        .collect()
}

/// Checks the tree artifact's Tree: its files are stored and are the ones in bazel-bin/tree,
/// and it lists the empty directory `empty/nested`. Returns the files' digests.
fn check_tree(store: &Path, tree: &[u8], bin: &Snapshot) -> BTreeSet<String> {
    let directories = submessages(tree, 1).into_iter().chain(submessages(tree, 2));
    let mut files = BTreeSet::new();
    let mut subdirectories = BTreeMap::new();
    for directory in directories {
        for file in submessages(directory, 1) {
            let digest = digest_field(file, 2).unwrap_or_else(|| format!("{EMPTY_SHA256}/0"));
            let size: usize = digest.split_once('/').unwrap().1.parse().unwrap();
            assert_eq!(cat(store, &digest).len(), size, "{digest} in the Tree");
            files.insert(digest);
        }
        for node in submessages(directory, 2) {
            subdirectories.insert(string(node, 1), digest_field(node, 2).unwrap_or_default());
        }
    }
    let in_bin: BTreeSet<String> = bin
        .entries
        .iter()
        .filter(|(path, _)| path.starts_with("tree"))
        .map(|(path, entry)| match entry {
            Entry::File { digest, .. } => digest.clone(),
            Entry::Symlink(_) => panic!("{} is a symlink", path.display()),
        })
        .collect();
    assert_eq!(files, in_bin, "the Tree's files are bazel-bin/tree's");
    assert!(subdirectories.contains_key("empty"), "{subdirectories:?}");
    assert_eq!(
        subdirectories.get("nested"),
        Some(&format!("{EMPTY_SHA256}/0")),
        "the Tree lists the empty directory empty/nested: {subdirectories:?}"
    );
    files
}

#[test]
fn bazel_4_2_3_builds_with_casket_as_its_remote_cache() {
    if !peer_available("bazel 4.2.3", bazel_4_2_3()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    copy_tree(Path::new(FIXTURE), &src);
    let store = dir.path().join("store");
    let server = Serve::start(&store, &["--allow-push"]);
    let remote_cache = server.url.replace("http://", "grpc://");
    let bazel = Bazel::new(
        src.join("workspace"),
        dir.path().join("output_user_root"),
        &remote_cache,
    );

    // Cold: every action runs here and its result is uploaded.
    let cold = bazel.build("cold build");
    assert!(
        cold.spawned() >= 100,
        "at least 100 actions must run: {}",
        cold.line
    );
    assert_eq!(
        cold.count("local"),
        cold.spawned(),
        "a fresh store has no hits: {}",
        cold.line
    );
    let bin_dir = bazel.info("bazel-bin");
    let execroot = bazel.info("execution_root");
    let first = Snapshot::take(&bin_dir);
    assert!(
        first.entries.len() >= 370,
        "{} entries in bazel-bin",
        first.entries.len()
    );
    assert!(first.is_executable("gen"), "the cc_binary is executable");
    assert!(first.size("g_007/c.bin") > MIB, "an output over 1 MiB");
    assert!(first.size("tree/bin/big.bin") > MIB, "a tree file over 1 MiB");
    assert!(
        first.is_executable("tree/bin/run.sh"),
        "an executable in the tree"
    );
    assert_eq!(first.size("g_003/empty.txt"), 0, "an empty output");
    let empty_dirs: BTreeSet<PathBuf> = ["tree/empty", "tree/empty/nested"]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(
        first.empty_dirs, empty_dirs,
        "the tree artifact's empty directories"
    );

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
    let second = Snapshot::take(&bin_dir);
    let differences = first.differences(&second);
    assert!(
        differences.is_empty(),
        "{} entries of bazel-bin differ from the first build's:\n{}",
        differences.len(),
        differences[..differences.len().min(20)].join("\n")
    );
    // Known client limitation: 4.2.3 does not recreate a tree artifact's empty directories
    // from the Tree it downloads (check_store shows that the Tree lists them).
    assert!(
        second.empty_dirs.is_subset(&first.empty_dirs),
        "empty directories appeared: {:?}",
        second.empty_dirs
    );
    let missing: Vec<_> = first.empty_dirs.difference(&second.empty_dirs).collect();
    eprintln!("empty directories not recreated from the cache (a Bazel 4.2.3 limitation): {missing:?}");

    check_store(&store, cold.spawned(), &execroot, &second);
}

/// Bazel's HTTP cache protocol against the same server: a cold build over HTTP, then after
/// `bazel clean` a warm one over HTTP and another over gRPC, each all remote hits: what one
/// protocol stores, the other serves.
#[test]
fn bazel_4_2_3_builds_over_the_http_cache_protocol_and_grpc_sees_the_same_cache() {
    if !peer_available("bazel 4.2.3", bazel_4_2_3()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    copy_tree(Path::new(FIXTURE), &src);
    let store = dir.path().join("store");
    let server = Serve::start(&store, &["--allow-push", "--http-listen", "127.0.0.1:0"]);
    let output_user_root = dir.path().join("output_user_root");
    let over_http = Bazel::new(
        src.join("workspace"),
        output_user_root.clone(),
        &server.http_url(),
    );

    let cold = over_http.build("cold build over HTTP");
    assert_eq!(
        cold.count("local"),
        cold.spawned(),
        "a fresh store has no hits: {}",
        cold.line
    );
    let bin_dir = over_http.info("bazel-bin");
    let execroot = over_http.info("execution_root");
    let first = Snapshot::take(&bin_dir);
    over_http.ok("clean", &[]);

    let warm = over_http.build("rebuild over HTTP after bazel clean");
    assert_eq!(
        warm.count("remote cache hit"),
        cold.spawned(),
        "every action must be a remote cache hit over HTTP: {}",
        warm.line
    );
    assert!(
        first.differences(&Snapshot::take(&bin_dir)).is_empty(),
        "outputs differ over HTTP"
    );
    over_http.ok("clean", &[]);
    drop(over_http);

    let over_grpc = Bazel::new(
        src.join("workspace"),
        output_user_root,
        &server.url.replace("http://", "grpc://"),
    );
    let warm = over_grpc.build("rebuild over gRPC after bazel clean");
    assert_eq!(
        warm.count("remote cache hit"),
        cold.spawned(),
        "what Bazel stored over HTTP must be all hits over gRPC: {}",
        warm.line
    );
    let third = Snapshot::take(&bin_dir);
    assert!(first.differences(&third).is_empty(), "outputs differ over gRPC");
    check_store(&store, cold.spawned(), &execroot, &third);
}

#[test]
fn bazel_4_2_3_builds_cold_through_one_frontend_and_warm_through_another_over_garage() {
    if !peer_available("bazel 4.2.3", bazel_4_2_3()) {
        return;
    }
    let Some(garage) = Garage::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    copy_tree(Path::new(FIXTURE), &src);
    let a = tiered_frontend(&garage, 1, dir.path(), "a");
    let b = tiered_frontend(&garage, 2, dir.path(), "b");
    let output_user_root = dir.path().join("output_user_root");

    let through_a = Bazel::new(
        src.join("workspace"),
        output_user_root.clone(),
        &a.url.replace("http://", "grpc://"),
    );
    let cold = through_a.build("cold build through frontend A");
    assert_eq!(
        cold.count("local"),
        cold.spawned(),
        "an empty bucket has no hits: {}",
        cold.line
    );
    let bin_dir = through_a.info("bazel-bin");
    let first = Snapshot::take(&bin_dir);
    through_a.ok("clean", &[]);
    drop(through_a);

    let through_b = Bazel::new(
        src.join("workspace"),
        output_user_root,
        &b.url.replace("http://", "grpc://"),
    );
    let warm = through_b.build("warm build through frontend B");
    assert_eq!(
        warm.count("remote cache hit"),
        warm.spawned(),
        "every action must be a remote cache hit through B: {}",
        warm.line
    );
    assert_eq!(warm.spawned(), cold.spawned(), "{} / {}", cold.line, warm.line);
    let differences = first.differences(&Snapshot::take(&bin_dir));
    assert!(
        differences.is_empty(),
        "{}",
        differences[..differences.len().min(20)].join("\n")
    );

    // An output removed from the bucket (B still has a copy near): its action is a miss, not a
    // hit whose output other frontends could not serve; every other action is still a hit.
    let output = casket_model::Digest::of(
        casket_model::DigestFunction::Sha256,
        &fs::read(bin_dir.join("g_007/c.bin")).unwrap(),
    );
    let options = support::garage_s3(&garage, 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bucket = casket_store::ObjectStoreBlobs::new(options.connect().unwrap(), "");
        assert!(casket_store::BlobStore::delete(&bucket, &output).await.unwrap());
    });
    through_b.ok("clean", &[]);
    let after = through_b.build("rebuild through B with one output gone from the bucket");
    assert_eq!(
        after.count("remote cache hit"),
        warm.spawned() - 1,
        "{}",
        after.line
    );
    assert_eq!(after.count("local"), 1, "{}", after.line);
}
