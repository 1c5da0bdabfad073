//! `serve_peers`: `casket serve` on its block store and on its file store, and BuildStream
//! 1.6.8's artifact server, side by side in one run, driven over loopback by the same tonic
//! clients.
//!
//! ```text
//! cargo bench -p casket-remote --bench serve_peers -- [--quick] [--out docs/benchmarks.md]
//! ```
//!
//! Workloads, each against casket's block store, casket's file store, then BuildStream (small
//! blobs are 4 KiB, all distinct); ratios are the block store's figure over each other's:
//!
//! 1. FindMissingBlobs of 10,000 digests, all present and all missing: digests/s, requests/s.
//! 2. BatchReadBlobs of 256 stored blobs per call (1 MiB, BuildStream's batch limit): blobs/s.
//! 3. BatchUpdateBlobs of 256 new blobs per call, 20,480 blobs: blobs/s. It runs first: it
//!    stores the blobs 1 and 2 look up.
//! 4. ByteStream Write, then Read, of one 1 GiB blob in 1 MiB chunks (both servers take them):
//!    MiB/s. The blob is a 1 MiB pseudo-random pattern stamped with the chunk number, so nothing
//!    holds it whole: a first pass hashes it, the timed pass generates it again.
//! 5. Bazel's pattern: one ByteStream Write per new 4 KiB blob, 16 in flight on one
//!    connection, 10,000 blobs: blobs/s.
//! 6. 16 clients, each on its own connection, for 10 s: 35% BatchReadBlobs of 16 stored blobs,
//!    35% ByteStream Read of one, 20% BatchUpdateBlobs of 16 new blobs, 10% ByteStream Write of
//!    one: operations/s.
//! 7. casket only: its peak RSS (`VmHWM`, reset through `/proc/PID/clear_refs` first) while a
//!    4 GiB blob streams in and out through ByteStream; target < 200 MiB.
//!
//! Serial workloads (1 to 4) count only the time spent waiting on the server: a request is
//! built and hashed before its clock starts, and timed loops of 1 and 2 begin with an untimed
//! call. Workload 5 is wall time, request building included. Client and servers share the
//! machine (a faster client leaves the server more CPU), so compare the ratios of one run, not
//! raw figures between runs. The servers' stores are temporary directories under `$TMPDIR`:
//! run it with `TMPDIR=/dev/shm` for tmpfs. Small-blob writes are bound by inode allocation, which ext4 slows
//! for minutes after a mass deletion; the bench deletes its stores (tens of thousands of files)
//! when it ends, so let the file system settle between runs.
//!
//! The casket server is `$CASKET_BIN`, or else `target/release/casket`, which the bench first
//! builds with `cargo build --release -p casket`. It runs
//! `serve --listen 127.0.0.1:0 --config FILE` with a fresh temporary store of each kind
//! (`[store] kind = "blocks"` or `"disk"`) and prints its address on stderr. BuildStream's server is `peers/bst1/serve.sh 0 DIR` under `$CASKET_SHARED`
//! (default: `shared/` beside the workspace), whose `listening on` line gives the port it got.
//! Both are killed when the bench ends, also on failure, and their temporary directories
//! removed.
//!
//! `--quick` shrinks every size (1,000 digests, 64 MiB and 256 MiB blobs, shorter runs) for
//! development. `--out FILE` (relative to the workspace root) rewrites the section between
//! `<!-- serve-peers:begin -->` and `<!-- serve-peers:end -->` in FILE, appending a heading and
//! the section if the markers are absent.

#![allow(clippy::print_stdout, reason = "a bench reports its table on stdout")]

use std::collections::VecDeque;
use std::error::Error;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use bazel_remote_apis::google::rpc::Status as RpcStatus;
use casket_model::{Digest, DigestFunction, DigestHasher};
use futures::StreamExt;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::{Channel, Endpoint};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// Where the markdown table goes, between these markers.
const BEGIN: &str = "<!-- serve-peers:begin -->";
const END: &str = "<!-- serve-peers:end -->";
/// The heading put before the markers when the file has none.
const HEADING: &str = "## Server (gRPC over loopback)";
const TMPFS_BEGIN: &str = "<!-- serve-peers-tmpfs:begin -->";
const TMPFS_END: &str = "<!-- serve-peers-tmpfs:end -->";
const TMPFS_HEADING: &str = "## Server (gRPC over loopback), stores on tmpfs";

const MIB: u64 = 1 << 20;
const SMALL_BLOB: usize = 4096;
/// Blobs per BatchReadBlobs / BatchUpdateBlobs in workloads 2 and 3: 1 MiB of data, the most
/// BuildStream's server takes in one batch.
const BATCH_BLOBS: u64 = 256;
/// ByteStream chunk size: casket's read chunk, and within gRPC's 4 MiB default for Python.
const CHUNK: u64 = MIB;
/// Client message limit, as large as casket's.
const MAX_MESSAGE: usize = 16 << 20;
/// Concurrent clients in the mixed workload, and blobs per batch call there.
const CLIENTS: u64 = 16;
const MIXED_BATCH: u64 = 16;
/// A timed loop runs at least this many calls, whatever its time budget.
const MIN_CALLS: u64 = 3;
/// How long a server may take to print its address.
const STARTUP: Duration = Duration::from_secs(60);

/// Blob ids: each names a distinct 4 KiB blob. Workload 3 writes ids from 0; these bases keep
/// the other sets apart.
const MISSING_IDS: u64 = 1 << 50;
const MIXED_IDS: u64 = 1 << 40;
const BAZEL_IDS: u64 = 1 << 45;
/// ByteStream Writes in flight in Bazel's pattern (its default `--remote_max_connections`
/// spread over one channel).
const BAZEL_IN_FLIGHT: usize = 16;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve_peers: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    let binary = casket_binary()?;
    let casket = start_casket(&binary, "blocks")?;
    let files = start_casket(&binary, "disk")?;
    let bst1 = start_bst1(&shared_dir().join("peers/bst1/serve.sh"))?;
    let load_before = load_average();
    let bench = Bench {
        servers: [&casket, &files, &bst1],
        sizes: Sizes::new(options.quick),
        started: Instant::now(),
    };
    let mut rows = small_blob_rows(&bench).await?;
    rows.extend(large_blob_rows(&bench).await?);
    let what = format!("Bazel's pattern: one ByteStream Write per 4 KiB blob, {BAZEL_IN_FLIGHT} in flight");
    let measures = bench.all(&what, |a| bazel_writes(a, &bench.sizes)).await?;
    rows.push(Row::compare(&what, measures, 5.0));
    rows.push(mixed_row(&bench).await?);
    bench.note(&format!("casket peak RSS over {} MiB", bench.sizes.huge / MIB));
    rows.push(peak_rss_row(&casket, bench.sizes.huge).await?);

    let table = render(&rows, &options, load_before);
    println!("{table}");
    if let Some((_, out)) = &options.out {
        write_section(out, &table)?;
        bench.note(&format!("wrote {}", out.display()));
    }
    Ok(())
}

/// Workloads 1 to 3. BatchUpdateBlobs runs first: it stores the blobs the others look up.
async fn small_blob_rows(bench: &Bench<'_>) -> Result<Vec<Row>> {
    let sizes = &bench.sizes;
    let what = "BatchUpdateBlobs, 256 x 4 KiB per call";
    let measures = bench.all(what, |a| batch_update(a, sizes)).await?;
    let update = Row::compare(what, measures, 10.0);
    let mut rows = Vec::new();
    for missing in [false, true] {
        let which = if missing { "all missing" } else { "all present" };
        let what = format!(
            "FindMissingBlobs, {} digests, {which}",
            group(sizes.present as f64)
        );
        let measures = bench.all(&what, |a| find_missing(a, sizes, missing)).await?;
        rows.push(Row::compare(&what, measures, 20.0));
    }
    let what = "BatchReadBlobs, 256 x 4 KiB per call";
    let measures = bench.all(what, |a| batch_read(a, sizes)).await?;
    rows.push(Row::compare(what, measures, 20.0));
    rows.push(update);
    Ok(rows)
}

/// Workload 4: one large blob written, then read back.
async fn large_blob_rows(bench: &Bench<'_>) -> Result<Vec<Row>> {
    let size = bench.sizes.large;
    bench.note(&format!("hashing the {} MiB blob", size / MIB));
    let pattern = Pattern::new(size, 1);
    let digest = pattern.digest();
    let what = format!("ByteStream Write, {} MiB blob", size / MIB);
    let measures = bench.all(&what, |a| write_large(a, &pattern, &digest)).await?;
    let write = Row::compare(&what, measures, 5.0);
    let what = format!("ByteStream Read, {} MiB blob", size / MIB);
    let measures = bench.all(&what, |a| read_large(a, &digest)).await?;
    Ok(vec![write, Row::compare(&what, measures, 5.0)])
}

/// Workload 5.
async fn mixed_row(bench: &Bench<'_>) -> Result<Row> {
    let what = format!("{CLIENTS} clients, mixed small reads (70%) and writes (30%)");
    let measures = bench.all(&what, |a| mixed(a, &bench.sizes)).await?;
    Ok(Row::compare(&what, measures, 20.0))
}

/// The servers (casket on blocks, casket on files, BuildStream) and the sizes every workload
/// runs with.
struct Bench<'a> {
    servers: [&'a Server; 3],
    sizes: Sizes,
    started: Instant,
}

impl Bench<'_> {
    /// Progress on stderr, with the time since the start.
    fn note(&self, what: &str) {
        eprintln!(
            "serve_peers [{:6.1} s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs `workload` against each server in turn.
    async fn all<F, Fut>(&self, what: &str, mut workload: F) -> Result<[Measure; 3]>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<Measure>>,
    {
        let mut measures = Vec::new();
        for (server, name) in self.servers.iter().zip(SERVERS) {
            self.note(&format!("{what}: {name}"));
            let measure = workload(server.address).await?;
            self.note(&format!("{what}: {name}: {}", cell(&measure)));
            measures.push(measure);
        }
        let [blocks, files, bst1] = measures[..] else {
            unreachable!("three servers")
        };
        Ok([blocks, files, bst1])
    }
}

// ---------------------------------------------------------------------------------------------
// Options and sizes

struct Options {
    quick: bool,
    /// `--out` as given, and resolved against the workspace root.
    out: Option<(String, PathBuf)>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut options = Options {
            quick: false,
            out: None,
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--out" => {
                    let file = args.next().ok_or("--out needs a file")?;
                    let path = workspace_root().join(&file);
                    options.out = Some((file, path));
                }
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                _ => return Err(format!("unknown argument {arg:?} (--quick, --out FILE)").into()),
            }
        }
        Ok(options)
    }

    /// The command line that reproduces this run.
    fn command(&self) -> String {
        let mut command = "cargo bench -p casket-remote --bench serve_peers".to_owned();
        if self.quick || self.out.is_some() {
            command.push_str(" --");
        }
        if self.quick {
            command.push_str(" --quick");
        }
        if let Some((file, _)) = &self.out {
            command.push_str(&format!(" --out {file}"));
        }
        command
    }
}

struct Sizes {
    /// Digests per FindMissingBlobs; also the blobs the read workloads pick from.
    present: u64,
    /// Blobs written by workload 3 (ids `0..written`, a superset of the present ones).
    written: u64,
    /// Time spent waiting on the server in each timed loop.
    budget: Duration,
    /// The ByteStream blob of workload 4.
    large: u64,
    /// The blob casket streams in and out while its RSS is watched.
    huge: u64,
    /// Duration of the mixed workload.
    mixed: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                present: 1_000,
                written: 2_048,
                budget: Duration::from_millis(500),
                large: 64 * MIB,
                huge: 256 * MIB,
                mixed: Duration::from_secs(2),
            }
        } else {
            Sizes {
                present: 10_000,
                written: 20_480,
                budget: Duration::from_secs(3),
                large: 1024 * MIB,
                huge: 4096 * MIB,
                mixed: Duration::from_secs(10),
            }
        }
    }
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn shared_dir() -> PathBuf {
    let shared =
        std::env::var_os("CASKET_SHARED").map_or_else(|| workspace_root().join("../shared"), PathBuf::from);
    shared.canonicalize().unwrap_or(shared)
}

/// `$CASKET_BIN`, or the workspace's release binary, built first.
fn casket_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("CASKET_BIN") {
        return Ok(PathBuf::from(bin));
    }
    eprintln!("serve_peers: cargo build --release -p casket");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "casket"])
        .current_dir(workspace_root())
        .status()?;
    if !status.success() {
        return Err("cargo build --release -p casket failed (or set CASKET_BIN)".into());
    }
    Ok(workspace_root().join("target/release/casket"))
}

// ---------------------------------------------------------------------------------------------
// Server processes

/// A server child process on a loopback port, killed (and its directory removed) when dropped.
struct Server {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `casket serve` on a fresh store of `kind` (`blocks` or `disk`).
fn start_casket(binary: &Path, kind: &str) -> Result<Server> {
    let dir = temp_dir(&format!("casket-serve-peers-{kind}"))?;
    let config = dir.path().join("casket.toml");
    std::fs::write(
        &config,
        format!("anonymous = \"write\"\n[store]\nkind = \"{kind}\"\npath = \"store\"\n"),
    )?;
    let mut command = Command::new(binary);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("CASKET_LOG");
    // `casket: serving STORE on ADDRESS (read-write)`
    spawn_server(command, dir, |line| {
        let (head, _) = line.strip_prefix("casket: serving ")?.rsplit_once(" (")?;
        head.rsplit_once(" on ")?.1.parse().ok()
    })
}

fn start_bst1(serve_sh: &Path) -> Result<Server> {
    if !serve_sh.exists() {
        return Err(format!("{} not found: set CASKET_SHARED", serve_sh.display()).into());
    }
    let dir = temp_dir("casket-serve-peers-bst1")?;
    let mut command = Command::new(serve_sh);
    command.arg("0").arg(dir.path().join("repo"));
    // `bst1-server: listening on 127.0.0.1:PORT repo=DIR push=True pid=PID`
    spawn_server(command, dir, |line| {
        let rest = line.strip_prefix("bst1-server: listening on ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// Starts `command` and waits for the stderr line `ready` finds the bound address in. A thread
/// keeps draining stderr afterwards so that the server never blocks on a full pipe.
fn spawn_server(
    mut command: Command,
    dir: tempfile::TempDir,
    ready: fn(&str) -> Option<SocketAddr>,
) -> Result<Server> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let mut server = Server {
        child,
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        _dir: dir,
    };
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (found, address) = mpsc::channel();
    let lines = Arc::clone(&tail);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            if let Some(address) = ready(&line) {
                let _ = found.send(address);
            }
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.push_back(line);
            if lines.len() > 20 {
                lines.pop_front();
            }
        }
    });
    server.address = address.recv_timeout(STARTUP).map_err(|_| {
        let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        let tail: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("{command:?} did not report its address:\n{}", tail.join("\n"))
    })?;
    eprintln!("serve_peers: {:?} on {}", command.get_program(), server.address);
    Ok(server)
}

// ---------------------------------------------------------------------------------------------
// Clients and data

async fn connect(address: SocketAddr) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect()
        .await?)
}

fn cas(channel: Channel) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn bytestream(channel: Channel) -> ByteStreamClient<Channel> {
    ByteStreamClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// SplitMix64: a cheap, deterministic stream of pseudo-random numbers.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

/// Small blob number `id`: 4 KiB of its own pseudo-random bytes.
fn small_blob(id: u64) -> (reapi::Digest, Vec<u8>) {
    let mut data = vec![0; SMALL_BLOB];
    SplitMix(id).fill(&mut data);
    (Digest::of(DigestFunction::Sha256, &data).to_proto(), data)
}

fn small_digest(id: u64) -> reapi::Digest {
    small_blob(id).0
}

fn update_request(ids: impl Iterator<Item = u64>) -> reapi::BatchUpdateBlobsRequest {
    let requests = ids
        .map(|id| {
            let (digest, data) = small_blob(id);
            reapi::batch_update_blobs_request::Request {
                digest: Some(digest),
                data,
                compressor: 0,
            }
        })
        .collect();
    reapi::BatchUpdateBlobsRequest {
        requests,
        ..Default::default()
    }
}

fn read_request(ids: impl Iterator<Item = u64>) -> reapi::BatchReadBlobsRequest {
    reapi::BatchReadBlobsRequest {
        digests: ids.map(small_digest).collect(),
        ..Default::default()
    }
}

/// A fresh upload name: BuildStream's server requires a version-4 UUID in it.
fn upload_name(digest: &reapi::Digest) -> String {
    format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        digest.hash,
        digest.size_bytes
    )
}

fn download_name(digest: &reapi::Digest) -> String {
    format!("blobs/{}/{}", digest.hash, digest.size_bytes)
}

/// Fails unless every per-blob status is OK (and, for reads, every blob has its size).
fn check_statuses<'a>(
    statuses: impl Iterator<Item = (Option<&'a RpcStatus>, Option<usize>)>,
    expected: u64,
) -> Result<u64> {
    let mut count = 0;
    for (status, len) in statuses {
        if let Some(status) = status.filter(|s| s.code != 0) {
            return Err(format!("a blob failed: {} {}", status.code, status.message).into());
        }
        if len.is_some_and(|len| len != SMALL_BLOB) {
            return Err(format!("a blob came back with {len:?} bytes").into());
        }
        count += 1;
    }
    if count != expected {
        return Err(format!("{count} blob responses for {expected} blobs").into());
    }
    Ok(count)
}

/// A large blob that is never held whole: a 1 MiB pseudo-random pattern with the chunk number
/// in its first 8 bytes, chunk after chunk.
struct Pattern {
    size: u64,
    base: Arc<Vec<u8>>,
}

impl Pattern {
    fn new(size: u64, seed: u64) -> Self {
        let mut base = vec![0; CHUNK as usize];
        SplitMix(seed).fill(&mut base);
        Pattern {
            size,
            base: Arc::new(base),
        }
    }

    fn chunks(&self) -> u64 {
        self.size.div_ceil(CHUNK)
    }

    fn chunk(base: &[u8], size: u64, index: u64) -> Vec<u8> {
        let len = (size - index * CHUNK).min(CHUNK) as usize;
        let mut data = base[..len].to_vec();
        let stamp = index.to_le_bytes();
        let n = stamp.len().min(len);
        data[..n].copy_from_slice(&stamp[..n]);
        data
    }

    /// The first pass: the digest, computed while generating.
    fn digest(&self) -> reapi::Digest {
        let mut hasher = DigestHasher::new(DigestFunction::Sha256);
        for index in 0..self.chunks() {
            hasher.update(&Self::chunk(&self.base, self.size, index));
        }
        hasher.finish().to_proto()
    }

    /// The second pass: the write requests, generated as the stream is polled.
    fn requests(&self, resource_name: String) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
        let (base, size, last) = (Arc::clone(&self.base), self.size, self.chunks() - 1);
        futures::stream::iter(0..self.chunks()).map(move |index| WriteRequest {
            resource_name: if index == 0 {
                resource_name.clone()
            } else {
                String::new()
            },
            write_offset: (index * CHUNK) as i64,
            finish_write: index == last,
            data: Pattern::chunk(&base, size, index),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// A throughput: the primary figure (the ratio's) and a secondary one.
#[derive(Clone, Copy)]
struct Measure {
    value: f64,
    unit: &'static str,
    second: Option<(f64, &'static str)>,
}

impl Measure {
    fn rate(count: f64, seconds: f64, unit: &'static str) -> Self {
        Measure {
            value: count / seconds,
            unit,
            second: None,
        }
    }

    fn and(mut self, count: f64, seconds: f64, unit: &'static str) -> Self {
        self.second = Some((count / seconds, unit));
        self
    }
}

/// How many calls a timed loop makes.
struct Plan {
    /// Untimed calls first (connection and server warm-up).
    warmup: u64,
    /// Stop once this much time was spent waiting (after at least [`MIN_CALLS`])…
    budget: Duration,
    /// …or after this many timed calls.
    max_calls: u64,
}

impl Plan {
    fn for_time(budget: Duration) -> Self {
        Plan {
            warmup: 1,
            budget,
            max_calls: u64::MAX,
        }
    }

    fn calls(max_calls: u64) -> Self {
        Plan {
            warmup: 0,
            budget: Duration::MAX,
            max_calls,
        }
    }
}

/// Calls made and seconds spent waiting on the server.
struct Timed {
    calls: u64,
    seconds: f64,
}

/// Sends `prepare(i)` through `send` for i = 0, 1, … as `plan` says. Only `send`'s future is
/// timed, and only after the warm-up calls.
async fn timed_loop<Req, Fut>(
    plan: Plan,
    mut prepare: impl FnMut(u64) -> Req,
    mut send: impl FnMut(Req) -> Fut,
) -> Result<Timed>
where
    Fut: Future<Output = Result<()>>,
{
    for index in 0..plan.warmup {
        send(prepare(index)).await?;
    }
    let mut waited = Duration::ZERO;
    let mut calls = 0;
    while calls < plan.max_calls && (waited < plan.budget || calls < MIN_CALLS) {
        let call = send(prepare(plan.warmup + calls));
        let started = Instant::now();
        call.await?;
        waited += started.elapsed();
        calls += 1;
    }
    Ok(Timed {
        calls,
        seconds: waited.as_secs_f64(),
    })
}

/// Workload 3: stores blobs `0..written`, 256 per call.
async fn batch_update(address: SocketAddr, sizes: &Sizes) -> Result<Measure> {
    let client = cas(connect(address).await?);
    let timed = timed_loop(
        Plan::calls(sizes.written.div_ceil(BATCH_BLOBS)),
        |call| update_request(call * BATCH_BLOBS..((call + 1) * BATCH_BLOBS).min(sizes.written)),
        |request| {
            let (mut client, expected) = (client.clone(), request.requests.len() as u64);
            async move {
                let response = client.batch_update_blobs(request).await?.into_inner();
                let statuses = response.responses.iter().map(|r| (r.status.as_ref(), None));
                check_statuses(statuses, expected).map(drop)
            }
        },
    )
    .await?;
    let blobs = sizes.written as f64;
    Ok(Measure::rate(blobs, timed.seconds, "blobs/s").and(
        blobs * SMALL_BLOB as f64 / MIB as f64,
        timed.seconds,
        "MiB/s",
    ))
}

/// Workload 1: FindMissingBlobs of `present` digests, all stored or none.
async fn find_missing(address: SocketAddr, sizes: &Sizes, missing: bool) -> Result<Measure> {
    let client = cas(connect(address).await?);
    let first = if missing { MISSING_IDS } else { 0 };
    let request = reapi::FindMissingBlobsRequest {
        blob_digests: (first..first + sizes.present).map(small_digest).collect(),
        ..Default::default()
    };
    let expected = if missing { sizes.present as usize } else { 0 };
    let timed = timed_loop(
        Plan::for_time(sizes.budget),
        |_| request.clone(),
        |request| {
            let mut client = client.clone();
            async move {
                let response = client.find_missing_blobs(request).await?.into_inner();
                let found = response.missing_blob_digests.len();
                if found != expected {
                    return Err(format!("{found} missing, expected {expected}").into());
                }
                Ok(())
            }
        },
    )
    .await?;
    let digests = (timed.calls * sizes.present) as f64;
    Ok(Measure::rate(digests, timed.seconds, "digests/s").and(timed.calls as f64, timed.seconds, "req/s"))
}

/// Workload 2: BatchReadBlobs of 256 stored blobs per call, in turn over the present ones.
async fn batch_read(address: SocketAddr, sizes: &Sizes) -> Result<Measure> {
    let client = cas(connect(address).await?);
    let timed = timed_loop(
        Plan::for_time(sizes.budget),
        |call| read_request((0..BATCH_BLOBS).map(|i| (call * BATCH_BLOBS + i) % sizes.present)),
        |request| {
            let mut client = client.clone();
            async move {
                let response = client.batch_read_blobs(request).await?.into_inner();
                let statuses = response
                    .responses
                    .iter()
                    .map(|r| (r.status.as_ref(), Some(r.data.len())));
                check_statuses(statuses, BATCH_BLOBS).map(drop)
            }
        },
    )
    .await?;
    let blobs = (timed.calls * BATCH_BLOBS) as f64;
    Ok(Measure::rate(blobs, timed.seconds, "blobs/s").and(
        blobs * SMALL_BLOB as f64 / MIB as f64,
        timed.seconds,
        "MiB/s",
    ))
}

/// Workload 4 (and 6): streams `pattern` in through ByteStream Write.
async fn write_large(address: SocketAddr, pattern: &Pattern, digest: &reapi::Digest) -> Result<Measure> {
    let mut client = bytestream(connect(address).await?);
    let requests = pattern.requests(upload_name(digest));
    let started = Instant::now();
    let response = client.write(requests).await?.into_inner();
    let seconds = started.elapsed().as_secs_f64();
    if response.committed_size != digest.size_bytes {
        return Err(format!("committed {} bytes", response.committed_size).into());
    }
    Ok(Measure::rate(
        digest.size_bytes as f64 / MIB as f64,
        seconds,
        "MiB/s",
    ))
}

/// Workload 4 (and 6): reads `digest` back through ByteStream Read (sizes checked, not hashes).
async fn read_large(address: SocketAddr, digest: &reapi::Digest) -> Result<Measure> {
    let mut client = bytestream(connect(address).await?);
    let request = ReadRequest {
        resource_name: download_name(digest),
        read_offset: 0,
        read_limit: 0,
    };
    let started = Instant::now();
    let mut stream = client.read(request).await?.into_inner();
    let mut received = 0;
    while let Some(response) = stream.message().await? {
        received += response.data.len() as i64;
    }
    let seconds = started.elapsed().as_secs_f64();
    if received != digest.size_bytes {
        return Err(format!("read {received} of {} bytes", digest.size_bytes).into());
    }
    Ok(Measure::rate(
        digest.size_bytes as f64 / MIB as f64,
        seconds,
        "MiB/s",
    ))
}

/// Workload 5: [`CLIENTS`] connections doing mixed small-blob operations for `sizes.mixed`.
/// Workload 5: Bazel's uploads, one ByteStream Write per blob, [`BAZEL_IN_FLIGHT`] at a time.
async fn bazel_writes(address: SocketAddr, sizes: &Sizes) -> Result<Measure> {
    let client = bytestream(connect(address).await?);
    let blobs = sizes.present;
    let started = Instant::now();
    let written: Vec<u64> = futures::stream::iter(0..blobs)
        .map(|id| {
            let mut client = client.clone();
            async move { write_small(&mut client, BAZEL_IDS + id).await }
        })
        .buffer_unordered(BAZEL_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measure::rate(written.len() as f64, seconds, "blobs/s"))
}

async fn mixed(address: SocketAddr, sizes: &Sizes) -> Result<Measure> {
    let mut channels = Vec::new();
    for _ in 0..CLIENTS {
        channels.push(connect(address).await?);
    }
    let started = Instant::now();
    let deadline = started + sizes.mixed;
    let present = sizes.present;
    let tasks: Vec<_> = (0..CLIENTS)
        .zip(channels)
        .map(|(client, channel)| tokio::spawn(mixed_client(channel, client, present, deadline)))
        .collect();
    let (mut ops, mut blobs) = (0, 0);
    for task in tasks {
        let (client_ops, client_blobs) = task.await??;
        ops += client_ops;
        blobs += client_blobs;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measure::rate(ops as f64, seconds, "ops/s").and(blobs as f64, seconds, "blobs/s"))
}

/// One mixed client until `deadline`: returns the operations and blobs it completed.
async fn mixed_client(channel: Channel, client: u64, present: u64, deadline: Instant) -> Result<(u64, u64)> {
    let mut rng = SplitMix(client);
    let mut cas = cas(channel.clone());
    let mut bytestream = bytestream(channel);
    let mut next_new = MIXED_IDS + (client << 32);
    let (mut ops, mut blobs) = (0, 0);
    while Instant::now() < deadline {
        let roll = rng.next() % 100;
        blobs += match roll {
            0..35 => {
                let ids: Vec<u64> = (0..MIXED_BATCH).map(|_| rng.next() % present).collect();
                let response = cas.batch_read_blobs(read_request(ids.into_iter())).await?;
                let responses = response.into_inner().responses;
                let statuses = responses.iter().map(|r| (r.status.as_ref(), Some(r.data.len())));
                check_statuses(statuses, MIXED_BATCH)?
            }
            35..70 => read_small(&mut bytestream, rng.next() % present).await?,
            70..90 => {
                let request = update_request(next_new..next_new + MIXED_BATCH);
                next_new += MIXED_BATCH;
                let responses = cas.batch_update_blobs(request).await?.into_inner().responses;
                let statuses = responses.iter().map(|r| (r.status.as_ref(), None));
                check_statuses(statuses, MIXED_BATCH)?
            }
            _ => {
                let id = next_new;
                next_new += 1;
                write_small(&mut bytestream, id).await?
            }
        };
        ops += 1;
    }
    Ok((ops, blobs))
}

async fn read_small(client: &mut ByteStreamClient<Channel>, id: u64) -> Result<u64> {
    let request = ReadRequest {
        resource_name: download_name(&small_digest(id)),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = client.read(request).await?.into_inner();
    let mut received = 0;
    while let Some(response) = stream.message().await? {
        received += response.data.len();
    }
    if received != SMALL_BLOB {
        return Err(format!("read {received} bytes of a 4 KiB blob").into());
    }
    Ok(1)
}

async fn write_small(client: &mut ByteStreamClient<Channel>, id: u64) -> Result<u64> {
    let (digest, data) = small_blob(id);
    let request = WriteRequest {
        resource_name: upload_name(&digest),
        write_offset: 0,
        finish_write: true,
        data,
    };
    let response = client.write(futures::stream::iter([request])).await?;
    if response.into_inner().committed_size != SMALL_BLOB as i64 {
        return Err("a 4 KiB write committed another size".into());
    }
    Ok(1)
}

/// Workload 6: casket's peak RSS while a `size` blob streams in and out, beside its peak over
/// workloads 1 to 5.
async fn peak_rss_row(casket: &Server, size: u64) -> Result<Row> {
    let before = peak_rss_mib(casket.pid())?;
    let pattern = Pattern::new(size, 2);
    let digest = pattern.digest();
    // Writing 5 to clear_refs resets VmHWM to the current RSS.
    let reset = std::fs::write(format!("/proc/{}/clear_refs", casket.pid()), "5").is_ok();
    let write = write_large(casket.address, &pattern, &digest).await?;
    let read = read_large(casket.address, &digest).await?;
    let peak = peak_rss_mib(casket.pid())?;
    let streams = format!(
        "{} MiB blob through ByteStream (Write {:.0} MiB/s, Read {:.0} MiB/s)",
        size / MIB,
        write.value,
        read.value
    );
    let (what, second) = if reset {
        let what = format!("casket peak RSS (VmHWM) while a {streams}");
        (what, Some((before, "MiB over workloads 1-5")))
    } else {
        let what = format!("casket peak RSS (VmHWM) over the whole run, ending with a {streams}");
        (what, None)
    };
    Ok(Row {
        what,
        casket: Measure {
            value: peak,
            unit: "MiB",
            second,
        },
        files: None,
        bst1: None,
        target: Target::BelowMib(200.0),
    })
}

/// `VmHWM` of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or("no VmHWM in /proc/PID/status")?
        .trim()
        .parse::<f64>()?;
    Ok(kib / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The table

enum Target {
    /// casket / bst1 at least this.
    Ratio(f64),
    /// casket's figure below this many MiB.
    BelowMib(f64),
}

/// The servers, in [`Bench::all`]'s order.
const SERVERS: [&str; 3] = ["casket blocks", "casket files", "bst1"];

struct Row {
    what: String,
    casket: Measure,
    files: Option<Measure>,
    bst1: Option<Measure>,
    target: Target,
}

impl Row {
    /// The block store's figure against the file store's and BuildStream's; `ratio` is the
    /// target against BuildStream.
    fn compare(what: &str, [casket, files, bst1]: [Measure; 3], ratio: f64) -> Self {
        Row {
            what: what.to_owned(),
            casket,
            files: Some(files),
            bst1: Some(bst1),
            target: Target::Ratio(ratio),
        }
    }

    fn ratio(&self) -> Option<f64> {
        self.bst1.map(|b| self.casket.value / b.value)
    }

    fn ratio_to_files(&self) -> Option<f64> {
        self.files.map(|f| self.casket.value / f.value)
    }

    fn met(&self) -> bool {
        match self.target {
            Target::Ratio(target) => self.ratio().is_some_and(|r| r >= target),
            Target::BelowMib(limit) => self.casket.value < limit,
        }
    }

    fn markdown(&self) -> String {
        let target = match self.target {
            Target::Ratio(r) => format!(">= {r}x"),
            Target::BelowMib(mib) => format!("< {mib} MiB"),
        };
        let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}x"));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            self.what,
            cell(&self.casket),
            self.files.as_ref().map_or_else(|| "-".to_owned(), cell),
            self.bst1.as_ref().map_or_else(|| "-".to_owned(), cell),
            ratio(self.ratio()),
            ratio(self.ratio_to_files()),
            target,
            if self.met() { "yes" } else { "**no**" },
        )
    }
}

fn cell(m: &Measure) -> String {
    let main = format!("{} {}", group(m.value), m.unit);
    match m.second {
        Some((value, unit)) => format!("{main} ({} {unit})", group(value)),
        None => main,
    }
}

/// A figure with thousands separators, or with decimals when small.
fn group(x: f64) -> String {
    if x < 10.0 {
        return format!("{x:.2}");
    }
    if x < 100.0 {
        return format!("{x:.1}");
    }
    let digits = format!("{x:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render(rows: &[Row], options: &Options, load_before: String) -> String {
    let command = options.command();
    let mut out = format!(
        "Measured with `{command}` on {} ({} cores; load average {load_before} before, {} after), \
         one run, stores in {}. Every server on loopback, driven by the same tonic client in \
         the bench process; serial workloads count only time waiting on the server, the \
         concurrent ones wall time. Ratios: casket on its block store / BuildStream 1.6.8 \
         (`serve.sh`), and / casket on its file store.\n\n",
        machine(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        std::env::temp_dir().display(),
    );
    out.push_str("| workload | casket blocks | casket files | bst1 | vs bst1 | vs files | target | met? |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for row in rows {
        out.push_str(&row.markdown());
    }
    out
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Linux {}", kernel.trim())
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Replaces the section between the markers in `path`, or appends it under [`HEADING`]. A run
/// with its stores on tmpfs (`TMPDIR=/dev/shm`) has markers and a heading of its own.
fn write_section(path: &Path, table: &str) -> Result<()> {
    let tmpfs = std::env::temp_dir().starts_with("/dev/shm");
    let (begin, end, heading) = match tmpfs {
        true => (TMPFS_BEGIN, TMPFS_END, TMPFS_HEADING),
        false => (BEGIN, END, HEADING),
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{table}{end}");
    let text = match (text.find(begin), text.find(end)) {
        (Some(at), Some(until)) if at < until => {
            format!("{}{section}{}", &text[..at], &text[until + end.len()..])
        }
        _ => format!("{text}\n{heading}\n\n{section}\n"),
    };
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}
