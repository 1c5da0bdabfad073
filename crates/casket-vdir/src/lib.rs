//! Virtual directories: one [`Directory`] API over a directory on disk ([`FileDirectory`]) and
//! over a Merkle tree in a content-addressable store ([`CasDirectory`]), with BuildStream's
//! file import rules done right (see [`import`](crate::Directory::import_files)).
//!
//! Both backends run every operation on the same in-memory model (`stage`), so they behave
//! identically by construction: the CAS backend edits a copy of its tree and swaps it in on
//! success; the file backend plans an edit on a model loaded from disk and writes it only when
//! the plan succeeded. [`SandboxRoot`] hands a build sandbox's root out both ways.
//!
//! Paths given to the API are relative to the directory the call is made on, which is also the
//! root for symlink resolution: `/` is that directory, `..` in a symlink target stops there,
//! and the last component of a path is never followed (except by [`Directory::descend`] and
//! [`Directory::read_file`]). Listings are depth first, each directory's entries in name-byte
//! order, a directory right before its contents.

mod cas;
mod edit;
mod error;
mod file;
mod import;
mod path;
mod sandbox;
mod snapshot;
mod stage;

use std::io::Write;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

pub use cas::CasDirectory;
pub use error::{Result, VdirError};
pub use file::FileDirectory;
pub use import::{ImportFilter, ImportOptions, ImportReport, Skipped};
pub use sandbox::SandboxRoot;
pub use snapshot::{DETERMINISTIC_MTIME, EntryKind, MAX_READ, Snapshot, Stat, TreeDiff};
pub use stage::SpecialKind;

/// A directory tree that can be read, edited and imported into, wherever it lives.
#[async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The directory at `path`, following symlinks inside this directory; missing directories
    /// (and the targets of dangling symlinks) are created when `create` is set.
    async fn descend(&self, path: &str, create: bool) -> Result<Box<dyn Directory>>;

    /// Imports `source` (or the part `filter` selects) into this directory, by the rules of the
    /// crate documentation. Either the whole import happens or, on error, nothing changes.
    async fn import_files(
        &self,
        source: &dyn Directory,
        filter: &ImportFilter,
        options: &ImportOptions,
    ) -> Result<ImportReport>;

    /// Writes the tree into `dest` on disk (created if missing), hard-linking files where
    /// `can_link` and the file systems allow.
    async fn export_files(&self, dest: &Path, can_link: bool) -> Result<()> {
        let target = FileDirectory::create(dest)?;
        let options = ImportOptions {
            link: can_link,
            ..ImportOptions::default()
        };
        target
            .import_files(self.as_directory(), &ImportFilter::All, &options)
            .await?;
        Ok(())
    }

    /// Writes the tree as a tar stream to `out`.
    async fn export_tar(&self, out: Box<dyn Write + Send>) -> Result<()> {
        self.snapshot().await?.export_tar(out).await
    }

    /// Every path in the tree, depth first, siblings in name-byte order, a directory right
    /// before its contents, the root not included.
    async fn list_relative_paths(&self) -> Result<Vec<String>>;

    /// Whether something is at `path` (its last component not followed).
    async fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(VdirError::NotFound { .. } | VdirError::NotADirectory { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What is at `path` (its last component not followed).
    async fn stat(&self, path: &str) -> Result<Stat>;

    /// The whole content of the file at `path` (symlinks followed inside this directory), at
    /// most [`MAX_READ`] bytes.
    async fn read_file(&self, path: &str) -> Result<Bytes>;

    /// Writes a file at `path`, creating parent directories and replacing a file or symlink
    /// already there (a symlink is replaced, never followed).
    async fn write_file(&self, path: &str, data: Bytes, executable: bool) -> Result<()>;

    /// Removes the entry at `path`; a non-empty directory only when `recursive`.
    async fn remove(&self, path: &str, recursive: bool) -> Result<()>;

    /// Moves the entry at `from` to `to`, where nothing may be.
    async fn rename(&self, from: &str, to: &str) -> Result<()>;

    /// Remembers the current state: later [`Directory::list_modified_paths`] lists only files
    /// and symlinks written or changed after this call.
    async fn mark_unmodified(&self) -> Result<()>;

    /// Files and symlinks new or changed since [`Directory::mark_unmodified`] (all of them if it
    /// was never called), in listing order.
    async fn list_modified_paths(&self) -> Result<Vec<String>>;

    /// The total size in bytes of the files in the tree.
    async fn get_size(&self) -> Result<u64>;

    /// Makes every timestamp of the tree deterministic: on disk, sets every mtime to
    /// [`DETERMINISTIC_MTIME`] (except files with other hard links, such as store objects,
    /// whose time belongs to those links too); in the CAS, drops recorded mtimes.
    async fn set_deterministic_mtime(&self) -> Result<()>;

    /// A read-only copy of the tree as it is now.
    async fn snapshot(&self) -> Result<Snapshot>;

    /// This directory as a trait object.
    fn as_directory(&self) -> &dyn Directory;
}
