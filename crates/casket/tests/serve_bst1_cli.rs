//! BuildStream 1.6.8's `bst` CLI (Debian's `buildstream`, /usr/bin/bst) against `casket serve`,
//! as a user would run it, in a throw-away project:
//!
//! * `hello.bst` imports local files (text, a file over 1 MiB, an executable, a relative
//!   symlink); `base.bst` imports a tiny runtime from the host (dash as /bin/sh, libc, ld.so);
//!   `built.bst` is a manual element whose install command runs in the bubblewrap sandbox.
//! * `bst build` of each: the pull probe misses, the build pushes (with `push: true`).
//!   `bst push` then finds the server already has them.
//! * The local artifact cache is wiped; `bst pull` restores both from casket and `bst checkout`
//!   gives `out.txt` ("built in sandbox") and the hello files byte for byte (content,
//!   executable bit, symlink target), under the same root digests the builds had.
//! * `bst push --remote` of the pulled artifacts uploads them to a second, empty casket.
//! * Both stores hold the artifacts: as Remote Asset records (`urn:fdc:buildstream.build:…`
//!   URIs) when casket offers that API, as refs (BuildStream's ReferenceStorage) with
//!   `--no-remote-asset`; `casket fsck` finds them complete.
//!
//! bst 1.6.8 exits 0 even when a remote fails to initialise or an artifact is not found, so
//! every step also checks bst's messages: no WARNING/ERROR/BUG/FAILURE line, and the expected
//! "Pushed"/"Pulled"/"already has" line per element and queue counts in the summary.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Serve, casket, ok, peer_available};

const BST: &str = "/usr/bin/bst";
/// Host files that make up `base.bst`: (source on the host, path in the element).
const BASE_FILES: [(&str, &str); 3] = [
    ("/usr/bin/dash", "bin/sh"),
    (
        "/lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libc.so.6",
    ),
    ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
];
/// The prefix bst 1.6.8 gives its refs as Remote Asset URIs.
const URN: &str = "urn:fdc:buildstream.build:2020:v1:";
/// One bst command should take a second or two; this bounds a hang.
const BST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the peer cannot run here, if it cannot.
fn bst_cli() -> Option<String> {
    match Command::new(BST).arg("--version").output() {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1.6.8" => {}
        Ok(out) => {
            return Some(format!(
                "{BST} --version is not 1.6.8: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Err(e) => return Some(format!("{BST}: {e} (Debian package buildstream)")),
    }
    match Command::new("bwrap").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Some(format!("bwrap --version failed: {}", out.status)),
        Err(e) => return Some(format!("bwrap: {e} (Debian package bubblewrap)")),
    }
    BASE_FILES
        .iter()
        .find(|(host, _)| !Path::new(host).exists())
        .map(|(host, _)| format!("{host} (for the sandbox's runtime) is missing"))
}

/// Which of casket's two ways to keep BuildStream's refs is on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Refs {
    /// The Remote Asset API (the default): bst pushes and fetches directories by URI.
    RemoteAsset,
    /// `--no-remote-asset`: bst falls back to `buildstream.v2.ReferenceStorage`.
    ReferenceStorage,
}

impl Refs {
    fn serve_args(self) -> &'static [&'static str] {
        match self {
            Refs::RemoteAsset => &["--allow-push"],
            Refs::ReferenceStorage => &["--allow-push", "--no-remote-asset"],
        }
    }
}

/// A bst project and bst's own config, cache and data dirs, all under one temp dir.
struct Project {
    root: PathBuf,
    /// Names this run in progress lines (the tests run in parallel).
    label: String,
}

impl Project {
    /// Writes the project (elements, sources and `project.conf` pushing to `url`).
    fn create(root: &Path, url: &str, label: String) -> Project {
        let p = root.join("proj");
        let files = p.join("files/usr");
        fs::create_dir_all(files.join("share/hello")).unwrap();
        fs::create_dir_all(files.join("bin")).unwrap();
        fs::write(files.join("share/hello/hello.txt"), "hello from bst1 peer\n").unwrap();
        // Over 1 MiB: bst sends it with ByteStream.Write and fetches it with ByteStream.Read.
        let big: Vec<u8> = (0u32..1_500_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(files.join("share/hello/big.bin"), big).unwrap();
        fs::write(files.join("bin/hi"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(files.join("bin/hi"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("../share/hello/hello.txt", files.join("bin/hello-link")).unwrap();
        for (host, inside) in BASE_FILES {
            let to = p.join("base").join(inside);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(host, &to).unwrap();
        }
        fs::create_dir_all(p.join("elements")).unwrap();
        let write = |name: &str, text: String| fs::write(p.join(name), text).unwrap();
        write(
            "project.conf",
            format!(
                "name: bst1peer\nformat-version: 0\nelement-path: elements\n\
                 artifacts:\n  url: {url}\n  push: true\n"
            ),
        );
        for (element, dir) in [("hello", "files"), ("base", "base")] {
            write(
                &format!("elements/{element}.bst"),
                format!("kind: import\nsources:\n- kind: local\n  path: {dir}\n"),
            );
        }
        // `strip-binaries: ""`: the base has no find/strip for the default strip commands.
        write(
            "elements/built.bst",
            "kind: manual\nbuild-depends:\n- base.bst\nvariables:\n  strip-binaries: \"\"\n\
             config:\n  install-commands:\n  - echo \"built in sandbox\" > %{install-root}/out.txt\n"
                .to_owned(),
        );
        Project {
            root: root.to_owned(),
            label,
        }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("proj")
    }

    /// bst's local artifact cache (a CAS with refs under `cas/refs/heads`).
    fn artifacts(&self) -> PathBuf {
        self.root.join("xdg/cache/buildstream/artifacts")
    }

    /// Runs `bst ARGS` in the project, logging to `STEP.log`; asserts it succeeded without
    /// warnings or failures and returns its output.
    fn bst(&self, step: &str, args: &[&str]) -> String {
        let log_path = self.root.join(format!("{step}.log"));
        let log = File::create(&log_path).unwrap();
        let xdg = self.root.join("xdg");
        let started = Instant::now();
        let mut child = Command::new(BST)
            .args(["--no-interactive", "--no-colors"])
            .args(args)
            .current_dir(self.dir())
            .env("XDG_CONFIG_HOME", xdg.join("config"))
            .env("XDG_CACHE_HOME", xdg.join("cache"))
            .env("XDG_DATA_HOME", xdg.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // bst forks a process per job: a group lets a hang be ended whole.
            .process_group(0)
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > BST_TIMEOUT {
                let group = format!("-{}", child.id());
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bst {args:?} still running after {BST_TIMEOUT:?}:\n{}",
                    fs::read_to_string(&log_path).unwrap()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let out = fs::read_to_string(&log_path).unwrap();
        let label = &self.label;
        eprintln!("{label}: bst {step}: {status} in {:.2?}", started.elapsed());
        assert!(status.success(), "bst {args:?} failed with {status}:\n{out}");
        assert_untroubled(step, &out);
        out
    }

    /// The root digest (`HASH/SIZE`) of an artifact in bst's local cache.
    fn local_root(&self, element: &str, key: &str) -> String {
        let path = self
            .artifacts()
            .join("cas/refs/heads/bst1peer")
            .join(element)
            .join(key);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        decode_digest(&bytes).unwrap_or_else(|| panic!("{} is not a Digest: {bytes:?}", path.display()))
    }
}

/// Decodes a serialised REAPI `Digest` (1: hash string, 2: size varint) as `HASH/SIZE`.
fn decode_digest(bytes: &[u8]) -> Option<String> {
    let (&[0x0a, len], rest) = bytes.split_first_chunk::<2>()? else {
        return None;
    };
    let (hash, rest) = rest.split_at_checked(usize::from(len))?;
    let (&0x10, varint) = rest.split_first()? else {
        return None;
    };
    let mut size = 0u64;
    for (i, byte) in varint.iter().enumerate() {
        size |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(format!("{}/{size}", std::str::from_utf8(hash).ok()?));
        }
    }
    None
}

/// The level of one of bst's message lines, `[elapsed][key][action:element] LEVEL message`.
fn level(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..3 {
        rest = rest.strip_prefix('[')?;
        rest = &rest[rest.find(']')? + 1..];
    }
    rest.split_whitespace().next()
}

/// Fails on what bst reports but does not fail on: warnings (such as "Failed to initialize
/// remote"), errors, failed tasks and failures counted in the pipeline summary.
fn assert_untroubled(step: &str, out: &str) {
    for line in out.lines() {
        let bad = matches!(level(line), Some("WARNING" | "ERROR" | "BUG" | "FAILURE"))
            || line.contains("Failed to")
            || line.contains("Traceback")
            || (line.contains("Queue:") && !line.contains("failed 0"));
        assert!(!bad, "bst {step}: {line}\n\n{out}");
    }
}

/// Asserts some message of `task` (`push:hello.bst`) contains `text`.
fn assert_says(out: &str, task: &str, text: &str) {
    assert!(
        out.lines().any(|l| l.contains(task) && l.contains(text)),
        "no {task} message with {text:?} in:\n{out}"
    );
}

/// The counts of a queue in the pipeline summary: "processed N, skipped N, failed N".
fn queue<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name} Queue:")))
        .unwrap_or_else(|| panic!("no {name} Queue in:\n{out}"))
        .trim()
}

/// The cache keys in bst's pipeline listing (`  waiting KEY element.bst`), by element name.
fn pipeline_keys(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, key, element] if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some((element.strip_suffix(".bst")?.to_owned(), key.to_owned()))
            }
            _ => None,
        })
        .collect()
}

/// What a checkout holds, comparable across directories.
#[derive(Debug, PartialEq)]
enum Entry {
    Dir,
    File { content: Vec<u8>, executable: bool },
    Symlink(PathBuf),
}

/// Every entry under `root`, by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Entry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let entry = if meta.is_symlink() {
                Entry::Symlink(fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                walk(root, &path, into);
                Entry::Dir
            } else {
                Entry::File {
                    content: fs::read(&path).unwrap(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            };
            into.insert(path.strip_prefix(root).unwrap().to_owned(), entry);
        }
    }
    let mut entries = BTreeMap::new();
    walk(root, root, &mut entries);
    entries
}

/// Every record file under `dir`, recursively.
fn records(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(records(&path));
        } else {
            found.push(fs::read(&path).unwrap());
        }
    }
    found
}

/// The bst ref (`bst1peer/ELEMENT/KEY`) an asset record is stored under, from its URI.
fn asset_ref(record: &[u8]) -> String {
    let at = record
        .windows(URN.len())
        .position(|w| w == URN.as_bytes())
        .unwrap_or_else(|| panic!("no {URN} URI in asset record {record:?}"));
    record[at + URN.len()..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"/._-".contains(b))
        .map(|&b| char::from(b))
        .collect()
}

/// Asserts `store` holds each of `artifacts` (`element`, key, root digest) under bst's ref,
/// in the form `refs` keeps it, and artifacts of exactly `elements`; all trees complete.
fn assert_store_holds(store: &Path, refs: Refs, artifacts: &[(&str, &str, &str)], elements: &[&str]) {
    let listed: Value = serde_json::from_str(&ok(casket(store).args(["ref", "list", "--json"]))).unwrap();
    let listed = listed.as_array().unwrap();
    let assets = records(&store.join("assets"));
    // (bst ref, the record or ref it is kept as)
    let kept: Vec<(String, String)> = match refs {
        Refs::RemoteAsset => {
            assert!(listed.is_empty(), "bst used ReferenceStorage: {listed:?}");
            assets
                .iter()
                .map(|r| (asset_ref(r), String::from_utf8_lossy(r).into_owned()))
                .collect()
        }
        Refs::ReferenceStorage => {
            assert!(assets.is_empty(), "bst pushed assets: {} records", assets.len());
            listed
                .iter()
                .map(|r| (r["name"].as_str().unwrap().to_owned(), r["digest"].to_string()))
                .collect()
        }
    };
    let kept_elements: BTreeSet<&str> = kept.iter().map(|(r, _)| r.split('/').nth(1).unwrap()).collect();
    assert_eq!(kept_elements, elements.iter().copied().collect(), "{kept:?}");
    for &(element, key, root) in artifacts {
        let name = format!("bst1peer/{element}/{key}");
        let (_, record) = kept
            .iter()
            .find(|(r, _)| *r == name)
            .unwrap_or_else(|| panic!("{name} is not on the server: {kept:?}"));
        // Both forms name the root by its hash: an asset record in its Digest, a ref as text.
        let hash = root.split('/').next().unwrap();
        assert!(
            record.contains(hash),
            "{name} does not point at {root}: {record:?}"
        );
        let tree: Value =
            serde_json::from_str(&ok(casket(store).args(["ls", "-r", "--json", root]))).unwrap();
        let paths: BTreeSet<&str> = tree
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        for path in ["files", "logs", "meta/keys.yaml"] {
            assert!(paths.contains(path), "{name} has no {path}: {paths:?}");
        }
    }
    ok(casket(store).arg("fsck"));
}

/// The whole cycle (build and push, push again, wipe, pull, check out, push elsewhere) with
/// casket keeping refs as `refs` says.
fn build_push_pull_checkout(refs: Refs) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let server = Serve::start(&store, refs.serve_args());
    let url = server.url.as_str();
    let project = Project::create(tmp.path(), url, format!("{refs:?}"));
    let short = |key: &str| key[..8].to_owned();

    // Builds: each pull probe misses, each build is pushed.
    let out = project.bst("build-hello", &["build", "hello.bst"]);
    let mut keys = pipeline_keys(&out);
    let hello = keys["hello"].clone();
    assert_says(
        &out,
        "pull:hello.bst",
        &format!("does not have {} cached", short(&hello)),
    );
    assert_says(
        &out,
        "push:hello.bst",
        &format!("Pushed artifact {} -> {url}", short(&hello)),
    );
    assert_eq!(queue(&out, "Push"), "processed 1, skipped 0, failed 0");

    let out = project.bst("build-built", &["build", "built.bst"]);
    keys.extend(pipeline_keys(&out));
    let built = keys["built"].clone();
    assert_says(&out, "build:built.bst", "SUCCESS Running install-commands");
    for element in ["base", "built"] {
        let pushed = format!("Pushed artifact {} -> {url}", short(&keys[element]));
        assert_says(&out, &format!("push:{element}.bst"), &pushed);
    }
    assert_eq!(queue(&out, "Build"), "processed 2, skipped 0, failed 0");
    assert_eq!(queue(&out, "Push"), "processed 2, skipped 0, failed 0");
    let hello_root = project.local_root("hello", &hello);
    let built_root = project.local_root("built", &built);

    // `bst push`: the server already has both, under the same roots.
    let out = project.bst("push", &["push", "hello.bst", "built.bst"]);
    for (element, key) in [("hello", &hello), ("built", &built)] {
        let already = format!("Remote ({url}) already has {} cached", short(key));
        assert_says(&out, &format!("push:{element}.bst"), &already);
    }
    assert_eq!(queue(&out, "Push"), "processed 0, skipped 2, failed 0");

    // Nothing left locally: pull both back from casket and check them out.
    fs::remove_dir_all(project.artifacts()).unwrap();
    let out = project.bst("pull", &["pull", "hello.bst", "built.bst"]);
    for (element, key) in [("hello", &hello), ("built", &built)] {
        let pulled = format!("Pulled artifact {} <- {url}", short(key));
        assert_says(&out, &format!("pull:{element}.bst"), &pulled);
    }
    assert_eq!(queue(&out, "Pull"), "processed 2, skipped 0, failed 0");
    assert_eq!(project.local_root("hello", &hello), hello_root);
    assert_eq!(project.local_root("built", &built), built_root);

    let checkout = tmp.path().join("co-built");
    project.bst(
        "checkout-built",
        &["checkout", "built.bst", checkout.to_str().unwrap()],
    );
    let expected = BTreeMap::from([(
        PathBuf::from("out.txt"),
        Entry::File {
            content: b"built in sandbox\n".to_vec(),
            executable: false,
        },
    )]);
    assert_eq!(snapshot(&checkout), expected);

    let checkout = tmp.path().join("co-hello");
    project.bst(
        "checkout-hello",
        &["checkout", "hello.bst", checkout.to_str().unwrap()],
    );
    let files = snapshot(&project.dir().join("files"));
    assert_eq!(files.len(), 8, "{:?}", files.keys());
    assert!(
        snapshot(&checkout) == files,
        "the hello checkout differs from its sources"
    );

    // The pulled artifacts are whole: `bst push --remote` uploads them to an empty casket.
    let second_store = tmp.path().join("second-store");
    let second = Serve::start(&second_store, refs.serve_args());
    let out = project.bst(
        "push-second",
        &["push", "--remote", &second.url, "hello.bst", "built.bst"],
    );
    for (element, key) in [("hello", &hello), ("built", &built)] {
        let pushed = format!("Pushed artifact {} -> {}", short(key), second.url);
        assert_says(&out, &format!("push:{element}.bst"), &pushed);
    }
    assert_eq!(queue(&out, "Push"), "processed 2, skipped 0, failed 0");

    drop(server);
    drop(second);
    let artifacts = [
        ("hello", hello.as_str(), hello_root.as_str()),
        ("built", &built, &built_root),
    ];
    assert_store_holds(&store, refs, &artifacts, &["base", "built", "hello"]);
    assert_store_holds(&second_store, refs, &artifacts, &["built", "hello"]);
}

#[test]
fn bst_cli_builds_pushes_pulls_and_checks_out_through_remote_asset() {
    if peer_available("bst 1.6.8 CLI", bst_cli()) {
        build_push_pull_checkout(Refs::RemoteAsset);
    }
}

#[test]
fn bst_cli_builds_pushes_pulls_and_checks_out_through_reference_storage() {
    if peer_available("bst 1.6.8 CLI", bst_cli()) {
        build_push_pull_checkout(Refs::ReferenceStorage);
    }
}
