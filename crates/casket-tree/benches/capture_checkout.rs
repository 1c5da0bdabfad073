//! Capture and checkout of a tree of 2,000 files of 4 KiB in 40 directories.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use casket_store::{BlobStore, DiskOptions, DiskStore};
use casket_tree::{CaptureOptions, CheckoutMode, CheckoutOptions, capture, checkout};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const FILES: usize = 2000;

fn make_tree(root: &Path) {
    for i in 0..FILES {
        let dir = root.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..4096).map(|j| ((i * 7919 + j) % 251) as u8).collect();
        std::fs::write(dir.join(format!("f{i:05}")), data).unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let mut group = c.benchmark_group("tree");
    group.throughput(Throughput::Elements(FILES as u64));
    group.sample_size(20);

    group.bench_function("capture 2000 x 4 KiB into an empty store", |b| {
        b.iter_batched(
            || {
                let root = tempfile::tempdir_in(dir.path()).unwrap();
                let store = DiskStore::open(root.path(), DiskOptions::default()).unwrap();
                (root, store)
            },
            |(_root, store)| {
                runtime
                    .block_on(capture(&store, &src, &CaptureOptions::default(), &()))
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });

    let store: Arc<dyn BlobStore> =
        Arc::new(DiskStore::open(dir.path().join("store"), DiskOptions::default()).unwrap());
    let root = runtime
        .block_on(capture(store.as_ref(), &src, &CaptureOptions::default(), &()))
        .unwrap()
        .root;
    group.bench_function("capture 2000 x 4 KiB, all present", |b| {
        b.iter(|| {
            runtime
                .block_on(capture(store.as_ref(), &src, &CaptureOptions::default(), &()))
                .unwrap()
        })
    });
    for (name, mode) in [("hardlink", CheckoutMode::Hardlink), ("copy", CheckoutMode::Copy)] {
        let options = CheckoutOptions {
            mode,
            ..Default::default()
        };
        group.bench_function(format!("checkout 2000 x 4 KiB, {name}"), |b| {
            b.iter_batched(
                || tempfile::tempdir_in(dir.path()).unwrap(),
                |target| {
                    runtime
                        .block_on(checkout(&store, &root, &target.path().join("out"), &options, &()))
                        .unwrap();
                    target
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
