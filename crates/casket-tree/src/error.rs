//! The error type of tree operations: always says which path it is about.

use std::io;
use std::path::PathBuf;

use casket_model::{Digest, DirectoryError};
use casket_store::StoreError;

/// What can go wrong capturing, checking out or walking a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A directory of the tree is not in the store.
    #[error("{path}: directory {digest} is not in the store")]
    MissingDirectory {
        /// Where in the tree (`.` for the root).
        path: String,
        /// The missing directory's digest.
        digest: Digest,
    },
    /// A file of the tree is not in the store.
    #[error("{path}: file content {digest} is not in the store")]
    MissingFile {
        /// Where in the tree.
        path: String,
        /// The missing blob's digest.
        digest: Digest,
    },
    /// A directory message is not a valid canonical `Directory`.
    #[error("{path}: invalid directory {digest}: {source}")]
    InvalidDirectory {
        /// Where in the tree.
        path: String,
        /// The directory's digest.
        digest: Digest,
        /// What is wrong with it.
        source: Box<DirectoryError>,
    },
    /// The store failed while handling `path`.
    #[error("{path}: {source}")]
    Store {
        /// Where in the tree.
        path: String,
        /// The store's error.
        source: Box<StoreError>,
    },
    /// A file-system operation on the user's tree failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A path cannot be captured: not UTF-8, or a FIFO, socket or device.
    #[error("cannot capture {}: {reason}", .path.display())]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The checkout target is unsuitable (a symlink, not a directory, not empty).
    #[error("checkout target {}: {reason}", .path.display())]
    Target {
        /// The target.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A background task failed.
    #[error("background task failed: {0}")]
    Task(String),
}

impl TreeError {
    /// Whether this is about what a tree lacks rather than a failure to look: a directory that
    /// is missing, stored with another size than its parent names, or invalid.
    pub fn is_gap(&self) -> bool {
        match self {
            TreeError::MissingDirectory { .. } | TreeError::InvalidDirectory { .. } => true,
            TreeError::Store { source, .. } => matches!(**source, StoreError::SizeMismatch { .. }),
            _ => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = TreeError> = std::result::Result<T, E>;

pub(crate) fn io_error(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> TreeError {
    let path = path.into();
    move |source| TreeError::Io { op, path, source }
}

pub(crate) fn store_error(path: impl Into<String>) -> impl FnOnce(StoreError) -> TreeError {
    let path = path.into();
    move |source| TreeError::Store {
        path,
        source: Box::new(source),
    }
}

/// Runs blocking file-system work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TreeError::Task(e.to_string()))?
}

/// Joins a tree path and an entry name (`.` is the root).
pub(crate) fn join(path: &str, name: &str) -> String {
    if path == "." {
        name.to_owned()
    } else {
        format!("{path}/{name}")
    }
}
