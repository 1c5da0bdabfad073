//! The one error type of the storage layer.

use std::io;
use std::path::PathBuf;

use casket_model::Digest;

/// What can go wrong storing or fetching blobs and refs. Callers can tell "absent" from
/// "corrupt" from "I/O" from "backend".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob is not in the store.
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// Written bytes do not hash to the digest they were written under; nothing was stored.
    #[error("content does not match its digest: declared {expected}, computed {actual}")]
    DigestMismatch {
        /// The digest the writer declared.
        expected: Digest,
        /// The digest of the bytes actually received.
        actual: Digest,
    },
    /// More bytes were written than the digest's size; nothing was stored.
    #[error("more than the declared size written for {0}")]
    TooLong(Digest),
    /// The store holds this hash, but with another size than the digest says.
    #[error("blob {digest} is stored with size {actual}, not {}", .digest.size())]
    SizeMismatch {
        /// The digest asked for.
        digest: Digest,
        /// The size of the stored object.
        actual: u64,
    },
    /// A stored object does not hash to its name: it was corrupted at rest.
    #[error("stored object {expected} is corrupt: its content hashes to {actual}")]
    Corrupt {
        /// The object's name.
        expected: Digest,
        /// What its content hashes to now.
        actual: Digest,
    },
    /// A read started past the end of the blob.
    #[error("read offset {offset} is beyond the end of {digest}")]
    OffsetOutOfRange {
        /// The blob.
        digest: Digest,
        /// The offset asked for.
        offset: u64,
    },
    /// The blob is too large to be loaded into memory by this call.
    #[error("blob {digest} is larger than the {limit} bytes this operation loads into memory")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The store was asked for a digest function it does not hold.
    #[error("digest function {0} is not supported by this store")]
    UnsupportedFunction(casket_model::DigestFunction),
    /// A ref cannot be set because an existing ref's name is its ancestor or descendant: no
    /// store takes both `a/b` and `a/b/c`.
    #[error("ref {0:?} conflicts with an existing ref whose name is its ancestor or descendant")]
    RefConflict(String),
    /// A record cannot be stored because an existing record's key is its ancestor or
    /// descendant: no store takes both `a/b` and `a/b/c`.
    #[error("record {0:?} conflicts with an existing record whose key is its ancestor or descendant")]
    RecordConflict(String),
    /// A ref file does not hold a valid digest.
    #[error("ref {name:?} is corrupt: {reason}")]
    CorruptRef {
        /// The ref.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The object-store backend failed.
    #[error("object store: {0}")]
    ObjectStore(#[from] ::object_store::Error),
    /// A remote store (a REAPI server) failed or refused a request.
    #[error("remote {operation} failed: {code_name}: {message}")]
    Remote {
        /// The RPC.
        operation: &'static str,
        /// The gRPC status code.
        code: i32,
        /// The code's canonical name (`RESOURCE_EXHAUSTED`), for messages.
        code_name: String,
        /// The server's message.
        message: String,
    },
    /// The store cannot do this at all (a remote cache cannot delete or count, for example).
    #[error("{0} is not supported by this store")]
    Unsupported(&'static str),
    /// A blob larger than the store could ever hold (its whole quota).
    #[error("a {bytes}-byte blob does not fit in the {capacity}-byte quota")]
    ExceedsCapacity {
        /// The blob's size.
        bytes: u64,
        /// What the store can hold at most.
        capacity: u64,
    },
    /// A store with a limit has no room left for a write.
    #[error("no room: {0}")]
    NoRoom(String),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches an operation and a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io_context(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_context(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

/// Runs blocking file-system work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
