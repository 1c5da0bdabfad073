//! A deterministic tree generator, so the CLI's tests need nothing outside the repository. It
//! has the knobs, defaults and layout of the shared `gen_tree.py` but not its bytes (BLAKE3
//! instead of SHAKE-128): `buildstream_digest.rs` runs the shared one to check casket against
//! BuildStream on the very trees `cargo xtask bench-peers` compares them on.
//!
//! The tree is a pure function of [`Tree`]:
//! * `dirs` directories `d0000`.., nested: the first [`FANOUT`] in the root, directory `i` in
//!   directory `(i - FANOUT) / FANOUT` after that.
//! * `files` files `f000000.dat`.. of `size` bytes: file `j` in directory `j % (dirs + 1)`, the
//!   root being number `dirs`; every tenth (`j % 10 == 9`) has mode 0755, the others 0644.
//! * `files / 50` relative symlinks `l00000.lnk`..: symlink `k` in directory
//!   `(7k + 3) % (dirs + 1)`, pointing at file `7919k % files`, or every tenth at directory
//!   `31k % dirs` unless that is its own directory or an ancestor (no loops).
//! * `large.0` files `large0.bin`.. of `large.1` bytes each in the root.
//! * Content: BLAKE3's extendable output of `casket-tests|SEED|KIND|INDEX`, so every file is
//!   distinct (no accidental deduplication) and incompressible.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// At most this many subdirectories per directory.
const FANOUT: usize = 8;

/// The knobs of a generated tree; [`Tree::default`] is `gen_tree.py`'s defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tree {
    /// How many small files.
    pub(crate) files: usize,
    /// The size of every small file in bytes.
    pub(crate) size: usize,
    /// How many (nested) directories below the root.
    pub(crate) dirs: usize,
    /// How many large files, and the size of each in bytes.
    pub(crate) large: (usize, u64),
    /// Picks the content.
    pub(crate) seed: u64,
}

impl Default for Tree {
    fn default() -> Tree {
        Tree {
            files: 1000,
            size: 4096,
            dirs: 20,
            large: (0, 0),
            seed: 1,
        }
    }
}

impl Tree {
    /// Writes the tree into `out`, which must be absent or empty.
    pub(crate) fn write(&self, out: &Path) {
        let slots = self.slots();
        fs::create_dir_all(out).unwrap();
        for dir in &slots[..self.dirs] {
            fs::create_dir(out.join(dir)).unwrap();
        }
        let file = |j: usize| slots[j % slots.len()].join(format!("f{j:06}.dat"));
        let mut data = vec![0; self.size];
        for j in 0..self.files {
            self.content("small", j).fill(&mut data);
            let path = out.join(file(j));
            fs::write(&path, &data).unwrap();
            let mode = if j % 10 == 9 { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        for k in 0..self.files / 50 {
            let here = &slots[(7 * k + 3) % slots.len()];
            let to_dir = self.dirs > 0 && k % 10 == 9 && !here.starts_with(&slots[(31 * k) % self.dirs]);
            let target = if to_dir {
                slots[(31 * k) % self.dirs].clone()
            } else {
                file((7919 * k) % self.files)
            };
            let up: PathBuf = here.components().map(|_| "..").collect();
            std::os::unix::fs::symlink(up.join(target), out.join(here).join(format!("l{k:05}.lnk"))).unwrap();
        }
        for k in 0..self.large.0 {
            let mut file = File::create(out.join(format!("large{k}.bin"))).unwrap();
            io::copy(&mut self.content("large", k).take(self.large.1), &mut file).unwrap();
        }
    }

    /// Every directory's path relative to the root, the root last.
    fn slots(&self) -> Vec<PathBuf> {
        let mut slots: Vec<PathBuf> = Vec::with_capacity(self.dirs + 1);
        for i in 0..self.dirs {
            let name = format!("d{i:04}");
            let path = if i < FANOUT {
                PathBuf::from(name)
            } else {
                slots[(i - FANOUT) / FANOUT].join(name)
            };
            slots.push(path);
        }
        slots.push(PathBuf::new());
        slots
    }

    /// The endless content of file `index` of `kind`.
    fn content(&self, kind: &str, index: usize) -> blake3::OutputReader {
        let key = format!("casket-tests|{}|{kind}|{index}", self.seed);
        blake3::Hasher::new().update(key.as_bytes()).finalize_xof()
    }
}
