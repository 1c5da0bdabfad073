//! `cargo xtask bench-peers`: casket and its peers on the same workloads, in one run, written
//! into `docs/benchmarks.md` between markers, one section per group.
//!
//! * [`local_store`]: capture and checkout against BuildStream 1.6.8's import, `openssl` and
//!   `cp` (issue 2).
//! * [`transfer`]: push and pull to and from servers, casket against BuildStream 1.6.8's
//!   client and server, with a PNG chart (issues 4 and 5).
//! * [`clients`]: casket's client against BuildStream 1.6.8's, BuildGrid's and buildbox-casd's
//!   servers, next to each one's own client (issue 14).
//!
//! Run it on a quiet machine and file system: for a few minutes after a mass deletion, ext4
//! allocates new inodes slowly (`recently_deleted`), which slows every writer. Runs leave their
//! outputs in place for that reason.

mod chart;
mod clients;
mod local_store;
mod transfer;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// Runs the selected sections (`--only local|transfer|clients`; all by default).
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "-p", "casket"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let casket = fs::canonicalize("target/release/casket")?;
    for tool in ["peers/bst1/client.py", "peers/gen_tree.py", "peers/bst1/serve.sh"] {
        if !options.shared.join(tool).exists() {
            bail!(
                "{tool} not found in {}: pass --shared DIR or set CASKET_SHARED",
                options.shared.display()
            );
        }
    }
    fs::create_dir_all(&options.work)?;
    let only = options.only.as_deref();
    if only.is_none_or(|o| o == "local") {
        local_store::run(&options, &casket)?;
    }
    if only.is_none_or(|o| o == "transfer") {
        transfer::run(&options, &casket)?;
    }
    if only.is_none_or(|o| o == "clients") {
        clients::run(&options, &casket)?;
    }
    Ok(())
}

pub(crate) struct Options {
    pub(crate) reps: usize,
    pub(crate) work: PathBuf,
    pub(crate) large_mib: u64,
    pub(crate) shared: PathBuf,
    /// Which sections to run: `local`, `transfer`, or both.
    pub(crate) only: Option<String>,
}

pub(crate) fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        reps: 5,
        work: std::env::temp_dir().join("casket-bench"),
        large_mib: 1024,
        shared: std::env::var_os("CASKET_SHARED").map_or_else(|| PathBuf::from("../shared"), PathBuf::from),
        only: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--reps" => options.reps = value.parse()?,
            "--work" => options.work = PathBuf::from(value),
            "--large-mib" => options.large_mib = value.parse()?,
            "--shared" => options.shared = PathBuf::from(value),
            "--only" => options.only = Some(value.clone()),
            _ => bail!("unknown option {flag}"),
        }
    }
    Ok(options)
}

pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) ours: Vec<f64>,
    pub(crate) peer: String,
    pub(crate) theirs: Vec<f64>,
    pub(crate) target: &'static str,
}

impl Row {
    pub(crate) fn new(what: &str, ours: &[f64], peer: &str, theirs: &[f64], target: &'static str) -> Self {
        Row {
            what: what.to_owned(),
            ours: ours.to_vec(),
            peer: peer.to_owned(),
            theirs: theirs.to_vec(),
            target,
        }
    }
}

pub(crate) fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn render(rows: &[Row], options: &Options, unit: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Measured with `cargo xtask bench-peers --reps {}` on {} ({} cores). {unit}, min / median of {} runs; speed-up = peer median / casket median.\n\n",
        options.reps,
        machine(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.reps,
    ));
    out.push_str(
        "| workload | casket (s) | peer | peer (s) | speed-up | target |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {:.3} / {:.3} | {} | {:.3} / {:.3} | {:.2}x | {} |\n",
            row.what,
            min(&row.ours),
            median(&row.ours),
            row.peer,
            min(&row.theirs),
            median(&row.theirs),
            median(&row.theirs) / median(&row.ours),
            row.target,
        ));
    }
    out
}

pub(crate) fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {}", kernel.trim())
}

/// Replaces the text between the `bench-peers:NAME:begin` and `:end` markers of `path`.
pub(crate) fn write_section(path: &Path, name: &str, table: &str) -> anyhow::Result<()> {
    let (begin_marker, end_marker) = (
        format!("<!-- bench-peers:{name}:begin -->"),
        format!("<!-- bench-peers:{name}:end -->"),
    );
    let text = fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin_marker}\n{table}{end_marker}");
    let text = match (text.find(&begin_marker), text.find(&end_marker)) {
        (Some(begin), Some(end)) => format!("{}{section}{}", &text[..begin], &text[end + end_marker.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Generates a tree unless the same arguments already produced it.
pub(crate) fn generate(script: &Path, out: &Path, args: &[&str]) -> anyhow::Result<()> {
    let stamp = out.with_extension("args");
    let wanted = args.join(" ");
    if out.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    if out.exists() {
        fs::remove_dir_all(out)?;
    }
    let status = Command::new("python3")
        .arg(script)
        .arg(out)
        .args(args)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("gen_tree.py failed for {}", out.display());
    }
    fs::write(stamp, wanted)?;
    Ok(())
}

/// Reads every file once so that all runs start from a warm page cache.
pub(crate) fn warm(tree: &Path) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg("find \"$1\" -type f -exec cat {} + > /dev/null")
        .arg("sh")
        .arg(tree)
        .status()?;
    if !status.success() {
        bail!("cannot read {}", tree.display());
    }
    Ok(())
}

pub(crate) fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// BuildStream's own timing of its import phase.
pub(crate) fn bst_import_seconds(client: &Path, repo: &Path, tree: &Path) -> anyhow::Result<f64> {
    let out = output(
        Command::new("/usr/bin/python3")
            .arg(client)
            .args(["import", "--repo"])
            .arg(repo)
            .arg(tree),
    )?;
    let phase = out
        .lines()
        .find(|l| l.starts_with("PHASE import"))
        .context("client.py printed no import phase")?;
    let seconds = phase
        .split_whitespace()
        .find_map(|w| w.strip_prefix("seconds="))
        .context("no seconds= in the import phase")?;
    Ok(seconds.parse()?)
}
