//! Hot paths of the store: hashing, small-blob writes, one-pass file ingestion, reads and
//! existence checks on the disk store.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, BlobStoreExt, DiskOptions, DiskStore, NewBlob, ReadRange};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;

fn blob(i: u64, len: usize) -> Bytes {
    (0..len)
        .map(|j| (i.wrapping_mul(31).wrapping_add(j as u64) % 251) as u8)
        .collect()
}

fn hashing(c: &mut Criterion) {
    let data = blob(0, 1 << 20);
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for function in DigestFunction::ALL {
        group.bench_function(function.name(), |b| b.iter(|| Digest::of(function, &data)));
    }
    group.finish();
}

fn disk(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path().join("store"), DiskOptions::default()).unwrap();
    let mut group = c.benchmark_group("disk");

    const BATCH: u64 = 256;
    group.throughput(Throughput::Elements(BATCH));
    let mut next = 0u64;
    group.bench_function("put_many 256 new 4 KiB blobs", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                (next..next + BATCH)
                    .map(|i| NewBlob::new(blob(i, 4096)))
                    .collect::<Vec<_>>()
            },
            |blobs| runtime.block_on(store.put_many(DigestFunction::Sha256, blobs)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("put 256 new 4 KiB blobs, one write each", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                (next..next + BATCH).map(|i| blob(i, 4096)).collect::<Vec<_>>()
            },
            |blobs| {
                runtime.block_on(futures::future::try_join_all(
                    blobs
                        .into_iter()
                        .map(|data| store.put_bytes(DigestFunction::Sha256, data)),
                ))
            },
            BatchSize::SmallInput,
        )
    });

    let files: Vec<_> = (0..BATCH)
        .map(|i| {
            let path = dir.path().join(format!("file{i}"));
            std::fs::write(&path, blob(1_000_000 + i, 4096)).unwrap();
            path
        })
        .collect();
    group.bench_function("ingest 256 4 KiB files (already stored)", |b| {
        b.iter(|| {
            runtime.block_on(futures::future::try_join_all(
                files
                    .iter()
                    .map(|path| store.ingest_file(path, DigestFunction::Sha256)),
            ))
        })
    });

    let digests: Vec<Digest> = runtime
        .block_on(futures::future::try_join_all((0..BATCH).map(|i| {
            store.put_bytes(DigestFunction::Sha256, blob(2_000_000 + i, 4096))
        })))
        .unwrap();
    group.bench_function("read 256 4 KiB blobs", |b| {
        b.iter(|| {
            runtime.block_on(futures::future::try_join_all(digests.iter().map(|d| async {
                let stream = store.read(d, ReadRange::ALL).await?.unwrap();
                stream.try_collect::<Vec<_>>().await
            })))
        })
    });
    group.bench_function("find_missing 256 present", |b| {
        b.iter(|| runtime.block_on(store.find_missing(&digests)))
    });
    group.finish();

    let large = blob(3, 64 << 20);
    let path = dir.path().join("large");
    std::fs::write(&path, &large).unwrap();
    let mut group = c.benchmark_group("disk large");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("ingest 64 MiB file", |b| {
        b.iter(|| runtime.block_on(store.ingest_file(&path, DigestFunction::Sha256)))
    });
    group.finish();
}

criterion_group!(benches, hashing, disk);
criterion_main!(benches);
