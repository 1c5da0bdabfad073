//! The block store's in-memory index: digest -> where the blob is, its size and when it was
//! last used. Lookups make no system call.
//!
//! Sharded by hash; each shard is a `hashbrown::HashTable` of `u32` slot numbers over a dense
//! `Vec` of 56-byte slots (a free list reuses removed ones), so a blob costs about 56 bytes
//! plus 4–10 bytes of table instead of a 57-byte bucket at a load factor as low as 44%.
//! Last use is an atomic, so existence checks touch under a read lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use casket_model::Digest;
use hashbrown::HashTable;

use super::record::function_code;

const SHARDS: usize = 64;

/// Where a blob's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// A record at `offset` in block `block`.
    Block { block: u32, offset: u32 },
    /// A file of its own (a large blob).
    File,
}

const FILE_BLOCK: u32 = u32::MAX;

/// A blob the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    /// Its size (which may differ from the size a caller asked with).
    pub(crate) size: u64,
    pub(crate) place: Place,
    /// Seconds since the UNIX epoch.
    pub(crate) last_used: u32,
}

struct Slot {
    hash: [u8; 32],
    size: u64,
    block: u32,
    offset: u32,
    last_used: AtomicU32,
    function: u8,
}

impl Slot {
    fn matches(&self, function: u8, hash: &[u8; 32]) -> bool {
        self.function == function && self.hash == *hash
    }

    fn found(&self) -> Found {
        Found {
            size: self.size,
            place: match self.block {
                FILE_BLOCK => Place::File,
                block => Place::Block {
                    block,
                    offset: self.offset,
                },
            },
            last_used: self.last_used.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
}

/// The index. See the module documentation.
pub(crate) struct Index {
    shards: Box<[RwLock<Shard>]>,
    blobs: AtomicU64,
    bytes: AtomicU64,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("blobs", &self.blobs())
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// The table's hash of a key: the digest is already uniform, so 8 of its bytes will do.
fn table_hash(function: u8, hash: &[u8; 32]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(word) ^ u64::from(function)
}

fn shard_of(hash: &[u8; 32]) -> usize {
    usize::from(hash[8]) % SHARDS
}

impl Index {
    pub(crate) fn new() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            blobs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// How many blobs it holds.
    pub(crate) fn blobs(&self) -> u64 {
        self.blobs.load(Ordering::Relaxed)
    }

    /// The sum of their sizes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Looks `digest`'s hash up (whatever the size it is stored with) and, if `touch` is set,
    /// marks it used at that time.
    pub(crate) fn get(&self, digest: &Digest, touch: Option<u32>) -> Option<Found> {
        let (function, hash) = (function_code(digest.function()), digest.hash());
        let shard = self.read(hash);
        let &slot = shard.table.find(table_hash(function, hash), |&i| {
            shard.slots[i as usize].matches(function, hash)
        })?;
        let slot = &shard.slots[slot as usize];
        if let Some(now) = touch {
            slot.last_used.fetch_max(now, Ordering::Relaxed);
        }
        Some(slot.found())
    }

    /// Records `digest` at `place`, replacing where it was; returns the replaced entry.
    pub(crate) fn insert(&self, digest: &Digest, place: Place, last_used: u32) -> Option<Found> {
        let (function, hash) = (function_code(digest.function()), digest.hash());
        let (block, offset) = match place {
            Place::Block { block, offset } => (block, offset),
            Place::File => (FILE_BLOCK, 0),
        };
        let slot = Slot {
            hash: *hash,
            size: digest.size(),
            block,
            offset,
            last_used: AtomicU32::new(last_used),
            function,
        };
        let mut shard = self.write(hash);
        let shard = &mut *shard;
        let key = table_hash(function, hash);
        if let Some(&i) = shard
            .table
            .find(key, |&i| shard.slots[i as usize].matches(function, hash))
        {
            let old = std::mem::replace(&mut shard.slots[i as usize], slot);
            self.bytes.fetch_sub(old.size, Ordering::Relaxed);
            self.bytes.fetch_add(digest.size(), Ordering::Relaxed);
            return Some(old.found());
        }
        let i = match shard.free.pop() {
            Some(i) => {
                shard.slots[i as usize] = slot;
                i
            }
            None => {
                if shard.slots.len() == shard.slots.capacity() {
                    // Grow by a quarter, not double: memory per blob stays near the slot size.
                    shard.slots.reserve_exact((shard.slots.len() / 4).max(64));
                }
                shard.slots.push(slot);
                (shard.slots.len() - 1) as u32
            }
        };
        let slots = &shard.slots;
        shard.table.insert_unique(key, i, |&j| {
            let s = &slots[j as usize];
            table_hash(s.function, &s.hash)
        });
        self.blobs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(digest.size(), Ordering::Relaxed);
        None
    }

    /// Removes `digest`'s hash, but only where `at` says it is when `at` is given (so an
    /// eviction does not remove a copy written elsewhere meanwhile).
    pub(crate) fn remove(&self, digest: &Digest, at: Option<Place>) -> Option<Found> {
        let (function, hash) = (function_code(digest.function()), digest.hash());
        let mut shard = self.write(hash);
        let shard = &mut *shard;
        let slots = &shard.slots;
        let entry = shard
            .table
            .find_entry(table_hash(function, hash), |&i| {
                slots[i as usize].matches(function, hash)
            })
            .ok()?;
        let found = slots[*entry.get() as usize].found();
        if at.is_some_and(|at| at != found.place) {
            return None;
        }
        let (i, _) = entry.remove();
        shard.free.push(i);
        self.blobs.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(found.size, Ordering::Relaxed);
        Some(found)
    }

    /// Calls `f` with every blob and its place (under each shard's read lock in turn).
    pub(crate) fn for_each(&self, mut f: impl FnMut(Digest, Found)) {
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            for &i in shard.table.iter() {
                let slot = &shard.slots[i as usize];
                let function = casket_model::DigestFunction::ALL[usize::from(slot.function)];
                if let Ok(digest) = Digest::new(function, slot.hash, slot.size) {
                    f(digest, slot.found());
                }
            }
        }
    }

    /// Bytes of memory the index holds (slots, tables, free lists).
    pub(crate) fn heap_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                (shard.slots.capacity() * std::mem::size_of::<Slot>()
                    + shard.table.capacity() * (std::mem::size_of::<u32>() + 1)
                    + shard.free.capacity() * std::mem::size_of::<u32>()) as u64
            })
            .sum()
    }

    fn read(&self, hash: &[u8; 32]) -> RwLockReadGuard<'_, Shard> {
        // A panic while holding the lock left the shard's table and slots consistent: every
        // update completes before it could panic.
        self.shards[shard_of(hash)]
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self, hash: &[u8; 32]) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard_of(hash)]
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casket_model::DigestFunction;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn digest(n: u32) -> Digest {
        Digest::of(DigestFunction::Sha256, &n.to_le_bytes())
    }

    #[test]
    fn insert_get_remove() {
        let index = Index::new();
        let d = digest(1);
        let here = Place::Block { block: 3, offset: 96 };
        assert_eq!(index.insert(&d, here, 10), None);
        assert_eq!(
            index.get(&d, None),
            Some(Found {
                size: 4,
                place: here,
                last_used: 10
            })
        );
        assert_eq!(index.get(&d, Some(20)).map(|f| f.last_used), Some(20));
        assert_eq!(
            index.get(&d, Some(5)).map(|f| f.last_used),
            Some(20),
            "touches never go back"
        );
        assert_eq!((index.blobs(), index.bytes()), (1, 4));
        assert_eq!(index.remove(&d, Some(Place::File)), None, "only where it is");
        assert!(index.remove(&d, Some(here)).is_some());
        assert_eq!(index.get(&d, None), None);
        assert_eq!((index.blobs(), index.bytes()), (0, 0));
    }

    #[test]
    fn functions_are_separate_keys() {
        let index = Index::new();
        let sha = Digest::of(DigestFunction::Sha256, b"x");
        let blake = Digest::new(DigestFunction::Blake3, *sha.hash(), 1).expect("digest");
        index.insert(&sha, Place::File, 1);
        assert_eq!(index.get(&blake, None), None);
    }

    #[test]
    fn a_million_blobs_cost_under_a_hundred_bytes_each() {
        let index = Index::new();
        for n in 0..1_000_000 {
            index.insert(&digest(n), Place::Block { block: 1, offset: n }, 0);
        }
        let per_blob = index.heap_bytes() / index.blobs();
        assert!(per_blob < 100, "{per_blob} bytes a blob");
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u32..50, 0u8..3, 0u32..1000), 1..300)) {
            let index = Index::new();
            let mut model: HashMap<Digest, Place> = HashMap::new();
            for (n, op, offset) in ops {
                let d = digest(n);
                let place = Place::Block { block: 1, offset };
                match op {
                    0 | 1 => {
                        index.insert(&d, place, 0);
                        model.insert(d, place);
                    }
                    _ => {
                        prop_assert_eq!(index.remove(&d, None).map(|f| f.place), model.remove(&d));
                    }
                }
            }
            prop_assert_eq!(index.blobs(), model.len() as u64);
            for n in 0..50 {
                let d = digest(n);
                prop_assert_eq!(index.get(&d, None).map(|f| f.place), model.get(&d).copied());
            }
        }
    }
}
