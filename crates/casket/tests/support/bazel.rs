//! Helpers shared by the Bazel tests (4.2.3 and 2.1.0): reading a build's process counts,
//! reporting its output, and making its output root removable.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The last lines of a command's output, for assertion messages.
pub(crate) fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Gives the owner write permission on every directory under `dir` (not following symlinks).
pub(crate) fn make_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut permissions = meta.permissions();
    permissions.set_mode(permissions.mode() | 0o700);
    let _ = fs::set_permissions(dir, permissions);
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        make_writable(&entry.path());
    }
}

/// The last `INFO: N processes: A internal, B local.` line of a build.
pub(crate) struct Processes {
    /// The line itself.
    pub(crate) line: String,
    total: u64,
    by_kind: BTreeMap<String, u64>,
}

impl Processes {
    pub(crate) fn parse(stderr: &str) -> Processes {
        let line = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("INFO: ") && l.contains(" processes"))
            .unwrap_or_else(|| panic!("no `INFO: N processes` line in:\n{stderr}"))
            .to_owned();
        let (total, kinds) = line["INFO: ".len()..]
            .split_once(" processes")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let total = total.parse().unwrap();
        let by_kind: BTreeMap<String, u64> = kinds
            .trim_start_matches(':')
            .trim_end_matches('.')
            .split(',')
            .filter(|kind| !kind.trim().is_empty())
            .map(|kind| {
                let (n, kind) = kind.trim().split_once(' ').unwrap();
                (kind.to_owned(), n.parse().unwrap())
            })
            .collect();
        assert_eq!(by_kind.values().sum::<u64>(), total, "{line}");
        Processes { line, total, by_kind }
    }

    pub(crate) fn count(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Processes that ran or were looked up in the cache: all but Bazel's internal ones.
    pub(crate) fn spawned(&self) -> u64 {
        self.total - self.count("internal")
    }
}
