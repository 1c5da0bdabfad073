//! Paths inside a virtual directory: validated components, joined with `/`.

use casket_model::EntryName;

use crate::error::{Result, VdirError};

/// A path relative to a directory, as validated components. Empty means the directory itself.
pub(crate) type RelPath = Vec<EntryName>;

/// Parses a path given to the API: components separated by `/`, a leading `/` and `.`
/// components ignored (`/` is the directory the call is made on), `..` refused.
pub(crate) fn parse(path: &str) -> Result<RelPath> {
    let invalid = |reason| VdirError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err(invalid("`..` is not allowed")),
            name => out.push(EntryName::new(name).map_err(|e| invalid(e.reason()))?),
        }
    }
    Ok(out)
}

/// The components of a symlink target, in order. `None` stands for `..`; `.` and empty
/// components are dropped. Returns whether the target is absolute.
pub(crate) fn target_components(target: &str) -> (bool, Vec<Option<&str>>) {
    let components = target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(|c| (c != "..").then_some(c))
        .collect();
    (target.starts_with('/'), components)
}

/// A path's components in the form [`crate::stage::Stage::walk`] takes.
pub(crate) fn components(path: &[EntryName]) -> Vec<Option<&str>> {
    path.iter().map(|n| Some(n.as_str())).collect()
}

/// Joins components with `/` (`.` for none).
pub(crate) fn display(path: &[EntryName]) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let mut out = String::new();
    for (i, name) in path.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(name.as_str());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(display(&parse("/a//b/./c/").unwrap()), "a/b/c");
        assert!(parse("").unwrap().is_empty());
        assert!(parse("a/../b").is_err());
        assert!(parse("a\0b").is_err());
    }

    #[test]
    fn symlink_targets() {
        assert_eq!(
            target_components("/usr/./lib//x"),
            (true, vec![Some("usr"), Some("lib"), Some("x")])
        );
        assert_eq!(target_components("../a/.."), (false, vec![None, Some("a"), None]));
    }
}
