//! The error type of virtual-directory operations: always says which path it is about.

use std::io;
use std::path::PathBuf;

use casket_store::StoreError;
use casket_tree::TreeError;

/// What can go wrong in a virtual directory. Paths are relative to the directory the
/// operation was called on (for imports, entry paths of the source).
#[derive(Debug, thiserror::Error)]
pub enum VdirError {
    /// A path given to the API is malformed (empty component, `..`, NUL, not UTF-8).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing is at this path.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The missing path.
        path: String,
    },
    /// A directory was needed, and a file or a symlink to a file is there.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// Where the directory was needed.
        path: String,
    },
    /// A file was needed, and a directory is there.
    #[error("{path}: is a directory")]
    IsADirectory {
        /// The path.
        path: String,
    },
    /// Resolving symlinks did not end (a loop, or more than 40 links).
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path being resolved.
        path: String,
    },
    /// Something is already at the destination of a rename.
    #[error("{path}: already exists")]
    Exists {
        /// The path.
        path: String,
    },
    /// A directory to remove has entries and the removal is not recursive.
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The path.
        path: String,
    },
    /// A directory would be moved into itself.
    #[error("cannot move {from} into itself ({to})")]
    IntoItself {
        /// The directory.
        from: String,
        /// The destination inside it.
        to: String,
    },
    /// A path listed for import is not in the source.
    #[error("{path}: listed for import but missing from the source")]
    SourceMissing {
        /// The listed path.
        path: String,
    },
    /// A file is larger than a whole-file read allows.
    #[error("{path}: {size} bytes is too large to read at once (limit {limit})")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A file on disk cannot be represented (not UTF-8, a name REAPI refuses).
    #[error("{}: {reason}", .path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// Why.
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
    /// The store failed.
    #[error("{path}: {source}")]
    Store {
        /// Where in the tree.
        path: String,
        /// The store's error.
        source: Box<StoreError>,
    },
    /// Loading, checking out or capturing a tree failed.
    #[error(transparent)]
    Tree(#[from] Box<TreeError>),
    /// A background task failed.
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<TreeError> for VdirError {
    fn from(e: TreeError) -> Self {
        VdirError::Tree(Box::new(e))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = VdirError> = std::result::Result<T, E>;

pub(crate) fn io_error(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VdirError {
    let path = path.into();
    move |source| VdirError::Io { op, path, source }
}

pub(crate) fn store_error(path: impl Into<String>) -> impl FnOnce(StoreError) -> VdirError {
    let path = path.into();
    move |source| VdirError::Store {
        path,
        source: Box::new(source),
    }
}
