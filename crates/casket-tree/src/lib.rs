//! Merkle trees and the user's file system.
//!
//! * [`capture()`]: a directory on disk -> `Directory` messages and blobs in a store.
//! * [`checkout()`]: a tree in a store -> a directory on disk, never writing outside it.
//! * [`walk`]: the one tree walker (breadth first, gaps skipped or fatal); [`Tree`]: a whole
//!   tree fetched and validated, walked depth first.
//! * [`maintenance`]: expiry to a quota and integrity checks of a disk store and its refs.

mod capture;
mod checkout;
mod error;
pub mod maintenance;
mod tree;

pub use capture::{CaptureOptions, Captured, capture, store_files};
pub use checkout::{CheckedOut, CheckoutMode, CheckoutOptions, checkout};
pub use error::{Result, TreeError};
pub use tree::{Gaps, Tree, Walk, walk};

/// Receives progress of long operations (capture, checkout, gc, fsck). Every method has a
/// no-op default, and `()` reports nothing.
pub trait Progress: Send + Sync {
    /// The work ahead: `items` things totalling `bytes`.
    fn start(&self, _items: u64, _bytes: u64) {}
    /// `items` more things, totalling `bytes`, are done.
    fn advance(&self, _items: u64, _bytes: u64) {}
}

impl Progress for () {}

/// Concurrency for file-system work: enough requests in flight to keep every core and the
/// disk busy.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 4)
}
