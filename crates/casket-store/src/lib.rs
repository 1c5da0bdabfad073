//! Where casket's bytes and names live. Knows nothing of gRPC.
//!
//! * [`BlobStore`]: the content-addressable store trait (batch `find_missing` is the primitive,
//!   reads and writes stream), with [`BlobStoreExt`] conveniences on top.
//! * Backends: [`DiskStore`] (read-only files under a root, born unnamed and linked into place),
//!   [`BlockStore`] (small blobs packed into block files, an index in memory), [`MemoryStore`],
//!   [`ObjectStoreBlobs`] over any `object_store` backend (S3 through [`S3Options`]), and
//!   [`TieredStore`], a disk store in front of another store.
//! * [`RefStore`] (named roots) and [`RecordStore`] (action results, assets), on disk beside a
//!   disk store ([`DiskRefs`], [`DiskRecords`]) or in an object store ([`ObjectRefs`],
//!   [`ObjectRecords`]).
//! * `conformance` (feature `conformance`): the suite every backend must pass; `fault` (same
//!   feature): `fault::FaultyStore`, a wrapper that fails or hides chosen blobs.

mod blob_store;
mod block;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod disk;
mod error;
#[cfg(any(test, feature = "conformance"))]
pub mod fault;
mod memory;
mod object;
mod records;
mod refs;
mod tiered;

pub use blob_store::{
    BlobStore, BlobStoreExt, BlobStream, BlobWriter, CHUNK_SIZE, ListedBlob, MAX_IN_MEMORY_BLOB, NewBlob,
    ReadRange, Usage, hash_file,
};
pub use block::{BlockOptions, BlockStore, Expiry, MAX_SMALL_BLOB_LIMIT, Verification};
pub use disk::{DiskOptions, DiskStore, Layout, ObjectInfo, ObjectScan};
pub use error::{Result, StoreError};
pub use memory::MemoryStore;
pub use object::{
    ExistenceCacheOptions, ExistenceStats, ObjectRecords, ObjectRefs, ObjectStoreBlobs, S3Options,
    TOUCH_INTERVAL,
};
pub use records::{ActionId, DiskRecords, RecordEntry, RecordStore};
pub use refs::{CorruptRef, DiskRefs, RefEntry, RefScan, RefStore};
pub use tiered::{SpaceBudget, SpaceHold, TieredStore};
