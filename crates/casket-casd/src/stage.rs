//! StageTree's stager: a tree is *copied* out of the store into a fresh directory under
//! `cas/staging` (or the client's empty directory), and removed again when the client says so.
//!
//! Why copies: a staged tree belongs to the build, which may patch a file in place or run
//! `sed -i`, often as root. Hard links to the store's read-only objects would let such a write
//! change a stored object (root ignores the mode bits; BuildStream even `chmod`s linked
//! objects); reflinks do not exist on ext4; a FUSE view needs an external binary and
//! `/dev/fuse`, and makes every later read of the tree a round trip through the daemon. A copy
//! costs one inode per file, written by `casket_tree::checkout` on the blocking pool, several
//! directories at once, each file copied in the kernel (`copy_file_range`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use casket_model::{Digest, Timestamp};
use casket_store::{BlobStore, StoreError};
use casket_tree::{CheckoutMode, CheckoutOptions, TreeError, checkout};

/// Names of the directories this daemon stages into, so that only its own leftovers (after a
/// crash) are removed at start, never buildbox-casd's FUSE mount points.
const PREFIX: &str = "casket-";

/// Creates the staging area and removes this daemon's leftovers from an earlier run.
pub(crate) fn prepare_staging_area(staging: &Path) -> Result<(), StoreError> {
    let io_error = |op, path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { op, path, source }
    };
    fs::create_dir_all(staging).map_err(io_error("create", staging))?;
    for entry in fs::read_dir(staging).map_err(io_error("list", staging))? {
        let entry = entry.map_err(io_error("list", staging))?;
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            remove_tree(&entry.path()).map_err(io_error("remove", &entry.path()))?;
        }
    }
    Ok(())
}

/// The mtime of staged files without one of their own: BuildStream's fixed 2011-11-11
/// 11:11:11 UTC, which buildbox-casd's stagers set too, so builds see the same inputs.
const STAGED_MTIME: Timestamp = Timestamp {
    seconds: 1_321_009_871,
    nanos: 0,
};

/// A staged tree; [`Staged::unstage`] removes it.
#[derive(Debug)]
pub(crate) struct Staged {
    /// Where the tree is.
    pub(crate) path: PathBuf,
    /// Whether the daemon made the directory (else only its contents are removed).
    owned: bool,
}

/// Stages `root` from `store` at `path` (an empty or absent directory), or in a new
/// directory under `staging` when `path` is `None`.
pub(crate) async fn stage(
    store: &Arc<dyn BlobStore>,
    root: &Digest,
    staging: &Path,
    path: Option<&Path>,
) -> Result<Staged, TreeError> {
    let staged = match path {
        Some(path) => Staged {
            path: path.to_owned(),
            owned: !path.exists(),
        },
        None => {
            let io_error = |op, path: &Path| {
                let path = path.to_owned();
                move |source| TreeError::Io { op, path, source }
            };
            let dir = tempfile::Builder::new()
                .prefix(PREFIX)
                .tempdir_in(staging)
                .map_err(io_error("create a directory in", staging))?
                .keep();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_error("chmod", &dir))?;
            Staged {
                path: dir,
                owned: true,
            }
        }
    };
    let options = CheckoutOptions {
        mode: CheckoutMode::Copy,
        mtime: Some(STAGED_MTIME),
        ..CheckoutOptions::default()
    };
    if let Err(e) = checkout(store, root, &staged.path, &options, &()).await {
        let _ = staged.unstage().await;
        return Err(e);
    }
    Ok(staged)
}

impl Staged {
    /// Removes the staged tree, whatever the build did to its permissions.
    pub(crate) async fn unstage(self) -> io::Result<()> {
        tokio::task::spawn_blocking(move || {
            if self.owned {
                remove_tree(&self.path)
            } else {
                for entry in fs::read_dir(&self.path)? {
                    remove_tree(&entry?.path())?;
                }
                Ok(())
            }
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Removes `path` and everything below it without following symlinks, first giving the owner
/// write and search rights on directories a build made read-only.
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        done => return done,
    }
    fs::set_permissions(
        path,
        fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
    )?;
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstaging_removes_what_a_build_made_read_only_and_no_link_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("keep"), "keep").expect("write");
        let staged = dir.path().join("staged");
        fs::create_dir_all(staged.join("locked/deeper")).expect("mkdir");
        fs::write(staged.join("locked/deeper/file"), "x").expect("write");
        std::os::unix::fs::symlink(&outside, staged.join("link")).expect("symlink");
        fs::set_permissions(staged.join("locked/deeper"), fs::Permissions::from_mode(0o500)).expect("chmod");
        fs::set_permissions(staged.join("locked"), fs::Permissions::from_mode(0o500)).expect("chmod");
        remove_tree(&staged).expect("removed");
        assert!(!staged.exists());
        assert!(
            outside.join("keep").exists(),
            "a symlink's target is not followed"
        );
    }

    #[test]
    fn only_this_daemons_leftovers_are_cleared_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join("cas/staging");
        fs::create_dir_all(staging.join("casket-old/sub")).expect("mkdir");
        fs::create_dir_all(staging.join("cas-tmpdirXYZ")).expect("casd's");
        prepare_staging_area(&staging).expect("prepared");
        assert!(!staging.join("casket-old").exists());
        assert!(staging.join("cas-tmpdirXYZ").exists());
    }
}
