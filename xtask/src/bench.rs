//! `cargo xtask bench-peers`: casket and its peers on the same workloads, in one run.
//!
//! Local store workloads (issue 2):
//! * capture of 10,000 files of 4 KiB vs BuildStream 1.6.8's import (`client.py import`);
//! * capture of one large file vs `openssl dgst -sha256` of it;
//! * hardlink checkout of the 10,000-file tree vs `cp -r`.
//!
//! Run it on a quiet file system: for a few minutes after a mass deletion, ext4 allocates new
//! inodes slowly (`recently_deleted`), which slows every writer. The run leaves its outputs in
//! place for that reason.
//!
//! Every measurement is repeated; the table reports the minimum and the median wall time and
//! the ratios of the medians. BuildStream's time is its own in-process `import` phase, so its
//! interpreter start-up is not counted against it; casket's is the whole process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// Where the markdown table goes, between these markers.
const BEGIN: &str = "<!-- bench-peers:local-store:begin -->";
const END: &str = "<!-- bench-peers:local-store:end -->";

struct Options {
    reps: usize,
    work: PathBuf,
    large_mib: u64,
    shared: PathBuf,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        reps: 5,
        work: std::env::temp_dir().join("casket-bench"),
        large_mib: 1024,
        shared: std::env::var_os("CASKET_SHARED").map_or_else(|| PathBuf::from("../shared"), PathBuf::from),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--reps" => options.reps = value.parse()?,
            "--work" => options.work = PathBuf::from(value),
            "--large-mib" => options.large_mib = value.parse()?,
            "--shared" => options.shared = PathBuf::from(value),
            _ => bail!("unknown option {flag}"),
        }
    }
    Ok(options)
}

/// Runs the benchmarks and writes the table into docs/benchmarks.md.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet", "-p", "casket"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed");
    }
    let casket = fs::canonicalize("target/release/casket")?;
    let client = options.shared.join("peers/bst1/client.py");
    let gen_tree = options.shared.join("peers/gen_tree.py");
    for tool in [&client, &gen_tree] {
        if !tool.exists() {
            bail!(
                "{} not found: pass --shared DIR or set CASKET_SHARED",
                tool.display()
            );
        }
    }

    let work = &options.work;
    fs::create_dir_all(work)?;
    let small = work.join("tree-10k-4k");
    let large = work.join(format!("tree-1x{}m", options.large_mib));
    generate(
        &gen_tree,
        &small,
        &["--files", "10000", "--size", "4096", "--dirs", "200"],
    )?;
    let large_arg = format!("1:{}", options.large_mib << 20);
    generate(
        &gen_tree,
        &large,
        &["--files", "0", "--dirs", "0", "--large", &large_arg],
    )?;
    let large_file = large.join("large0.bin");
    warm(&small)?;
    warm(&large)?;

    let runs = work.join(format!("runs-{}", std::process::id()));
    fs::create_dir_all(&runs)?;
    let mut capture_small = Vec::new();
    let mut bst_import = Vec::new();
    let mut capture_large = Vec::new();
    let mut openssl = Vec::new();
    let mut checkout = Vec::new();
    let mut cp = Vec::new();
    let shared_store = runs.join("checkout-store");
    let root = output(
        Command::new(&casket)
            .arg("--store")
            .arg(&shared_store)
            .args(["-q", "capture"])
            .arg(&small),
    )?;
    for rep in 0..options.reps {
        let dir = runs.join(format!("rep{rep}"));
        fs::create_dir_all(&dir)?;
        capture_small.push(timed(
            Command::new(&casket)
                .arg("--store")
                .arg(dir.join("s1"))
                .args(["-q", "capture"])
                .arg(&small),
        )?);
        bst_import.push(bst_import_seconds(&client, &dir.join("bst"), &small)?);
        capture_large.push(timed(
            Command::new(&casket)
                .arg("--store")
                .arg(dir.join("s2"))
                .args(["-q", "capture"])
                .arg(&large),
        )?);
        openssl.push(timed(
            Command::new("openssl").args(["dgst", "-sha256"]).arg(&large_file),
        )?);
        checkout.push(timed(
            Command::new(&casket)
                .arg("--store")
                .arg(&shared_store)
                .args(["-q", "checkout", root.trim()])
                .arg(dir.join("checkout")),
        )?);
        cp.push(timed(
            Command::new("cp").arg("-r").arg(&small).arg(dir.join("cp")),
        )?);
    }

    let rows = [
        Row::new(
            "capture 10,000 x 4 KiB",
            &capture_small,
            "BuildStream 1.6.8 import",
            &bst_import,
            ">= 15x",
        ),
        Row::new(
            &format!("capture 1 x {} MiB", options.large_mib),
            &capture_large,
            "openssl dgst -sha256",
            &openssl,
            ">= 0.77x (casket <= 1.3x its time)",
        ),
        Row::new(
            "checkout 10,000 x 4 KiB (hardlink)",
            &checkout,
            "cp -r",
            &cp,
            ">= 5x",
        ),
    ];
    let table = render(&rows, &options);
    println!("{table}");
    write_section(Path::new("docs/benchmarks.md"), &table)?;
    // Removing tens of thousands of files makes ext4 allocate new inodes slowly for minutes
    // after (it avoids recently deleted ones), which would distort the next measurement.
    println!(
        "left {} in place; remove it when no benchmark is about to run",
        runs.display()
    );
    Ok(())
}

struct Row {
    what: String,
    ours: Vec<f64>,
    peer: String,
    theirs: Vec<f64>,
    target: &'static str,
}

impl Row {
    fn new(what: &str, ours: &[f64], peer: &str, theirs: &[f64], target: &'static str) -> Self {
        Row {
            what: what.to_owned(),
            ours: ours.to_vec(),
            peer: peer.to_owned(),
            theirs: theirs.to_vec(),
            target,
        }
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn render(rows: &[Row], options: &Options) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Measured with `cargo xtask bench-peers --reps {}` on {} ({} cores). Wall seconds, min / median of {} runs; speed-up = peer median / casket median.\n\n",
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

fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {}", kernel.trim())
}

fn write_section(path: &Path, table: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{table}{END}");
    let text = match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) => format!("{}{section}{}", &text[..begin], &text[end + END.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Generates a tree unless the same arguments already produced it.
fn generate(script: &Path, out: &Path, args: &[&str]) -> anyhow::Result<()> {
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
fn warm(tree: &Path) -> anyhow::Result<()> {
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

fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// BuildStream's own timing of its import phase.
fn bst_import_seconds(client: &Path, repo: &Path, tree: &Path) -> anyhow::Result<f64> {
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
