//! Import of one 10,000-file tree into another, CAS -> CAS against the file-system round trip.
//!
//! Run with `cargo bench -p casket-vdir --bench import` (repetitions: `CASKET_BENCH_REPS`,
//! default 7). Two trees of 10,000 files of 1-4 KiB over the same 208 nested directories
//! (plus 20 directories only in the second) are captured into a `DiskStore` in a tempdir; the
//! second shares half its files with the first, changes the content, the executable bit or
//! the name of the others, replaces some files with symlinks and retargets half the
//! per-directory symlinks, so the import merges directories all over the tree. Measured:
//!
//! * `cas -> cas merge`: `CasDirectory::open` of both + `import_files` + `digest` (which
//!   stores the new Directory messages): from two digests to the merged root digest;
//! * `cas -> cas graft`: the same with the second tree imported below a new name;
//! * `fs -> fs import`: `FileDirectory` import between two checkouts (checkouts not timed);
//! * `baseline`: checkout of both trees (copy) + the file import + capture of the result.
//!
//! Directory messages stored by one repetition are deleted before the next, so each pays for
//! storing them. Each case runs its repetitions in a row (after one untimed CAS round); every
//! baseline repetition checks it gives the same root as the CAS merge. The table gives median,
//! min and max, the phases of the CAS merge and of the baseline, and the ratio of the medians
//! baseline / CAS merge. The file-system cases are sensitive to other I/O on the machine.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use casket_model::Digest;
use casket_store::{BlobStore, DiskOptions, DiskStore};
use casket_tree::maintenance::reachable_digests;
use casket_tree::{CaptureOptions, CheckoutMode, CheckoutOptions, capture, checkout};
use casket_vdir::{CasDirectory, Directory, FileDirectory, ImportFilter, ImportOptions};
use tokio::runtime::Runtime;

#[path = "../tests/common/trees.rs"]
mod trees;

use trees::{Shape, write_tree};

/// 8 top directories of 5 each of 4 (208) and 10,000 files.
const SHAPE: Shape = Shape {
    tops: 8,
    mids: 5,
    leaves: 4,
    files: 10_000,
};

struct Bench {
    runtime: Runtime,
    store: Arc<dyn BlobStore>,
    scratch: std::path::PathBuf,
    a: Digest,
    b: Digest,
    /// Every blob of the two input trees: what must survive between repetitions.
    inputs: HashSet<Digest>,
    reps: usize,
}

impl Bench {
    /// Deletes the blobs reachable from `root` that are not part of the inputs.
    fn forget(&self, root: &Digest) {
        self.runtime.block_on(async {
            for digest in reachable_digests(self.store.as_ref(), root).await.unwrap() {
                if !self.inputs.contains(&digest) {
                    self.store.delete(&digest).await.unwrap();
                }
            }
        });
    }

    fn checkout(&self, root: &Digest, dest: &Path) {
        let options = CheckoutOptions {
            mode: CheckoutMode::Copy,
            ..CheckoutOptions::default()
        };
        self.runtime
            .block_on(checkout(&self.store, root, dest, &options, &()))
            .unwrap();
    }

    fn fresh_dir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(&self.scratch).unwrap()
    }

    /// CAS -> CAS, into the root (`below == None`) or into a new directory: total time, then
    /// its phases (open both, import, digest), and the new root.
    fn cas(&self, below: Option<&str>) -> ([Duration; 4], Digest) {
        let start = Instant::now();
        let (dest, source) = self.runtime.block_on(async {
            let dest = CasDirectory::open(self.store.clone(), &self.a).await.unwrap();
            let source = CasDirectory::open(self.store.clone(), &self.b).await.unwrap();
            (dest, source)
        });
        let opened = Instant::now();
        self.runtime.block_on(async {
            let into: Box<dyn Directory> = match below {
                Some(name) => dest.descend(name, true).await.unwrap(),
                None => Box::new(dest.clone()),
            };
            into.import_files(&source, &ImportFilter::All, &ImportOptions::default())
                .await
                .unwrap();
        });
        let imported = Instant::now();
        let digest = self.runtime.block_on(dest.digest()).unwrap();
        let done = Instant::now();
        let phases = [done - start, opened - start, imported - opened, done - imported];
        (phases, digest)
    }

    /// FS -> FS import between two checkouts; the checkouts are not timed. Returns the
    /// directory of the checkouts, to be deleted only at the end (see `main`).
    fn fs(&self) -> (Duration, tempfile::TempDir) {
        let work = self.fresh_dir();
        let (dest, src) = (work.path().join("dest"), work.path().join("src"));
        self.checkout(&self.a, &dest);
        self.checkout(&self.b, &src);
        let start = Instant::now();
        self.runtime.block_on(async {
            FileDirectory::open(&dest)
                .unwrap()
                .import_files(
                    &FileDirectory::open(&src).unwrap(),
                    &ImportFilter::All,
                    &ImportOptions::default(),
                )
                .await
                .unwrap();
        });
        (start.elapsed(), work)
    }

    /// Checkout of both + file import + capture: total and its three phases, the new root and
    /// the directory of the checkouts.
    fn baseline(&self) -> ([Duration; 4], Digest, tempfile::TempDir) {
        let work = self.fresh_dir();
        let (dest, src) = (work.path().join("dest"), work.path().join("src"));
        let start = Instant::now();
        self.checkout(&self.a, &dest);
        self.checkout(&self.b, &src);
        let checked_out = Instant::now();
        self.runtime.block_on(async {
            FileDirectory::open(&dest)
                .unwrap()
                .import_files(
                    &FileDirectory::open(&src).unwrap(),
                    &ImportFilter::All,
                    &ImportOptions::default(),
                )
                .await
                .unwrap();
        });
        let imported = Instant::now();
        let root = self
            .runtime
            .block_on(capture(
                self.store.as_ref(),
                &dest,
                &CaptureOptions::default(),
                &(),
            ))
            .unwrap()
            .root;
        let captured = Instant::now();
        let phases = [
            captured - start,
            checked_out - start,
            imported - checked_out,
            captured - imported,
        ];
        (phases, root, work)
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn row(name: &str, times: &[Duration]) -> Duration {
    let mid = median(times.to_vec());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<34} {:>10.2} {:>10.2} {:>10.2}",
        ms(mid),
        ms(*times.iter().min().unwrap()),
        ms(*times.iter().max().unwrap()),
    );
    mid
}

fn main() {
    let reps: usize = std::env::var("CASKET_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7)
        .max(1);
    let runtime = Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> =
        Arc::new(DiskStore::open(tmp.path().join("store"), DiskOptions::default()).unwrap());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    // Nothing is deleted from the scratch directory before the end: deleting thousands of
    // files makes creating new ones (objects, checkouts) slower for a while on ext4.
    let mut keep = Vec::new();
    let (a, b) = {
        let generated = tempfile::tempdir_in(&scratch).unwrap();
        let (dir_a, dir_b) = (generated.path().join("a"), generated.path().join("b"));
        write_tree(&dir_a, SHAPE, false);
        write_tree(&dir_b, SHAPE, true);
        let options = CaptureOptions::default();
        let a = runtime
            .block_on(capture(store.as_ref(), &dir_a, &options, &()))
            .unwrap();
        let b = runtime
            .block_on(capture(store.as_ref(), &dir_b, &options, &()))
            .unwrap();
        println!(
            "first tree: {} files, {} symlinks, {} directories; second: {} files, {} symlinks, {} directories",
            a.files, a.symlinks, a.directories, b.files, b.symlinks, b.directories
        );
        keep.push(generated);
        (a.root, b.root)
    };
    let inputs = runtime.block_on(async {
        let mut all = reachable_digests(store.as_ref(), &a).await.unwrap();
        all.extend(reachable_digests(store.as_ref(), &b).await.unwrap());
        all
    });
    let bench = Bench {
        runtime,
        store,
        scratch,
        a,
        b,
        inputs,
        reps,
    };

    // Each case runs its repetitions in a row, the CAS ones first.
    let (_, warm_up) = bench.cas(None);
    bench.forget(&warm_up);
    let mut merge: [Vec<Duration>; 4] = Default::default();
    let mut merged = None;
    for _ in 0..bench.reps {
        let (times, digest) = bench.cas(None);
        bench.forget(&digest);
        merged = Some(digest);
        merge.iter_mut().zip(times).for_each(|(all, time)| all.push(time));
    }
    let mut graft = Vec::new();
    for _ in 0..bench.reps {
        let ([time, ..], digest) = bench.cas(Some("imported"));
        bench.forget(&digest);
        graft.push(time);
    }
    let mut fs = Vec::new();
    for _ in 0..bench.reps {
        let (time, work) = bench.fs();
        keep.push(work);
        fs.push(time);
    }
    let mut baseline: [Vec<Duration>; 4] = Default::default();
    for _ in 0..bench.reps {
        let (times, digest, work) = bench.baseline();
        bench.forget(&digest);
        keep.push(work);
        assert_eq!(Some(digest), merged, "CAS and file imports disagree");
        baseline
            .iter_mut()
            .zip(times)
            .for_each(|(all, time)| all.push(time));
    }

    println!("\n{} repetitions, times in ms", bench.reps);
    println!("{:<34} {:>10} {:>10} {:>10}", "case", "median", "min", "max");
    let merge_median = row("cas -> cas merge", &merge[0]);
    row("  of which open x2", &merge[1]);
    row("  of which import", &merge[2]);
    row("  of which digest (stores dirs)", &merge[3]);
    row("cas -> cas graft (new name)", &graft);
    row("fs -> fs import", &fs);
    let baseline_median = row("baseline: checkout+import+capture", &baseline[0]);
    row("  of which checkout x2 (copy)", &baseline[1]);
    row("  of which fs -> fs import", &baseline[2]);
    row("  of which capture", &baseline[3]);
    println!(
        "\nbaseline / cas -> cas merge: {:.1}x (required: at least 20x)",
        baseline_median.as_secs_f64() / merge_median.as_secs_f64()
    );
    drop(keep);
}
