//! Everything casket keeps in an `object_store` backend (S3 and S3-compatible stores such as
//! Garage, Ceph RGW or MinIO; also GCS, Azure, local files, memory): blobs, action results,
//! assets and refs, under one key prefix, so that many frontends can share one bucket.

mod blobs;
mod existence;
mod records;
mod s3;

pub use blobs::ObjectStoreBlobs;
pub use existence::{ExistenceCacheOptions, ExistenceStats};
pub use records::{ObjectRecords, ObjectRefs, TOUCH_INTERVAL};
pub use s3::S3Options;
