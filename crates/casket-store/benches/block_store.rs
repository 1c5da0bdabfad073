//! `block_store`: the block store's start-up and index against its targets, and its small-blob
//! paths against the disk store's, in process (no network).
//!
//! ```text
//! cargo bench -p casket-store --bench block_store -- [--blobs N]   # TMPDIR picks the disk
//! ```
//!
//! 1. Start-up: N blobs (1,000,000 by default, 64 bytes each) are stored in batches of 10,000,
//!    the store is dropped, then opened again: seconds to open (target < 1 s) and the index's
//!    memory per blob (target < 100 bytes), with the process's RSS growth beside it.
//! 2. `find_missing` of 10,000 present digests, `put_many` of 10,000 new 4 KiB blobs and
//!    `get_many` of them, on a block store and on a disk store in the same directory tree.
#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, BlockOptions, BlockStore, DiskOptions, DiskStore, NewBlob};

const SHA: DigestFunction = DigestFunction::Sha256;
const BATCH: usize = 10_000;

fn blob(n: u64, len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    data[..8].copy_from_slice(&n.to_le_bytes());
    Bytes::from(data)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn put(store: &dyn BlobStore, first: u64, count: usize, len: usize) -> Vec<Digest> {
    let blobs = (first..first + count as u64)
        .map(|n| NewBlob::new(blob(n, len)))
        .collect();
    store
        .put_many(SHA, blobs)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Runs `f` `reps` times; the best time.
async fn best<F, Fut>(reps: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut best = Duration::MAX;
    for rep in 0..reps {
        let started = Instant::now();
        f(rep).await;
        best = best.min(started.elapsed());
    }
    best
}

async fn small_blob_paths(name: &str, store: &dyn BlobStore, base: u64) {
    let present = put(store, base, BATCH, 4096).await;
    let find = best(5, |_| async {
        assert!(store.find_missing(&present).await.unwrap().is_empty());
    })
    .await;
    let write = best(3, |rep| async move {
        put(store, base + ((rep as u64 + 1) << 20), BATCH, 4096).await;
    })
    .await;
    let read = best(3, |_| async {
        assert!(
            store
                .get_many(&present)
                .await
                .unwrap()
                .iter()
                .all(Option::is_some)
        );
    })
    .await;
    let per_s = |d: Duration| BATCH as f64 / d.as_secs_f64();
    println!(
        "| {name} | {:.0} digests/s | {:.0} blobs/s | {:.0} blobs/s |",
        per_s(find),
        per_s(write),
        per_s(read)
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut blobs = 1_000_000usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--blobs" => blobs = args.next().and_then(|v| v.parse().ok()).expect("--blobs N"),
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("casket-block-bench")
        .tempdir()
        .unwrap();
    println!("stores under {}", dir.path().display());

    let root = dir.path().join("startup");
    let filled = Instant::now();
    {
        let store = BlockStore::open(&root, BlockOptions::default()).unwrap();
        for first in (0..blobs).step_by(BATCH) {
            put(&store, first as u64, BATCH.min(blobs - first), 64).await;
        }
    }
    let filled = filled.elapsed();
    let rss_before = rss_kib();
    let started = Instant::now();
    let store = BlockStore::open(&root, BlockOptions::default()).unwrap();
    let opened = started.elapsed();
    let rss_growth = rss_kib().saturating_sub(rss_before) * 1024;
    let count = store.current_usage().blobs;
    println!("\n| start-up with {count} blobs stored | figure | target |\n|---|---|---|");
    println!(
        "| filling it ({BATCH} per batch) | {:.2} s | - |",
        filled.as_secs_f64()
    );
    println!(
        "| open (index files read, open block scanned) | {:.3} s | < 1 s |",
        opened.as_secs_f64()
    );
    println!(
        "| index memory | {:.1} bytes a blob (RSS grew {:.1} bytes a blob) | < 100 |",
        store.index_memory() as f64 / count as f64,
        rss_growth as f64 / count as f64
    );
    drop(store);

    println!("\n| 10,000 x 4 KiB, in process | find_missing | put_many | get_many |\n|---|---|---|---|");
    let block = BlockStore::open(dir.path().join("blocks"), BlockOptions::default()).unwrap();
    small_blob_paths("block store", &block, 1 << 40).await;
    let disk = DiskStore::open(dir.path().join("disk"), DiskOptions::default()).unwrap();
    small_blob_paths("disk store", &disk, 1 << 40).await;
}
