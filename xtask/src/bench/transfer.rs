//! Transfer workloads (issues 4 and 5), each on a fresh server per run:
//! * `casket push` / `casket pull` against `casket serve`, compared with BuildStream 1.6.8's
//!   client (`client.py roundtrip`) against its own server;
//! * BuildStream 1.6.8's client against `casket serve`, compared with the same client against
//!   its own server (what casket's server is worth to an unchanged BuildStream).
//!
//! Times are each tool's own in-process transfer phase (casket's `--json` `seconds`,
//! BuildStream's `PHASE push|pull seconds=`), so interpreter and process start-up count for
//! neither.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Options, Row, chart, generate, median, output, render, warm, write_section};

/// A server process, killed when dropped.
pub(super) struct Server {
    child: Child,
    pub(super) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server and waits for the stderr line containing `ready`; `address` extracts the
/// `HOST:PORT` from it.
fn start(
    mut command: Command,
    ready: &str,
    address: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Server> {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains(ready))
        .context("the server did not start")?;
    std::thread::spawn(move || for _ in lines {});
    let address = address(&line).with_context(|| format!("no address in {line:?}"))?;
    Ok(Server {
        child,
        url: format!("http://{address}"),
    })
}

pub(super) fn casket_server(casket: &Path, store: &Path) -> anyhow::Result<Server> {
    let mut command = Command::new(casket);
    command
        .arg("--store")
        .arg(store)
        .args(["serve", "--listen", "127.0.0.1:0", "--allow-push"]);
    start(command, "serving", |line| {
        line.split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .map(str::to_owned)
    })
}

pub(super) fn bst1_server(shared: &Path, repo: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut command = Command::new(shared.join("peers/bst1/serve.sh"));
    command.arg(port.to_string()).arg(repo);
    start(command, "listening on", |_| Some(format!("127.0.0.1:{port}")))
}

/// Starts a server that prints nothing useful, and waits until it accepts connections on
/// `port`.
pub(super) fn start_on_port(command: &mut Command, port: u16) -> anyhow::Result<Server> {
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{command:?} did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// A free TCP port on 127.0.0.1.
pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// BuildStream's client pushing and pulling `tree` through `url`: the seconds of its
/// `import`, `push`, `pull` and `checkout` phases.
pub(super) fn bst1_phases(client: &Path, url: &str, tree: &Path, work: &Path) -> anyhow::Result<[f64; 4]> {
    let out = output(
        Command::new("/usr/bin/python3")
            .arg(client)
            .args(["roundtrip", "--url", url])
            .arg(tree)
            .arg("--work")
            .arg(work)
            .arg("--keep"),
    )?;
    let phase = |name: &str| -> anyhow::Result<f64> {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("PHASE {name} ")))
            .with_context(|| format!("client.py printed no {name} phase:\n{out}"))?;
        let seconds = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("seconds="))
            .context("no seconds=")?;
        Ok(seconds.parse()?)
    };
    Ok([
        phase("import")?,
        phase("push")?,
        phase("pull")?,
        phase("checkout")?,
    ])
}

/// BuildStream's client pushing and pulling `tree` through `url`: its push and pull seconds.
fn bst1_roundtrip(client: &Path, url: &str, tree: &Path, work: &Path) -> anyhow::Result<(f64, f64)> {
    let [_, push, pull, _] = bst1_phases(client, url, tree, work)?;
    Ok((push, pull))
}

/// `casket push` then `casket pull` of `tree` through `url`: their in-process seconds.
fn casket_roundtrip(casket: &Path, url: &str, tree: &Path, work: &Path) -> anyhow::Result<(f64, f64)> {
    let source = work.join("source");
    let root = output(
        Command::new(casket)
            .arg("--store")
            .arg(&source)
            .args(["-q", "capture"])
            .arg(tree),
    )?;
    let remote = url.replace("http://", "grpc://");
    let seconds = |out: String| -> anyhow::Result<f64> {
        let report: serde_json::Value = serde_json::from_str(out.trim())?;
        report["seconds"].as_f64().context("no seconds in the report")
    };
    let push = seconds(output(Command::new(casket).arg("--store").arg(&source).args([
        "-q",
        "push",
        root.trim(),
        "--remote",
        &remote,
        "--json",
    ]))?)?;
    let pull = seconds(output(
        Command::new(casket)
            .arg("--store")
            .arg(work.join("target"))
            .args(["-q", "pull", root.trim(), "--remote", &remote, "--json"]),
    )?)?;
    Ok((push, pull))
}

/// One workload's measurements: push and pull seconds per run, for each pairing.
#[derive(Default)]
struct Runs {
    casket: (Vec<f64>, Vec<f64>),
    bst1: (Vec<f64>, Vec<f64>),
    bst1_to_casket: (Vec<f64>, Vec<f64>),
    casket_to_bst1: (Vec<f64>, Vec<f64>),
}

fn push_to(runs: &mut (Vec<f64>, Vec<f64>), (push, pull): (f64, f64)) {
    runs.0.push(push);
    runs.1.push(pull);
}

/// Runs the transfer workloads and writes their table and chart.
pub(crate) fn run(options: &Options, casket: &Path) -> anyhow::Result<()> {
    let client = options.shared.join("peers/bst1/client.py");
    let gen_tree = options.shared.join("peers/gen_tree.py");
    let large_bytes = options.large_mib << 20;
    let large_arg = format!("1:{large_bytes}");
    let workloads: Vec<(String, Vec<&str>, usize, u64)> = vec![
        (
            "10,000 x 4 KiB".into(),
            vec!["--files", "10000", "--size", "4096", "--dirs", "200"],
            options.reps,
            10_000 * 4096,
        ),
        (
            "100,000 x 1 KiB".into(),
            vec!["--files", "100000", "--size", "1024", "--dirs", "2000"],
            1,
            100_000 * 1024,
        ),
        (
            format!("1 x {} MiB", options.large_mib),
            vec!["--files", "0", "--dirs", "0", "--large", &large_arg],
            options.reps.min(2),
            large_bytes,
        ),
    ];
    let runs_dir = options.work.join(format!("transfer-{}", std::process::id()));
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for (name, args, reps, bytes) in &workloads {
        let slug: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
        let tree = options.work.join(format!("tree-{slug}"));
        generate(&gen_tree, &tree, args)?;
        warm(&tree)?;
        let mut runs = Runs::default();
        for rep in 0..*reps {
            let dir = runs_dir.join(format!("{slug}-{rep}"));
            fs::create_dir_all(&dir)?;
            println!("==> {name}, run {}", rep + 1);
            let server = casket_server(casket, &dir.join("casket-server"))?;
            push_to(
                &mut runs.casket,
                casket_roundtrip(casket, &server.url, &tree, &dir.join("casket"))?,
            );
            drop(server);
            let server = bst1_server(&options.shared, &dir.join("bst1-server"))?;
            push_to(
                &mut runs.bst1,
                bst1_roundtrip(&client, &server.url, &tree, &dir.join("bst1"))?,
            );
            drop(server);
            if *bytes < large_bytes {
                let server = casket_server(casket, &dir.join("casket-server-for-bst1"))?;
                push_to(
                    &mut runs.bst1_to_casket,
                    bst1_roundtrip(&client, &server.url, &tree, &dir.join("bst1-to-casket"))?,
                );
                drop(server);
                let server = bst1_server(&options.shared, &dir.join("bst1-server-for-casket"))?;
                push_to(
                    &mut runs.casket_to_bst1,
                    casket_roundtrip(casket, &server.url, &tree, &dir.join("casket-to-bst1"))?,
                );
            }
        }
        let (push_target, pull_target) = match name.as_str() {
            "10,000 x 4 KiB" => (">= 20x", ">= 20x"),
            "100,000 x 1 KiB" => (">= 30x", ">= 30x"),
            _ => (">= 800 MB/s", ">= 800 MB/s"),
        };
        let peer = "BuildStream 1.6.8 client -> its server";
        rows.push(Row::new(
            &format!("push {name} (casket -> casket serve)"),
            &runs.casket.0,
            peer,
            &runs.bst1.0,
            push_target,
        ));
        rows.push(Row::new(
            &format!("pull {name} (casket <- casket serve)"),
            &runs.casket.1,
            peer,
            &runs.bst1.1,
            pull_target,
        ));
        if !runs.bst1_to_casket.0.is_empty() {
            let same_client = "the same client -> its own server";
            rows.push(Row::new(
                &format!("push {name} (BuildStream 1.6.8 client -> casket serve)"),
                &runs.bst1_to_casket.0,
                same_client,
                &runs.bst1.0,
                "<= 1.0 s (10k files)",
            ));
            rows.push(Row::new(
                &format!("pull {name} (BuildStream 1.6.8 client <- casket serve)"),
                &runs.bst1_to_casket.1,
                same_client,
                &runs.bst1.1,
                "<= 1.0 s (10k files)",
            ));
        }
        if !runs.casket_to_bst1.0.is_empty() {
            // The client's own limit on requests in flight must find what this server takes.
            let own_client = "BuildStream 1.6.8's own client -> its server";
            rows.push(Row::new(
                &format!("push {name} (casket -> BuildStream 1.6.8 server)"),
                &runs.casket_to_bst1.0,
                own_client,
                &runs.bst1.0,
                ">= 1x",
            ));
            rows.push(Row::new(
                &format!("pull {name} (casket <- BuildStream 1.6.8 server)"),
                &runs.casket_to_bst1.1,
                own_client,
                &runs.bst1.1,
                ">= 1x",
            ));
        }
        let mb_per_s = |v: &[f64]| *bytes as f64 / median(v) / 1e6;
        rates.push(format!(
            "{name}: casket push {:.0} MB/s, pull {:.0} MB/s; BuildStream push {:.0} MB/s, pull {:.0} MB/s",
            mb_per_s(&runs.casket.0),
            mb_per_s(&runs.casket.1),
            mb_per_s(&runs.bst1.0),
            mb_per_s(&runs.bst1.1)
        ));
    }
    let png = Path::new("docs/benchmarks-transfer.png");
    chart::speedups(&rows, png)?;
    let mut table = render(
        &rows,
        options,
        "Transfer seconds (each tool's own in-process phase)",
    );
    table.push_str("\nThroughput (medians): ");
    table.push_str(&rates.join("; "));
    table.push_str("\n\n![speed-ups](benchmarks-transfer.png)\n");
    println!("{table}");
    write_section(Path::new("docs/benchmarks.md"), "transfer", &table)?;
    println!(
        "left {} in place; remove it when no benchmark is about to run",
        runs_dir.display()
    );
    Ok(())
}
