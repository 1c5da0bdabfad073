//! Temporary objects: anonymous `O_TMPFILE` inodes linked into place when complete.
//!
//! An `O_TMPFILE` inode has no name until `linkat` gives it its final one, so a crash leaves
//! nothing behind and there is no cross-directory rename (which takes a file-system-wide lock in
//! Linux). File systems without `O_TMPFILE` get a named temp file in `tmp/` that is renamed
//! instead; those are what `fsck` reports as temp files after a crash.

use std::fs::{self, File, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use casket_model::Digest;
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;

use super::DiskStore;
use super::accounting::Entry;
use crate::error::{IoContext, Result};

/// An object being written: invisible until [`DiskStore::install`].
pub(super) struct TempObject {
    pub(super) file: File,
    named: Option<tempfile::TempPath>,
}

impl DiskStore {
    /// A new, empty, read-only (mode 0444, writable through this handle) temp object. With
    /// `direct`, writes bypass the page cache (`O_DIRECT`) where the file system allows it;
    /// they must then be aligned as `ingest` does.
    pub(super) fn create_temp(&self, direct: bool) -> Result<TempObject> {
        let tmp = self.tmp_dir();
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o444);
        let opened = if direct {
            match rustix::fs::open(&tmp, flags | OFlags::DIRECT, mode) {
                Err(Errno::INVAL) => rustix::fs::open(&tmp, flags, mode),
                other => other,
            }
        } else {
            rustix::fs::open(&tmp, flags, mode)
        };
        match opened {
            Ok(fd) => Ok(TempObject {
                file: File::from(fd),
                named: None,
            }),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let named = tempfile::Builder::new()
                    .prefix("obj-")
                    .permissions(Permissions::from_mode(0o444))
                    .tempfile_in(&tmp)
                    .io_context("create temp file in", &tmp)?;
                let (file, path) = named.into_parts();
                Ok(TempObject {
                    file,
                    named: Some(path),
                })
            }
            Err(e) => Err(io::Error::from(e)).io_context("create temp file in", tmp),
        }
    }

    /// Gives a complete, verified temp object its final name. An object already there has the
    /// same content, so finding one is success.
    pub(super) fn install(&self, temp: TempObject, digest: &Digest) -> Result<()> {
        self.install_at(temp, &self.object_path(digest), digest.size(), Entry::Object)
    }

    /// Gives a complete temp object of `size` bytes the name `target` (an object or one of its
    /// variants). A file already there is kept if it has the right size (it has the same
    /// content unless corrupted at rest, which fsck finds) and counts as used; one of another
    /// size (truncated by a power loss) is replaced.
    pub(super) fn install_at(&self, temp: TempObject, target: &Path, size: u64, entry: Entry) -> Result<()> {
        if self.options.fsync {
            temp.file.sync_data().io_context("fsync", self.tmp_dir())?;
        }
        match temp.named {
            None => {
                if link_anonymous(&temp.file, target).io_context("link into", target)? {
                    self.accounting.linked(entry, size, &temp.file);
                } else {
                    let existing = fs::metadata(target).io_context("stat", target)?;
                    if existing.len() == size {
                        self.touch_if_stale(target, &existing)?;
                    } else {
                        replace_with(&temp.file, target).io_context("replace", target)?;
                        self.accounting.removed(entry, &existing);
                        self.accounting.linked(entry, size, &temp.file);
                    }
                }
            }
            Some(path) => {
                let replaced = fs::symlink_metadata(target).ok();
                path.persist(target)
                    .map_err(|e| e.error)
                    .io_context("rename into", target)?;
                if let Some(replaced) = replaced {
                    self.accounting.removed(entry, &replaced);
                }
                self.accounting.linked(entry, size, &temp.file);
            }
        }
        if self.options.fsync
            && let Some(dir) = target.parent()
        {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .io_context("fsync", dir)?;
        }
        Ok(())
    }
}

/// Links an `O_TMPFILE` inode at `target`; `Ok(false)` if something is already there.
/// `AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`; without it the inode is linked through its
/// `/proc/self/fd` name.
fn link_anonymous(file: &File, target: &Path) -> io::Result<bool> {
    let linked = match rustix::fs::linkat(file, "", CWD, target, AtFlags::EMPTY_PATH) {
        Err(Errno::NOENT | Errno::PERM) => {
            let by_name = format!("/proc/self/fd/{}", file.as_raw_fd());
            rustix::fs::linkat(CWD, by_name.as_str(), CWD, target, AtFlags::SYMLINK_FOLLOW)
        }
        other => other,
    };
    match linked {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Replaces a damaged `target` atomically: links the inode beside it, then renames it over.
fn replace_with(file: &File, target: &Path) -> io::Result<()> {
    let mut beside = target.as_os_str().to_owned();
    beside.push(format!(".replace-{}", std::process::id()));
    let beside = std::path::PathBuf::from(beside);
    let _ = fs::remove_file(&beside);
    if !link_anonymous(file, &beside)? {
        return Err(io::Error::other("replacement name taken"));
    }
    fs::rename(&beside, target)
}
