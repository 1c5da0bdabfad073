//! `http_vs_grpc`: one `casket serve` (its default block store), driven over its HTTP cache
//! port and over gRPC in one run: the HTTP path must stay within 1.2x of the gRPC one.
//!
//! ```text
//! CASKET_BIN=target/release/casket [TMPDIR=/dev/shm] cargo bench -p casket-remote --bench http_vs_grpc -- [--quick]
//! ```
//!
//! Workloads (every blob distinct, the HTTP and gRPC ones apart, so nothing is found already
//! stored):
//!
//! 1. PUT of 10,000 x 4 KiB, 16 in flight: HTTP `PUT /cas/HASH` on pooled keep-alive
//!    connections against one ByteStream Write per blob on one channel (Bazel's two patterns).
//! 2. GET of the same blobs, 16 in flight: `GET /cas/HASH` against ByteStream Read.
//! 3. PUT of one 1 GiB blob, then GET of it: one streamed HTTP body against one ByteStream
//!    Write and Read in 1 MiB chunks. The blob is a 1 MiB pseudo-random pattern stamped with the
//!    chunk number, so nothing holds it whole: a first pass hashes it, the timed pass generates it
//!    again.
//!
//! Figures are wall time including the client's work; client and server share the machine's
//! two cores. The server's store is a temporary directory under `$TMPDIR`.

#![allow(clippy::print_stdout, reason = "a bench reports its table on stdout")]

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, DigestHasher};
use futures::{StreamExt, TryStreamExt};
use tonic::transport::{Channel, Endpoint};

type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

const SMALL: usize = 4096;
const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 16;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_vs_grpc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `casket serve`, killed when dropped.
struct Server {
    child: Child,
    grpc: String,
    http: String,
    _store: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Result<Server> {
    let binary = std::env::var_os("CASKET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/casket"));
    let store = tempfile::Builder::new().prefix("http-vs-grpc-").tempdir()?;
    let mut child = Command::new(&binary)
        .arg("--store")
        .arg(store.path().join("store"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--allow-push",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e} (set CASKET_BIN or build --release)", binary.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut banner = String::new();
    BufReader::new(stderr).read_line(&mut banner)?;
    let address_after = |label: &str| -> Result<String> {
        let (_, rest) = banner
            .split_once(label)
            .ok_or_else(|| format!("no {label:?} in {banner:?}"))?;
        Ok(rest.split([' ', ',', ')']).next().unwrap_or_default().to_owned())
    };
    Ok(Server {
        grpc: format!("http://{}", address_after(" on ")?),
        http: format!("http://{}", address_after("HTTP cache on ")?),
        child,
        _store: store,
    })
}

/// Small blob number `id` of a run: 4 KiB, distinct for every id.
fn small_blob(id: u64) -> Vec<u8> {
    let mut data = vec![0u8; SMALL];
    let mut state = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for byte in &mut data {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    data
}

/// Chunk `i` of the large blob `seed`.
fn large_chunk(seed: u64, i: u64) -> Vec<u8> {
    let mut data = small_blob(seed).repeat(CHUNK / SMALL);
    data[..8].copy_from_slice(&i.to_le_bytes());
    data
}

fn large_digest(seed: u64, chunks: u64) -> Digest {
    let mut hasher = DigestHasher::new(DigestFunction::Sha256);
    for i in 0..chunks {
        hasher.update(&large_chunk(seed, i));
    }
    hasher.finish()
}

fn upload_name(digest: &Digest, n: u64) -> String {
    format!(
        "uploads/00000000-0000-4000-8000-{n:012x}/blobs/{}/{}",
        digest.hash_hex(),
        digest.size()
    )
}

/// One ByteStream Write of `digest` from `count` chunks, generated as they are sent.
async fn bytestream_write(
    client: &mut ByteStreamClient<Channel>,
    digest: Digest,
    n: u64,
    count: u64,
    chunk: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> Result<()> {
    let name = upload_name(&digest, n);
    let requests = futures::stream::iter(0..count).map(move |i| {
        let data = chunk(i);
        WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: i as i64 * CHUNK as i64,
            finish_write: i + 1 == count,
            data,
        }
    });
    client.write(requests).await?;
    Ok(())
}

async fn bytestream_read(client: &mut ByteStreamClient<Channel>, digest: &Digest) -> Result<u64> {
    let mut stream = client
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", digest.hash_hex(), digest.size()),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut got = 0;
    while let Some(response) = stream.try_next().await? {
        got += response.data.len() as u64;
    }
    Ok(got)
}

/// Runs `op` on `0..n`, `IN_FLIGHT` at a time; returns seconds.
async fn timed<F, Fut>(n: u64, op: F) -> Result<f64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(op)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn run() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (blobs, large_chunks) = if quick { (1_000, 64) } else { (10_000, 1024) };
    let server = start()?;
    let channel = Endpoint::from_shared(server.grpc.clone())?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .connect()
        .await?;
    let bytestream = ByteStreamClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()?;
    let url = |digest: &Digest| format!("{}/cas/{}", server.http, digest.hash_hex());
    let sha = |data: &[u8]| Digest::of(DigestFunction::Sha256, data);
    // HTTP's blobs are 0..n, gRPC's n..2n.
    let grpc_id = |i: u64| blobs + i;

    let http_put = timed(blobs, |i| {
        let http = http.clone();
        let data = small_blob(i);
        let target = url(&sha(&data));
        async move {
            http.put(target)
                .body(Bytes::from(data))
                .send()
                .await?
                .error_for_status()?;
            Ok(())
        }
    })
    .await?;
    let grpc_put = timed(blobs, |i| {
        let mut client = bytestream.clone();
        let id = grpc_id(i);
        let digest = sha(&small_blob(id));
        async move { bytestream_write(&mut client, digest, i, 1, move |_| small_blob(id)).await }
    })
    .await?;
    let http_get = timed(blobs, |i| {
        let http = http.clone();
        let target = url(&sha(&small_blob(i)));
        async move {
            let body = http.get(target).send().await?.error_for_status()?.bytes().await?;
            if body.len() != SMALL {
                return Err("short body".into());
            }
            Ok(())
        }
    })
    .await?;
    let grpc_get = timed(blobs, |i| {
        let mut client = bytestream.clone();
        let digest = sha(&small_blob(grpc_id(i)));
        async move {
            match bytestream_read(&mut client, &digest).await? {
                n if n == SMALL as u64 => Ok(()),
                _ => Err("short read".into()),
            }
        }
    })
    .await?;

    let (http_seed, grpc_seed) = (1 << 40, 1 << 41);
    let (http_large, grpc_large) = (
        large_digest(http_seed, large_chunks),
        large_digest(grpc_seed, large_chunks),
    );
    let started = Instant::now();
    let body = futures::stream::iter(0..large_chunks)
        .map(move |i| Ok::<_, std::io::Error>(Bytes::from(large_chunk(http_seed, i))));
    http.put(url(&http_large))
        .header("content-length", http_large.size())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?
        .error_for_status()?;
    let http_large_put = started.elapsed().as_secs_f64();
    let started = Instant::now();
    bytestream_write(
        &mut bytestream.clone(),
        grpc_large,
        1 << 30,
        large_chunks,
        move |i| large_chunk(grpc_seed, i),
    )
    .await?;
    let grpc_large_put = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut stream = http
        .get(url(&http_large))
        .send()
        .await?
        .error_for_status()?
        .bytes_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        got += chunk?.len() as u64;
    }
    let http_large_get = started.elapsed().as_secs_f64();
    if got != http_large.size() {
        return Err("short large GET".into());
    }
    let started = Instant::now();
    bytestream_read(&mut bytestream.clone(), &grpc_large).await?;
    let grpc_large_get = started.elapsed().as_secs_f64();

    let mib = (large_chunks * CHUNK as u64) as f64 / f64::from(1 << 20);
    println!("| workload | HTTP | gRPC | HTTP / gRPC time | target |");
    println!("|---|---|---|---|---|");
    for (what, http_s, grpc_s, unit, amount) in [
        (
            format!("PUT {blobs} x 4 KiB, {IN_FLIGHT} in flight"),
            http_put,
            grpc_put,
            "blobs/s",
            blobs as f64,
        ),
        (
            format!("GET {blobs} x 4 KiB, {IN_FLIGHT} in flight"),
            http_get,
            grpc_get,
            "blobs/s",
            blobs as f64,
        ),
        (
            format!("PUT one {mib} MiB blob"),
            http_large_put,
            grpc_large_put,
            "MiB/s",
            mib,
        ),
        (
            format!("GET one {mib} MiB blob"),
            http_large_get,
            grpc_large_get,
            "MiB/s",
            mib,
        ),
    ] {
        let ratio = http_s / grpc_s;
        println!(
            "| {what} | {:.3} s ({:.0} {unit}) | {:.3} s ({:.0} {unit}) | {ratio:.2}x | <= 1.2x: {} |",
            http_s,
            amount / http_s,
            grpc_s,
            amount / grpc_s,
            if ratio <= 1.2 { "yes" } else { "no" }
        );
    }
    drop(server);
    Ok(())
}
