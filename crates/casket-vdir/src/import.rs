//! The import rules, written once against the staged tree and used by both backends.
//!
//! 1. **Entries.** The source is listed depth first, each directory's entries in name-byte
//!    order, a directory before its contents, the root never. An explicit list is put in the
//!    same order (component by component) and de-duplicated; its paths may go through source
//!    symlinks, which resolve inside the source. What a symlink points to never changes the
//!    order.
//! 2. **Destination paths** resolve inside the import root: `/` is the root, `..` stops there,
//!    parent components follow symlinks to directories (creating the targets of dangling
//!    ones), and the final component is never followed.
//! 3. **Collisions.** A file or symlink onto a non-empty directory is ignored; onto anything else
//!    it replaces it. A directory onto a directory merges; onto a symlink it merges through the
//!    link (creating a dangling target); onto a file, a symlink to a file or a loop it is an
//!    error. FIFOs, sockets and devices are reported as skipped.
//! 4. **All or nothing.** Any error fails the whole import before anything changes.

use std::fmt;
use std::sync::Arc;

use casket_model::EntryName;

use crate::error::{Result, VdirError};
use crate::path::{self, RelPath, display};
use crate::stage::{MAX_LINKS, NodeId, Slot, SpecialKind, Stage};

/// Which source entries an import takes.
#[derive(Clone, Default)]
pub enum ImportFilter {
    /// Everything.
    #[default]
    All,
    /// Exactly these paths (relative to the source). A listed directory brings only itself, not
    /// its contents. Paths may go through symlinks of the source. The root itself (`.`, which
    /// BuildStream's listings hold) is skipped.
    Paths(Vec<String>),
    /// The listed entries for which the predicate, given the entry's path, returns true.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl fmt::Debug for ImportFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportFilter::All => f.write_str("All"),
            ImportFilter::Paths(paths) => f.debug_tuple("Paths").field(paths).finish(),
            ImportFilter::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// How to import.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Listed paths missing from the source are reported in [`ImportReport::missing`] instead
    /// of failing the import.
    pub ignore_missing: bool,
    /// Into a directory on disk, hard-link files (from the store's read-only objects or from the
    /// source directory) instead of copying them, where the file systems allow.
    pub link: bool,
}

/// What an import did, by source entry path, in processing order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// Files and symlinks written.
    pub written: Vec<String>,
    /// Entries that replaced something: a file, a symlink or an empty directory.
    pub overwritten: Vec<String>,
    /// Files and symlinks not imported because a non-empty directory is in their place.
    pub ignored: Vec<String>,
    /// FIFOs, sockets and devices in the source, which a tree cannot hold.
    pub skipped: Vec<Skipped>,
    /// Listed paths missing from the source (with [`ImportOptions::ignore_missing`]).
    pub missing: Vec<String>,
}

/// A source entry an import could not represent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The entry's path in the source.
    pub path: String,
    /// What it is.
    pub kind: SpecialKind,
}

/// One entry to import.
pub(crate) struct SourceEntry {
    pub path: RelPath,
    pub slot: Slot,
    /// A directory whose whole contents follow in the list (may be grafted at once).
    pub whole: bool,
}

/// Lists the entries of `source` below `root` that `filter` takes, in processing order.
pub(crate) fn select(
    source: &mut Stage,
    root: NodeId,
    filter: &ImportFilter,
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<Vec<SourceEntry>> {
    match filter {
        ImportFilter::All => Ok(source
            .walk_entries(root)?
            .into_iter()
            .map(|(path, slot)| SourceEntry {
                path,
                slot,
                whole: true,
            })
            .collect()),
        ImportFilter::Predicate(keep) => Ok(source
            .walk_entries(root)?
            .into_iter()
            .filter(|(path, _)| keep(&display(path)))
            .map(|(path, slot)| SourceEntry {
                path,
                slot,
                whole: false,
            })
            .collect()),
        ImportFilter::Paths(paths) => {
            let mut parsed = paths.iter().map(|p| path::parse(p)).collect::<Result<Vec<_>>>()?;
            // The root (`.` in BuildStream's own listings) is never an entry.
            parsed.retain(|p| !p.is_empty());
            parsed.sort();
            parsed.dedup();
            let mut out = Vec::with_capacity(parsed.len());
            for path in parsed {
                match find(source, root, &path)? {
                    Some(slot) => out.push(SourceEntry {
                        path,
                        slot,
                        whole: false,
                    }),
                    None if options.ignore_missing => report.missing.push(display(&path)),
                    None => return Err(VdirError::SourceMissing { path: display(&path) }),
                }
            }
            Ok(out)
        }
    }
}

/// The entry at `path` below `root`, its parents resolved inside `root`, itself not followed.
pub(crate) fn find(stage: &mut Stage, root: NodeId, path: &[EntryName]) -> Result<Option<Slot>> {
    let Some((name, parents)) = path.split_last() else {
        return Ok(Some(Slot::Dir(root)));
    };
    let components = path::components(parents);
    match stage.walk(root, root, &components, false, &mut { MAX_LINKS }) {
        Ok(dir) => stage.lookup(dir, name.as_str()),
        Err(VdirError::NotFound { .. } | VdirError::NotADirectory { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Imports `entries` of `source` into `dest` below `root`, following the module's rules.
/// On error, `dest` is left part-way and must be discarded by the caller.
pub(crate) fn apply(
    dest: &mut Stage,
    root: NodeId,
    source: &Stage,
    entries: Vec<SourceEntry>,
    report: &mut ImportReport,
) -> Result<()> {
    let mut grafted: Option<RelPath> = None;
    for entry in entries {
        let shown = display(&entry.path);
        if let Some(prefix) = &grafted {
            if entry.path.starts_with(prefix) {
                if matches!(entry.slot, Slot::File(_) | Slot::Symlink(_)) {
                    report.written.push(shown);
                }
                continue;
            }
            grafted = None;
        }
        // Skipped before DEST is touched: no parents created, nothing in their way matters.
        if let Slot::Special(kind) = entry.slot {
            report.skipped.push(Skipped { path: shown, kind });
            continue;
        }
        let (name, parents) = entry.path.split_last().expect("entries are never the root");
        let components = path::components(parents);
        let parent = dest.walk(root, root, &components, true, &mut { MAX_LINKS })?;
        let existing = dest.lookup(parent, name.as_str())?;
        match entry.slot {
            Slot::Special(_) => unreachable!("skipped above"),
            Slot::Dir(source_dir) => match existing {
                None => match source.known_digest(source_dir).filter(|_| entry.whole) {
                    Some(digest) => {
                        dest.graft(parent, name.clone(), digest)?;
                        grafted = Some(entry.path.clone());
                    }
                    None => {
                        dest.mkdir(parent, name.clone())?;
                    }
                },
                Some(Slot::Dir(_)) => {}
                Some(Slot::Symlink(_)) => {
                    dest.walk(root, parent, &[Some(name.as_str())], true, &mut { MAX_LINKS })?;
                }
                Some(Slot::File(_) | Slot::Special(_)) => {
                    return Err(VdirError::NotADirectory {
                        path: dest.describe(root, parent, Some(name.as_str())),
                    });
                }
            },
            slot @ (Slot::File(_) | Slot::Symlink(_)) => {
                match existing {
                    None => {}
                    Some(Slot::Dir(id)) if !dest.is_empty_dir(id)? => {
                        report.ignored.push(shown);
                        continue;
                    }
                    Some(_) => {
                        dest.remove(parent, name)?;
                        report.overwritten.push(shown.clone());
                    }
                }
                dest.put(parent, name.clone(), slot)?;
                report.written.push(shown);
            }
        }
    }
    Ok(())
}
