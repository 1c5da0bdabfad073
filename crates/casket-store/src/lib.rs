//! Where casket's bytes and names live. Knows nothing of gRPC.
//!
//! * [`BlobStore`]: the content-addressable store trait (batch `find_missing` is the primitive,
//!   reads and writes stream), with [`BlobStoreExt`] conveniences on top.
//! * Backends: [`DiskStore`] (read-only files under a root, atomic renames), [`MemoryStore`],
//!   and [`ObjectStoreBlobs`] over any `object_store` backend.
//! * [`DiskRefs`]: named roots beside a disk store; [`DiskRecords`]: action results, assets.
//! * `conformance` (feature `conformance`): the suite every backend must pass.

mod blob_store;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod disk;
mod error;
mod memory;
mod object_blobs;
mod records;
mod refs;

pub use blob_store::{
    BlobStore, BlobStoreExt, BlobStream, BlobWriter, CHUNK_SIZE, MAX_IN_MEMORY_BLOB, NewBlob, ReadRange,
    Usage, hash_file,
};
pub use disk::{DiskOptions, DiskStore, ObjectInfo, ObjectScan};
pub use error::{Result, StoreError};
pub use memory::MemoryStore;
pub use object_blobs::ObjectStoreBlobs;
pub use records::DiskRecords;
pub use refs::{CorruptRef, DiskRefs, RefEntry, RefScan};
