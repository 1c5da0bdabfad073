//! The edits both backends offer, written once against the staged tree.

use crate::error::{Result, VdirError};
use crate::import::{self, ImportFilter, ImportOptions, ImportReport, SourceEntry};
use crate::path::{self, RelPath, components};
use crate::snapshot::Snapshot;
use crate::stage::{MAX_LINKS, NodeId, Slot, Stage, StagedFile};

/// Splits an API path into its parent components and last name; the root is refused.
fn split(path: &str) -> Result<(RelPath, casket_model::EntryName)> {
    let mut parsed = path::parse(path)?;
    let name = parsed.pop().ok_or_else(|| VdirError::InvalidPath {
        path: path.to_owned(),
        reason: "the directory itself cannot be the target",
    })?;
    Ok((parsed, name))
}

/// The directory at `path`, every component followed, created where missing if `create`.
pub(crate) fn descend(stage: &mut Stage, root: NodeId, path: &str, create: bool) -> Result<NodeId> {
    let parsed = path::parse(path)?;
    stage.walk(root, root, &components(&parsed), create, &mut { MAX_LINKS })
}

/// Writes `file` at `path`, replacing a file, symlink or special file there.
pub(crate) fn write_file(stage: &mut Stage, root: NodeId, path: &str, file: StagedFile) -> Result<()> {
    let (parents, name) = split(path)?;
    let dir = stage.walk(root, root, &components(&parents), true, &mut { MAX_LINKS })?;
    match stage.lookup(dir, name.as_str())? {
        Some(Slot::Dir(_)) => {
            return Err(VdirError::IsADirectory {
                path: path.to_owned(),
            });
        }
        Some(_) => stage.remove(dir, &name)?,
        None => {}
    }
    stage.put(dir, name, Slot::File(file))
}

/// Removes the entry at `path`.
pub(crate) fn remove(stage: &mut Stage, root: NodeId, path: &str, recursive: bool) -> Result<()> {
    let (parents, name) = split(path)?;
    let dir = stage.walk(root, root, &components(&parents), false, &mut { MAX_LINKS })?;
    match stage.lookup(dir, name.as_str())? {
        None => Err(VdirError::NotFound {
            path: path.to_owned(),
        }),
        Some(Slot::Dir(id)) if !recursive && !stage.is_empty_dir(id)? => Err(VdirError::NotEmpty {
            path: path.to_owned(),
        }),
        Some(_) => stage.remove(dir, &name),
    }
}

/// Moves the entry at `from` to `to`.
pub(crate) fn rename(stage: &mut Stage, root: NodeId, from: &str, to: &str) -> Result<()> {
    let (from_parents, from_name) = split(from)?;
    let (to_parents, to_name) = split(to)?;
    let from_dir = stage.walk(root, root, &components(&from_parents), false, &mut { MAX_LINKS })?;
    let Some(slot) = stage.lookup(from_dir, from_name.as_str())? else {
        return Err(VdirError::NotFound {
            path: from.to_owned(),
        });
    };
    let to_dir = stage.walk(root, root, &components(&to_parents), false, &mut { MAX_LINKS })?;
    if stage.lookup(to_dir, to_name.as_str())?.is_some() {
        return Err(VdirError::Exists { path: to.to_owned() });
    }
    if let Slot::Dir(id) = slot
        && stage.contains(id, to_dir)
    {
        return Err(VdirError::IntoItself {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    stage.rename(from_dir, &from_name, to_dir, to_name)
}

/// The entries of `source` that an import takes (first half of an import).
pub(crate) fn select(
    source: &mut Snapshot,
    filter: &ImportFilter,
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<Vec<SourceEntry>> {
    import::select(&mut source.stage, source.root, filter, options, report)
}

/// Applies selected entries of `source` to `stage` below `root` (second half of an import).
pub(crate) fn import(
    stage: &mut Stage,
    root: NodeId,
    source: &Snapshot,
    entries: Vec<SourceEntry>,
    report: &mut ImportReport,
) -> Result<()> {
    stage.adopt_directories(&source.stage);
    import::apply(stage, root, &source.stage, entries, report)
}
