//! A real 3-node Garage cluster (S3-compatible object store) on loopback, for tests that need
//! an S3 backend: replication factor 3, consistency mode "consistent", so reads and writes keep
//! working with one node killed. Every node gets its own free ports, its own directories and
//! log under one temporary folder; dropping the [`Garage`] kills every node and removes it.
//!
//! The binary is `$CASKET_GARAGE`, else `${CASKET_PEERS_DIR:-/var/cache/casket-peers}/garage/bin/garage`
//! (what `.ci/peers/garage.sh` installs), else `garage` on PATH.
//! See /work/issue6-research.md ("Recipe") for how the cluster is formed.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The S3 key every cluster has, with read, write and owner rights on [`BUCKET`]. Garage accepts
/// this format (`GK` + 24 hex, 64-hex secret) in every 2.x release.
const KEY_ID: &str = "GK0123456789abcdef01234567";
const KEY_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KEY_NAME: &str = "casket";
const BUCKET: &str = "casket";
const REGION: &str = "garage";
/// How long a node may take to answer its first CLI call, and the cluster to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// Lines of each node's log quoted when something fails.
const LOG_TAIL: usize = 30;

/// One node: its config, log and ports, and its process while it runs.
struct Node {
    config: PathBuf,
    log: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    admin_port: u16,
    /// `<64 hex>@127.0.0.1:<rpc>`, known once the node has started.
    id: String,
    child: Option<Child>,
}

/// A running 3-node Garage cluster with bucket [`Garage::bucket`] and a key allowed on it.
/// Dropping it kills every node (SIGKILL) and removes its temporary folder.
pub(crate) struct Garage {
    binary: PathBuf,
    nodes: Vec<Node>,
    // Dropped after `drop()` has killed the nodes.
    dir: TempDir,
}

/// The garage binary to use, or why there is none.
fn find_binary() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if let Some(path) = std::env::var_os("CASKET_GARAGE") {
        vec![PathBuf::from(path)]
    } else {
        let peers = std::env::var_os("CASKET_PEERS_DIR")
            .map_or_else(|| PathBuf::from("/var/cache/casket-peers"), PathBuf::from);
        vec![peers.join("garage/bin/garage"), PathBuf::from("garage")]
    };
    let mut problems = Vec::new();
    for candidate in candidates {
        match Command::new(&candidate).arg("--version").output() {
            Ok(out) if out.status.success() => return Ok(candidate),
            Ok(out) => problems.push(format!(
                "`{} --version` failed with {}: {}",
                candidate.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => problems.push(format!("{}: {e}", candidate.display())),
        }
    }
    Err(problems.join("; "))
}

/// 64 random hex characters, from std's randomly keyed hasher, the time and the pid.
fn random_hex64() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = String::with_capacity(64);
    for round in 0u8..4 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_u8(round);
        write!(out, "{:016x}", hasher.finish()).unwrap();
    }
    out
}

/// `n` distinct free loopback ports: all listeners stay bound until every port is chosen.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// The last `LOG_TAIL` lines of `log`, without the ANSI colours Garage writes.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "ESC [ ... letter".
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let lines: Vec<&str> = plain.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

impl Garage {
    /// Starts a fresh cluster: 3 nodes connected, a layout with all three (1 GB each, zone
    /// dc1), the key and the bucket. About 2 s. `None` (after `peer_available`'s skip message)
    /// when no garage binary runs; panics under `CASKET_REQUIRE_PEERS=1`.
    pub(crate) fn start() -> Option<Garage> {
        let binary = match find_binary() {
            Ok(binary) => binary,
            Err(problem) => {
                super::peer_available("garage", Some(problem));
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("casket-garage-")
            .tempdir()
            .unwrap();
        let rpc_secret = random_hex64();
        let admin_token = random_hex64();
        let ports = free_ports(9);
        let mut nodes = Vec::new();
        for (n, ports) in (1..=3).zip(ports.chunks(3)) {
            let node_dir = dir.path().join(format!("n{n}"));
            fs::create_dir(&node_dir).unwrap();
            let (s3_port, rpc_port, admin_port) = (ports[0], ports[1], ports[2]);
            let node_dir_str = node_dir.to_str().unwrap();
            let config = format!(
                r#"metadata_dir = "{node_dir_str}/meta"
data_dir = "{node_dir_str}/data"
db_engine = "lmdb"
lmdb_map_size = "1G"
replication_factor = 3
consistency_mode = "consistent"
compression_level = "none"
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"
rpc_timeout_msec = 30000

[s3_api]
api_bind_addr = "127.0.0.1:{s3_port}"
s3_region = "{REGION}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#
            );
            let config_path = node_dir.join("garage.toml");
            fs::write(&config_path, config).unwrap();
            nodes.push(Node {
                config: config_path,
                log: node_dir.join("log"),
                s3_port,
                rpc_port,
                admin_port,
                id: String::new(),
                child: None,
            });
        }
        // From here on, a panic drops `garage`, which kills whatever runs.
        let mut garage = Garage { binary, nodes, dir };
        for n in 1..=3 {
            garage.spawn(n);
        }
        for n in 1..=3 {
            garage.wait_answers(n);
            let id = garage.cli_on(n, &["node", "id", "-q"]).trim().to_owned();
            assert!(id.contains('@'), "unexpected `garage node id -q` output {id:?}");
            garage.nodes[n - 1].id = id;
        }
        for (from, to) in [(1, 2), (1, 3), (2, 3)] {
            let id = garage.nodes[to - 1].id.clone();
            garage.cli_on(from, &["node", "connect", &id]);
        }
        let hex_ids: Vec<String> = garage
            .nodes
            .iter()
            .map(|node| node.id.split('@').next().unwrap().to_owned())
            .collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        assign.extend(hex_ids.iter().map(String::as_str));
        garage.cli(&assign);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.wait_healthy();
        garage.cli(&["key", "import", "--yes", "-n", KEY_NAME, KEY_ID, KEY_SECRET]);
        garage.cli(&["bucket", "create", BUCKET]);
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_NAME,
        ]);
        Some(garage)
    }

    /// Node `node`'s S3 API, `http://127.0.0.1:PORT` (path-style addressing).
    pub(crate) fn s3_endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.node(node).s3_port)
    }

    /// Node `node`'s admin API (`/health`, `/metrics`, `/v2/...`), `http://127.0.0.1:PORT`.
    pub(crate) fn admin_endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.node(node).admin_port)
    }

    /// The bucket the key may read and write.
    pub(crate) fn bucket(&self) -> &str {
        BUCKET
    }

    /// The S3 access key id.
    pub(crate) fn key_id(&self) -> &str {
        KEY_ID
    }

    /// The S3 secret access key.
    pub(crate) fn secret(&self) -> &str {
        KEY_SECRET
    }

    /// The region clients must sign with.
    pub(crate) fn region(&self) -> &str {
        REGION
    }

    /// Kills node `node` (SIGKILL), waits for it to exit, then until the running nodes report
    /// the cluster "degraded" ("unavailable" with one left). Requests through the other nodes
    /// work at once, but they notice the loss only through failed pings: this takes about 9 s.
    pub(crate) fn kill(&mut self, node: usize) {
        let child = self.nodes[node - 1].child.take();
        let Some(mut child) = child else {
            panic!("garage node {node} is not running")
        };
        child.kill().unwrap();
        child.wait().unwrap();
        self.wait_status(self.expected_status());
    }

    /// Starts node `node` again (killing it first if it runs) with the same config and data,
    /// connects it and the other running nodes to each other, and waits until every running node
    /// reports the cluster "healthy" (or "degraded" while another node is down); about 0.5 s.
    pub(crate) fn restart(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn(node);
        self.wait_answers(node);
        // Connect both ways. Its saved peer list may predate the cluster (saved every 60 s), and
        // nodes that saw it die redial only after a back-off (20 s and more).
        let id = self.nodes[node - 1].id.clone();
        for other in 1..=3 {
            if other != node && self.nodes[other - 1].child.is_some() {
                let other_id = self.nodes[other - 1].id.clone();
                self.cli_on(node, &["node", "connect", &other_id]);
                self.cli_on(other, &["node", "connect", &id]);
            }
        }
        self.wait_status(self.expected_status());
    }

    /// Waits until every running node reports `expected` ("healthy", "degraded" or
    /// "unavailable"); panics with the health JSON and the logs after 60 s.
    pub(crate) fn wait_status(&self, expected: &str) {
        self.wait_for(expected, HEALTH_TIMEOUT);
    }

    /// Waits until every live node reports "healthy"; panics with the health JSON and the
    /// logs after 60 s.
    pub(crate) fn wait_healthy(&self) {
        self.wait_for("healthy", HEALTH_TIMEOUT);
    }

    /// The cluster's "status" as node `node` sees it (`garage json-api GetClusterHealth`):
    /// "healthy", "degraded" or "unavailable". Panics if the node does not answer.
    pub(crate) fn health(&self, node: usize) -> String {
        match self.try_health(node) {
            Ok((status, _)) => status,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// Total S3 API requests node `node` has served since it started, by endpoint name
    /// ("HeadObject", "PutObject", "GetObject", "ListObjectsV2", ...): the
    /// `api_s3_request_counter{api_endpoint="..."}` counters of its admin port's `/metrics`
    /// (public, as no `metrics_token` is configured). An endpoint never called is absent.
    pub(crate) fn s3_requests(&self, node: usize) -> BTreeMap<String, u64> {
        let port = self.node(node).admin_port;
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("garage node {node}'s admin port {port}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "GET /metrics on node {node}: {head}"
        );
        let mut counts = BTreeMap::new();
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("api_s3_request_counter{") else {
                continue;
            };
            let (labels, value) = rest
                .rsplit_once("} ")
                .unwrap_or_else(|| panic!("metric line {line:?}"));
            let endpoint = labels
                .split_once("api_endpoint=\"")
                .and_then(|(_, after)| after.split_once('"'))
                .map_or_else(
                    || panic!("no api_endpoint in {line:?}"),
                    |(name, _)| name.to_owned(),
                );
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("metric line {line:?}: {e}"));
            // Counters are whole numbers, printed as such.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let value = value as u64;
            *counts.entry(endpoint).or_insert(0) += value;
        }
        counts
    }

    /// Runs `garage -c <node 1's config> ARGS` (the first running node's config if node 1 is
    /// down) and returns its stdout; panics with its stderr and the logs if it fails.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let node = (1..=3)
            .find(|&n| self.nodes[n - 1].child.is_some())
            .expect("no garage node is running");
        self.cli_on(node, args)
    }

    fn node(&self, node: usize) -> &Node {
        assert!((1..=3).contains(&node), "garage nodes are 1..=3, not {node}");
        &self.nodes[node - 1]
    }

    /// `garage -c <node's config>`.
    fn command(&self, node: usize) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&self.node(node).config).stdin(Stdio::null());
        cmd
    }

    fn cli_on(&self, node: usize, args: &[&str]) -> String {
        let out = self.command(node).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "`garage {}` on node {node} failed with {}:\n{}{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts node `node`'s server, its output appended to its log.
    fn spawn(&mut self, node: usize) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.node(node).log)
            .unwrap();
        let child = self
            .command(node)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.nodes[node - 1].child = Some(child);
    }

    /// Waits until node `node` answers `garage status` (about 0.1 s after its start).
    fn wait_answers(&mut self, node: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = self.command(node).arg("status").output().unwrap();
            if out.status.success() {
                return;
            }
            let child = self.nodes[node - 1].child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.nodes[node - 1].child = None;
                panic!(
                    "garage node {node} exited with {status} at start:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "garage node {node} (rpc port {}) did not answer `garage status` within {START_TIMEOUT:?}: {}\n{}",
                    self.node(node).rpc_port,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.logs()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// (status, whole JSON) from `garage json-api GetClusterHealth` on node `node`.
    fn try_health(&self, node: usize) -> Result<(String, String), String> {
        let out = self
            .command(node)
            .args(["json-api", "GetClusterHealth"])
            .output()
            .map_err(|e| format!("garage json-api GetClusterHealth on node {node}: {e}"))?;
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "garage json-api GetClusterHealth on node {node} failed with {}: {json}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let value: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| format!("GetClusterHealth on node {node} is not JSON ({e}): {json}"))?;
        let status = value["status"]
            .as_str()
            .ok_or_else(|| format!("no \"status\" in GetClusterHealth on node {node}: {json}"))?;
        Ok((status.to_owned(), json))
    }

    /// The status the running nodes imply: "healthy" with 3, "degraded" with 2.
    fn expected_status(&self) -> &'static str {
        match self.nodes.iter().filter(|node| node.child.is_some()).count() {
            3 => "healthy",
            2 => "degraded",
            _ => "unavailable",
        }
    }

    /// Waits until every running node reports `expected`; panics with what each one reported
    /// last and the logs after `timeout`.
    fn wait_for(&self, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in 1..=3 {
            if self.nodes[node - 1].child.is_none() {
                continue;
            }
            loop {
                let last = self.try_health(node);
                if matches!(&last, Ok((status, _)) if status == expected) {
                    break;
                }
                if Instant::now() > deadline {
                    let mut report = String::new();
                    for n in (1..=3).filter(|&n| self.nodes[n - 1].child.is_some()) {
                        match self.try_health(n) {
                            Ok((_, json)) => writeln!(report, "node {n}: {json}").unwrap(),
                            Err(e) => writeln!(report, "node {n}: {e}").unwrap(),
                        }
                    }
                    panic!(
                        "garage cluster not {expected:?} on every running node after {timeout:?}:\n{report}{}",
                        self.logs()
                    );
                }
                thread::sleep(POLL);
            }
        }
    }

    /// The tail of every node's log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let state = if node.child.is_some() {
                "running"
            } else {
                "not running"
            };
            writeln!(
                out,
                "--- garage node {} ({state}), {}:",
                i + 1,
                node.log.display()
            )
            .unwrap();
            writeln!(out, "{}", log_tail(&node.log)).unwrap();
        }
        out
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `dir` (a TempDir) is removed after this, with the nodes gone.
    }
}
