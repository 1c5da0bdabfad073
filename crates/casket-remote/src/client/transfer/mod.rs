//! Whole trees between a local store and a server.
//!
//! **Push** ([`push_tree`]): the tree is read locally, FindMissingBlobs (batched,
//! de-duplicated) says what the server lacks, small blobs go in BatchUpdateBlobs packed up to
//! the batch limit, large ones by ByteStream Write in 1 MiB messages, resumed with
//! QueryWriteStatus after a failure. Many requests are in flight at once.
//!
//! **Pull** ([`pull_tree`]): nothing is fetched that the local store has. Directories come
//! with one GetTree where the server has it, else breadth-first in batches as soon as their
//! parents are known; each level's missing files are fetched while the next level's
//! directories are. Small files come in BatchReadBlobs, large ones are streamed straight into
//! the local store (resumed at the offset reached after a failure). Every blob is verified by
//! the local store as it is written: a corrupt one is refused, reported, and never stored.

mod pull;
mod push;

use casket_model::Digest;
use casket_store::StoreError;
use casket_tree::TreeError;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

pub use pull::{pull_blobs, pull_directories, pull_tree};
pub use push::{push_blobs, push_tree};

use super::RemoteCas;
use super::errors::describe;
use super::store::{fits_batch, pack};

/// Large blobs streamed at once (each also holds a slot among the requests in flight).
const STREAMS_IN_FLIGHT: usize = 4;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// An RPC failed (after its retries).
    #[error("remote {operation} failed: {}", describe(status))]
    Remote {
        /// What was being done.
        operation: &'static str,
        /// The final status.
        status: Status,
    },
    /// The server does not have a blob the tree needs.
    #[error("the server does not have {0}, which the tree needs")]
    Missing(Digest),
    /// The server sent bytes that do not match their digest; they were not stored.
    #[error("the server sent a corrupt copy of {expected} (it hashes to {actual}); it was not stored")]
    Corrupt {
        /// The blob asked for.
        expected: Digest,
        /// What the bytes received hash to.
        actual: Digest,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tree is incomplete or invalid.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The error of `operation` failing with a status.
fn failed(operation: &'static str) -> impl Fn(Status) -> TransferError {
    move |status| TransferError::Remote { operation, status }
}

/// What a transfer did.
#[derive(Clone, Debug, Default)]
pub struct TransferReport {
    /// Distinct blobs in the tree (directories and files).
    pub blobs: u64,
    /// Of those, already on the receiving side.
    pub present: u64,
    /// Blobs sent or received.
    pub transferred_blobs: u64,
    /// Their bytes.
    pub transferred_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Moves `digests` concurrently: those that fit (when `batches` allows them) packed into
/// batches for `batch`, the rest one by one through `stream`.
async fn batched_and_streamed<B, S>(
    remote: &RemoteCas,
    digests: impl IntoIterator<Item = Digest>,
    batches: bool,
    batch: impl Fn(Vec<Digest>) -> B,
    stream: impl Fn(Digest) -> S,
) -> Result<(), TransferError>
where
    B: Future<Output = Result<(), TransferError>>,
    S: Future<Output = Result<(), TransferError>>,
{
    let limit = remote.limits.batch_bytes;
    let (small, large): (Vec<Digest>, Vec<Digest>) =
        digests.into_iter().partition(|d| batches && fits_batch(d, limit));
    let concurrency = remote.options.concurrency.max(1);
    let batched = futures::stream::iter(pack(small, |d| d, limit))
        .map(batch)
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>();
    let streamed = futures::stream::iter(large)
        .map(stream)
        .buffer_unordered(concurrency.min(STREAMS_IN_FLIGHT))
        .try_collect::<Vec<()>>();
    futures::try_join!(batched, streamed)?;
    Ok(())
}
