//! Differential tests of casket's import against BuildStream 1.6.8's own import code (the
//! oracle `shared/oracle/bst_import.py`): every hand-made case of `shared/oracle/cases.py`,
//! every cell of its collision matrix and seeded random trees, through both backends (disk and
//! CAS, each as source and as destination). Trees are compared as REAPI sees them. Where casket
//! deliberately differs, each place is tied to a bug of `shared/notes/import-rules.md` §9 and
//! checked both ways: per case in [`DIVERGENCES`], by recogniser in [`GENERIC_DIVERGENCES`].
//!
//! Needs the peer buildstream1-oracle (`../shared` or `CASKET_SHARED`, and Debian's
//! python3-buildstream); skipped without it unless `CASKET_REQUIRE_PEERS=1`. More random cases:
//! `CASKET_ORACLE_CASES=5000`; one case: `CASKET_ORACLE_SEED=0x...` (as printed on failure).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, MemoryStore};
use casket_tree::CaptureOptions;
use casket_vdir::{
    CasDirectory, Directory, FileDirectory, ImportFilter, ImportOptions, ImportReport, Skipped, SpecialKind,
    VdirError,
};
use common::peers::{peer_available, shared_dir};
use futures::StreamExt;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// Random tree pairs compared per run (override with `CASKET_ORACLE_CASES`; with
/// `CASKET_ORACLE_SEED`, that many from that seed on, one by default).
const RANDOM_CASES: u64 = 300;

/// The seed of the first random case; case `i` uses `RANDOM_SEED + i` (run a single one with
/// `CASKET_ORACLE_SEED`).
const RANDOM_SEED: u64 = 0x5eed_ca5c_e7b5_0001;

/// Oracle processes at once per test.
const PARALLEL: usize = 2;

// ---------------------------------------------------------------------------------------------
// The expected divergences.

/// Which part of the outcome a divergence is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aspect {
    /// The result as REAPI sees it differs: success or failure, the tree (kinds, contents,
    /// executable bits, symlink targets) or the ignored entries.
    Outcome,
    /// Both fail, and BuildStream left DEST half-written (casket leaves it untouched).
    Partial,
    /// The trees agree as REAPI sees them; permission bits differ (REAPI does not carry them).
    Modes,
    /// The trees agree; the result lists (overwritten, written order) differ.
    Report,
}

type Runs = BTreeMap<String, Run>;
type Check = Result<(), String>;
type CheckFn = fn(&Runs) -> Check;
type Generic = (&'static str, &'static str, &'static str, fn(&Run) -> bool, u64);

/// Where casket deliberately differs from BuildStream 1.6.8: the case (or matrix cell), the bug
/// of import-rules.md §9, the aspect that differs, what casket does instead, and the check that
/// BuildStream still behaves so and casket does what is said. A difference that is not listed
/// fails the test, and so does a listed one that no longer differs.
const DIVERGENCES: &[(&str, &str, Aspect, &str, CheckFn)] = &[
    (
        "c01-listing-order",
        "B2",
        Aspect::Outcome,
        "absolute source targets stay verbatim: e -> /usr, g -> /nonexistent-bst-oracle",
        check_c01,
    ),
    (
        "c02-root-without-files",
        "B6",
        Aspect::Modes,
        "the root is never an entry: DEST's root keeps its mode (BuildStream chmods it to 0700)",
        check_c02,
    ),
    (
        "c06-absolute-symlink-targets",
        "B2",
        Aspect::Outcome,
        "every absolute target stays verbatim (BuildStream rewrites /../etc/passwd to the \
         escaping ../etc/passwd)",
        check_c06,
    ),
    (
        "c07-absolute-symlink-via-dest-dirlink",
        "B2",
        Aspect::Outcome,
        "usr/lib/libx.so -> /usr/lib/libx.so.1 verbatim, written through DEST lib -> usr/lib",
        check_c07,
    ),
    (
        "c08-dest-absolute-symlink",
        "B3",
        Aspect::Outcome,
        "DEST lib -> /usr/lib resolves inside DEST: usr/lib/foo written, no error",
        check_c08,
    ),
    (
        "c09-dest-relative-escape",
        "B4",
        Aspect::Outcome,
        "`..` clamps at the root: opt/escape-hatch -> ../../usr is DEST usr, usr/etc/org.conf \
         written",
        check_c09,
    ),
    (
        "c11-dangling-dir-symlink-explicit-list",
        "B10",
        Aspect::Outcome,
        "the dangling target is created without directory entries: same tree as c10",
        check_c11,
    ),
    (
        "c14-dir-modes-through-symlinks",
        "B8",
        Aspect::Modes,
        "never chmods: real2 (behind DEST e -> real2) keeps 0755 (BuildStream: 0700)",
        check_c14,
    ),
    (
        "c15-modes-and-mtimes",
        "B8",
        Aspect::Modes,
        "files are written 0644 or 0755 by their executable bit (no setuid, no 0600); new \
         directories get the default mode; existing emptydir keeps 0755",
        check_c15,
    ),
    (
        "c17-explicit-list-sorted-and-through-src-symlink",
        "B8",
        Aspect::Modes,
        "the directory link/ made for a path through a source symlink gets the default mode \
         (BuildStream: 0777)",
        check_c17,
    ),
    (
        "c18-explicit-list-missing",
        "B11",
        Aspect::Partial,
        "SourceMissing before anything is written: DEST unchanged (BuildStream leaves a and \
         missing/)",
        check_c18,
    ),
    (
        "c19-explicit-list-missing-ignored",
        "B11",
        Aspect::Outcome,
        "a missing listed path is reported in `missing` and creates nothing (BuildStream \
         creates its parent missing/ before it looks at the source)",
        check_c19,
    ),
    (
        "c21-dotdot-not-clamped",
        "B4",
        Aspect::Outcome,
        "a/up -> ../.. clamps at the root: etc/x written",
        check_c21,
    ),
    (
        "c23-fifo-in-source",
        "B12",
        Aspect::Outcome,
        "the FIFO is reported in `skipped`, a is written, no error",
        check_c23,
    ),
    (
        "c24-prefix-check-escape",
        "B1",
        Aspect::Outcome,
        "esc -> ../dest-evil resolves inside DEST: dest-evil/pwned inside DEST, nothing outside",
        check_c24,
    ),
    (
        "c25-explicit-list-nonempty-dir",
        "B8",
        Aspect::Modes,
        "the listed directory d is created with the default mode (BuildStream: 0700)",
        check_c25,
    ),
    (
        "c26-symlink-over-nonempty-dir-reported",
        "B9",
        Aspect::Report,
        "overwritten = [y, z] (the replaced symlink-to-dir and empty dir), ignored = [x]",
        check_c26,
    ),
    (
        "c27-order-listed",
        "B5",
        Aspect::Outcome,
        "one order for listings and lists: c27 gives c28's tree (b/ real with f, symlink b \
         ignored)",
        check_c27,
    ),
    (
        "c29-explicit-list-string-sort",
        "B5",
        Aspect::Report,
        "an explicit list is processed component by component: a/b before a-b",
        check_c29,
    ),
    (
        "c30-device-node",
        "B12",
        Aspect::Outcome,
        "the character device is reported in `skipped`; the DEST file null stays",
        check_c30,
    ),
    (
        "c31-overwritten-depends-on-host",
        "B3",
        Aspect::Report,
        "x -> /usr replaced and reported overwritten (BuildStream asks the host's /usr)",
        check_c31,
    ),
    (
        "matrix: empty dir x abs symlink->dir",
        "B3",
        Aspect::Outcome,
        "x -> /xd resolves to DEST xd: the directory merges, no error",
        check_matrix_empty_dir_abs,
    ),
    (
        "matrix: dir (x/inner) x abs symlink->dir",
        "B3",
        Aspect::Outcome,
        "x -> /xd resolves to DEST xd: xd/inner written, no error",
        check_matrix_dir_abs,
    ),
];

/// Divergences recognised in any case not in [`DIVERGENCES`] (random trees in particular):
/// what is recognised, the bug, what casket does instead, the recogniser, and the seed of a
/// random case it must recognise (always run, so that a recogniser cannot go stale).
const GENERIC_DIVERGENCES: &[Generic] = &[
    (
        "both fail, BuildStream half-way",
        "B11",
        "all or nothing: casket leaves DEST untouched (checked for every failure)",
        is_partial,
        0x5eed_ca5c_e7b5_000f,
    ),
    (
        "BuildStream's final chmod pass fails",
        "B8",
        "casket never chmods: a directory entry whose DEST path a later entry broke (by \
         replacing a symlink on the way) is no error; every entry applied as BuildStream did",
        is_chmod_failure,
        0x5eed_ca5c_e7b5_0054,
    ),
    (
        "BuildStream's final chmod pass makes a file executable",
        "B8",
        "casket never chmods: a file that replaced a directory which a directory entry reached \
         through a DEST symlink keeps its own executable bit",
        is_chmod_on_file,
        0x5eed_ca5c_e7b5_0dee,
    ),
    (
        "an entry's DEST location is a symlink on its own DEST path",
        "B3",
        "casket resolves the path once, in the tree, and replaces the symlink (DEST a -> ., \
         SRC file a/a: a becomes the file); BuildStream unlinks the symlink, then the host \
         cannot resolve the path it writes to (ENOENT)",
        is_own_path,
        0x5eed_ca5c_e7b5_0147,
    ),
    (
        "a relative DEST symlink climbs above the root",
        "B4",
        "casket clamps `..` at the root. Random links never climb above the root where the \
         source holds them, but do when written shallower through a DEST symlink (DEST d/a -> .)",
        is_escape,
        0x5eed_ca5c_e7b5_068e,
    ),
];

fn is_partial(run: &Run) -> bool {
    matches!(run.difference(), Some((Aspect::Partial, _)))
}

/// BuildStream applied every entry as casket did, then failed in its last pass, which chmods
/// the directory entries through DEST symlinks, at a directory that no longer resolves.
fn is_chmod_failure(run: &Run) -> bool {
    let Some((_, message)) = &run.oracle.error else {
        return false;
    };
    run.casket.is_ok()
        && run.oracle.tree == run.casket_tree
        && run
            .unresolvable_dirs
            .iter()
            .any(|dir| message.ends_with(&format!(": '<DEST>/{dir}'")))
}

/// The trees differ only in executable bits BuildStream set on files where directory entries of
/// the source lead (through DEST symlinks) after the import: its last pass chmods them 0755.
fn is_chmod_on_file(run: &Run) -> bool {
    let Ok(report) = &run.casket else {
        return false;
    };
    let (mut ours, mut theirs) = (report.ignored.clone(), run.oracle.ignored.clone());
    ours.sort();
    theirs.sort();
    let differ = changed_paths(&run.oracle.tree, &run.casket_tree);
    run.oracle.error.is_none()
        && ours == theirs
        && !differ.is_empty()
        && differ.iter().all(|path| {
            let (
                Some(Node::File {
                    executable: true,
                    sha256: a,
                }),
                Some(Node::File {
                    executable: false,
                    sha256: b,
                }),
            ) = (run.oracle.tree.get(path), run.casket_tree.get(path))
            else {
                return false;
            };
            a == b && run.dirs_on_files.contains(path)
        })
}

/// BuildStream fails with ENOENT creating an entry right after it ensured the entry's parent:
/// its `safe_remove` of the entry removed a symlink on the entry's own path (whose parent does
/// not resolve afterwards), which casket replaced.
fn is_own_path(run: &Run) -> bool {
    let (Some((_, message)), Ok(report)) = (&run.oracle.error, &run.casket) else {
        return false;
    };
    message.contains("[Errno 2] No such file or directory")
        && run.oracle_cut_entries.iter().any(|entry| {
            message.ends_with(&format!("'<DEST>/{entry}'")) && report.overwritten.contains(entry)
        })
}

/// BuildStream refuses a path whose real path is outside DEST while no symlink of either tree
/// is absolute: a relative one climbed above the root.
fn is_escape(run: &Run) -> bool {
    let Some((category, message)) = &run.oracle.error else {
        return false;
    };
    let absolute = |spec: &[Item]| {
        spec.iter()
            .any(|item| matches!(item, Item::Link { target, .. } if target.starts_with('/')))
    };
    run.casket.is_ok()
        && category == "outside-staging-area"
        && message
            .split_once("Real path: ")
            .is_some_and(|(_, real)| !real.starts_with("<DEST>"))
        && !absolute(&run.case.src)
        && !absolute(&run.case.dest)
}

/// Behaviour where casket and BuildStream agree, checked beyond the REAPI view.
const AGREEMENTS: &[(&str, &str, CheckFn)] = &[(
    "c16-hardlinks",
    "--link: DEST a and b are hard links of SRC a and b; a2 keeps the old content",
    check_c16,
)];

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn run<'a>(runs: &'a Runs, name: &str) -> Result<&'a Run, String> {
    runs.get(name).ok_or_else(|| format!("no run of {name}"))
}

fn node(tree: &Tree, path: &str) -> Option<Node> {
    tree.get(path).cloned()
}

fn link(target: &str) -> Option<Node> {
    Some(Node::Symlink(target.to_owned()))
}

/// Casket succeeded and changed exactly `paths` of DEST.
fn casket_changed<'a>(run: &'a Run, paths: &[&str]) -> Result<&'a ImportReport, String> {
    let report = run.report()?;
    let changed = changed_paths(&run.before, &run.casket_tree);
    ensure!(
        changed == paths,
        "casket changed {changed:?}, expected {paths:?}:\n{}",
        tree_diff(&run.before, &run.casket_tree)
    );
    Ok(report)
}

fn oracle_fails(run: &Run, category: &str) -> Check {
    match &run.oracle.error {
        Some((c, _)) if c == category => Ok(()),
        other => Err(format!("BuildStream should fail with {category}, got {other:?}")),
    }
}

fn verbatim_targets(run: &Run, links: &[(&str, &str)]) -> Check {
    ensure!(
        run.oracle.error.is_none(),
        "BuildStream failed: {:?}",
        run.oracle.error
    );
    run.report()?;
    let mut expected: Vec<&str> = links.iter().map(|(p, _)| *p).collect();
    expected.sort_unstable();
    let differ = changed_paths(&run.oracle.tree, &run.casket_tree);
    ensure!(
        differ == expected,
        "the trees differ at {differ:?}, expected {expected:?}"
    );
    for (path, target) in links {
        ensure!(
            node(&run.casket_tree, path) == link(target),
            "casket's {path} is {:?}, expected -> {target}",
            node(&run.casket_tree, path)
        );
        match node(&run.oracle.tree, path) {
            Some(Node::Symlink(t)) if !t.starts_with('/') => {}
            other => return Err(format!("BuildStream's {path} should be relative: {other:?}")),
        }
    }
    Ok(())
}

fn check_c01(runs: &Runs) -> Check {
    let run = run(runs, "c01-listing-order")?;
    verbatim_targets(run, &[("e", "/usr"), ("g", "/nonexistent-bst-oracle")])
}

fn check_c02(runs: &Runs) -> Check {
    let run = run(runs, "c02-root-without-files")?;
    run.report()?;
    ensure!(
        run.oracle.root_mode == 0o700,
        "BuildStream's root mode {:o}",
        run.oracle.root_mode
    );
    let (before, after) = (run.casket_raw_before[""].mode, run.casket_raw_after[""].mode);
    ensure!(
        before == 0o755 && after == before,
        "casket's root mode {before:o} -> {after:o}"
    );
    Ok(())
}

fn check_c06(runs: &Runs) -> Check {
    let run = run(runs, "c06-absolute-symlink-targets")?;
    verbatim_targets(
        run,
        &[
            ("bin", "/usr/bin"),
            ("root", "/"),
            ("trail", "/usr/lib/"),
            ("up", "/../etc/passwd"),
            ("usr/dots", "/usr/./lib/../lib//libx.so.1"),
            ("usr/lib/libx.so", "/usr/lib/libx.so.1"),
        ],
    )?;
    ensure!(
        node(&run.oracle.tree, "up") == link("../etc/passwd"),
        "BuildStream no longer makes up escape"
    );
    Ok(())
}

fn check_c07(runs: &Runs) -> Check {
    let run = run(runs, "c07-absolute-symlink-via-dest-dirlink")?;
    verbatim_targets(run, &[("usr/lib/libx.so", "/usr/lib/libx.so.1")])?;
    ensure!(
        node(&run.casket_tree, "lib") == link("usr/lib"),
        "DEST lib changed"
    );
    Ok(())
}

fn check_c08(runs: &Runs) -> Check {
    let run = run(runs, "c08-dest-absolute-symlink")?;
    oracle_fails(run, "outside-staging-area")?;
    casket_changed(run, &["usr/lib/foo"])?;
    Ok(())
}

fn check_c09(runs: &Runs) -> Check {
    let run = run(runs, "c09-dest-relative-escape")?;
    oracle_fails(run, "outside-staging-area")?;
    casket_changed(run, &["usr", "usr/etc", "usr/etc/org.conf"])?;
    ensure!(
        node(&run.casket_tree, "opt/escape-hatch") == link("../../usr"),
        "link changed"
    );
    Ok(())
}

fn check_c11(runs: &Runs) -> Check {
    let run11 = run(runs, "c11-dangling-dir-symlink-explicit-list")?;
    let run10 = run(runs, "c10-dangling-dir-symlink")?;
    oracle_fails(run11, "os-error")?;
    run11.report()?;
    ensure!(
        run11.casket_tree == run10.oracle.tree && run10.casket_tree == run10.oracle.tree,
        "casket's c11 differs from c10:\n{}",
        tree_diff(&run10.oracle.tree, &run11.casket_tree)
    );
    Ok(())
}

fn check_c14(runs: &Runs) -> Check {
    let run = run(runs, "c14-dir-modes-through-symlinks")?;
    run.report()?;
    ensure!(
        run.oracle.modes.get("real2") == Some(&0o700),
        "BuildStream's real2 mode"
    );
    let mode = run.casket_raw_after["real2"].mode;
    ensure!(mode == 0o755, "casket chmodded real2 to {mode:o}");
    Ok(())
}

fn check_c15(runs: &Runs) -> Check {
    let run = run(runs, "c15-modes-and-mtimes")?;
    run.report()?;
    for (path, mode) in [
        ("bin/su", 0o4755),
        ("etc/secret", 0o600),
        ("newdir", 0o750),
        ("bin", 0o700),
        ("emptydir", 0o711),
    ] {
        ensure!(
            run.oracle.modes.get(path) == Some(&mode),
            "BuildStream's {path} mode"
        );
    }
    for (path, raw) in &run.casket_raw_after {
        let expected = match raw.kind {
            'd' if run.casket_raw_before.contains_key(path) => run.casket_raw_before[path].mode,
            'd' => run.fresh_dir_mode,
            'f' if raw.mode & 0o100 != 0 => 0o755,
            'f' => 0o644,
            _ => raw.mode,
        };
        ensure!(
            raw.mode == expected,
            "casket's {path:?} has mode {:o}, expected {expected:o}",
            raw.mode
        );
    }
    Ok(())
}

fn check_c17(runs: &Runs) -> Check {
    let run = run(runs, "c17-explicit-list-sorted-and-through-src-symlink")?;
    run.report()?;
    ensure!(
        run.oracle.modes.get("link") == Some(&0o777),
        "BuildStream's link mode"
    );
    let mode = run.casket_raw_after["link"].mode;
    ensure!(mode == run.fresh_dir_mode, "casket's link mode {mode:o}");
    Ok(())
}

fn check_c18(runs: &Runs) -> Check {
    let run = run(runs, "c18-explicit-list-missing")?;
    oracle_fails(run, "source-missing")?;
    let oracle_changed = changed_paths(&run.before, &run.oracle.tree);
    ensure!(
        oracle_changed == ["a", "missing"],
        "BuildStream changed {oracle_changed:?}"
    );
    match &run.casket {
        Err(VdirError::SourceMissing { path }) if path == "missing/file" => Ok(()),
        other => Err(format!("casket should fail with SourceMissing: {other:?}")),
    }
}

fn check_c19(runs: &Runs) -> Check {
    let run = run(runs, "c19-explicit-list-missing-ignored")?;
    ensure!(run.oracle.error.is_none(), "BuildStream failed");
    let report = casket_changed(run, &["a"])?;
    ensure!(
        report.missing == ["missing/file"],
        "missing: {:?}",
        report.missing
    );
    ensure!(report.written == ["a"], "written: {:?}", report.written);
    let differ = changed_paths(&run.oracle.tree, &run.casket_tree);
    ensure!(differ == ["missing"], "the trees differ at {differ:?}");
    Ok(())
}

fn check_c21(runs: &Runs) -> Check {
    let run = run(runs, "c21-dotdot-not-clamped")?;
    oracle_fails(run, "outside-staging-area")?;
    casket_changed(run, &["etc", "etc/x"])?;
    ensure!(node(&run.casket_tree, "a/up") == link("../.."), "link changed");
    Ok(())
}

fn check_c23(runs: &Runs) -> Check {
    let run = run(runs, "c23-fifo-in-source")?;
    oracle_fails(run, "unsupported-type")?;
    let report = casket_changed(run, &["a"])?;
    let fifo = Skipped {
        path: "fifo".into(),
        kind: SpecialKind::Fifo,
    };
    ensure!(report.skipped == [fifo], "skipped: {:?}", report.skipped);
    ensure!(report.written == ["a"], "written: {:?}", report.written);
    Ok(())
}

fn check_c24(runs: &Runs) -> Check {
    let run = run(runs, "c24-prefix-check-escape")?;
    ensure!(run.oracle.error.is_none(), "BuildStream failed");
    ensure!(run.oracle.tree == run.before, "BuildStream wrote inside DEST");
    ensure!(
        run.oracle_outside == ["pwned"],
        "BuildStream's dest-evil: {:?}",
        run.oracle_outside
    );
    ensure!(
        run.casket_outside.is_empty(),
        "casket wrote outside DEST: {:?}",
        run.casket_outside
    );
    casket_changed(run, &["dest-evil", "dest-evil/pwned"])?;
    Ok(())
}

fn check_c25(runs: &Runs) -> Check {
    let run = run(runs, "c25-explicit-list-nonempty-dir")?;
    casket_changed(run, &["d"])?;
    ensure!(run.oracle.modes.get("d") == Some(&0o700), "BuildStream's d mode");
    let mode = run.casket_raw_after["d"].mode;
    ensure!(mode == run.fresh_dir_mode, "casket's d mode {mode:o}");
    Ok(())
}

fn check_c26(runs: &Runs) -> Check {
    let run = run(runs, "c26-symlink-over-nonempty-dir-reported")?;
    let report = run.report()?;
    ensure!(
        run.oracle.ignored == ["x"] && run.oracle.overwritten.is_empty(),
        "BuildStream: ignored {:?}, overwritten {:?}",
        run.oracle.ignored,
        run.oracle.overwritten
    );
    ensure!(report.ignored == ["x"], "casket ignored {:?}", report.ignored);
    ensure!(
        report.overwritten == ["y", "z"],
        "casket overwrote {:?}",
        report.overwritten
    );
    Ok(())
}

fn check_c27(runs: &Runs) -> Check {
    let run27 = run(runs, "c27-order-listed")?;
    let run28 = run(runs, "c28-order-explicit-sorted")?;
    ensure!(
        run27.oracle.tree != run28.oracle.tree,
        "BuildStream's c27 and c28 agree"
    );
    let report = run27.report()?;
    ensure!(
        run27.casket_tree == run28.casket_tree && run27.casket_tree == run28.oracle.tree,
        "casket's c27 differs from c28:\n{}",
        tree_diff(&run28.oracle.tree, &run27.casket_tree)
    );
    ensure!(report.ignored == ["b"], "casket ignored {:?}", report.ignored);
    Ok(())
}

fn check_c29(runs: &Runs) -> Check {
    let run = run(runs, "c29-explicit-list-string-sort")?;
    let report = run.report()?;
    ensure!(
        run.oracle.files_written == ["a-b", "a.b", "a/b", "a0"],
        "BuildStream's order"
    );
    ensure!(
        report.written == ["a/b", "a-b", "a.b", "a0"],
        "casket's order: {:?}",
        report.written
    );
    Ok(())
}

fn check_c30(runs: &Runs) -> Check {
    let run = run(runs, "c30-device-node")?;
    ensure!(
        node(&run.oracle.tree, "null") == Some(Node::Other("chardev".into())),
        "BuildStream"
    );
    let report = casket_changed(run, &[])?;
    let null = Skipped {
        path: "null".into(),
        kind: SpecialKind::CharDevice,
    };
    ensure!(report.skipped == [null], "skipped: {:?}", report.skipped);
    Ok(())
}

fn check_c31(runs: &Runs) -> Check {
    let run = run(runs, "c31-overwritten-depends-on-host")?;
    let report = run.report()?;
    ensure!(
        run.oracle.overwritten.is_empty(),
        "BuildStream: {:?}",
        run.oracle.overwritten
    );
    ensure!(
        report.overwritten == ["x"],
        "casket overwrote {:?}",
        report.overwritten
    );
    Ok(())
}

fn check_matrix_empty_dir_abs(runs: &Runs) -> Check {
    let run = run(runs, "matrix: empty dir x abs symlink->dir")?;
    oracle_fails(run, "outside-staging-area")?;
    casket_changed(run, &["0"])?;
    Ok(())
}

fn check_matrix_dir_abs(runs: &Runs) -> Check {
    let run = run(runs, "matrix: dir (x/inner) x abs symlink->dir")?;
    oracle_fails(run, "outside-staging-area")?;
    casket_changed(run, &["0", "xd/inner"])?;
    Ok(())
}

fn check_c16(runs: &Runs) -> Check {
    let run = run(runs, "c16-hardlinks")?;
    casket_changed(run, &["a", "b"])?;
    for name in ["a", "b"] {
        let (dest, src) = (&run.casket_raw_after[name], &run.src_raw[name]);
        ensure!(
            dest.ino == src.ino,
            "casket's {name} is not a hard link of the source"
        );
    }
    ensure!(run.casket_raw_after["a2"].data == b"old a", "a2 changed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Trees: specifications, building, describing.

/// One item of a tree specification, as `cases.py` writes them.
#[derive(Clone, Debug)]
enum Item {
    File {
        path: String,
        content: String,
        mode: u32,
        mtime: Option<u64>,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Link {
        path: String,
        target: String,
    },
    Fifo {
        path: String,
    },
    CharDev {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
}

impl Item {
    fn from_json(value: &Value) -> Item {
        let a = value.as_array().unwrap();
        let text = |i: usize| a[i].as_str().unwrap().to_owned();
        let num = |i: usize| u32::try_from(a[i].as_u64().unwrap()).unwrap();
        match a[0].as_str().unwrap() {
            "f" => Item::File {
                path: text(1),
                content: text(2),
                mode: num(3),
                mtime: a[4].as_u64(),
            },
            "d" => Item::Dir {
                path: text(1),
                mode: num(2),
            },
            "l" => Item::Link {
                path: text(1),
                target: text(2),
            },
            "p" => Item::Fifo { path: text(1) },
            "n" => Item::CharDev {
                path: text(1),
                major: num(2),
                minor: num(3),
                mode: num(4),
            },
            other => panic!("unknown tree item {other:?} in cases.py"),
        }
    }

    fn path(&self) -> &str {
        match self {
            Item::File { path, .. }
            | Item::Dir { path, .. }
            | Item::Link { path, .. }
            | Item::Fifo { path }
            | Item::CharDev { path, .. } => path,
        }
    }

    /// Whether a Merkle tree can hold it (capture refuses FIFOs and devices).
    fn representable(&self) -> bool {
        !matches!(self, Item::Fifo { .. } | Item::CharDev { .. })
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::File {
                path, content, mode, ..
            } => write!(f, "{path} file {mode:04o} {content:?}"),
            Item::Dir { path, .. } => write!(f, "{path}/"),
            Item::Link { path, target } => write!(f, "{path} -> {target}"),
            Item::Fifo { path } => write!(f, "{path} fifo"),
            Item::CharDev { path, .. } => write!(f, "{path} chardev"),
        }
    }
}

fn show_spec(spec: &[Item]) -> String {
    if spec.is_empty() {
        return "    (empty)\n".into();
    }
    spec.iter().map(|item| format!("    {item}\n")).collect()
}

fn depth(rel: &str) -> usize {
    rel.split('/').filter(|c| !c.is_empty() && *c != ".").count()
}

/// Builds `spec` below `root` like `cases.py`'s `build()`: directory modes last, deepest first.
fn build(root: &Path, spec: &[Item]) {
    fs::create_dir_all(root).unwrap();
    let mut dir_modes = Vec::new();
    for item in spec {
        let path = root.join(item.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        match item {
            Item::File {
                content, mode, mtime, ..
            } => {
                fs::write(&path, content).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                if let Some(secs) = mtime {
                    let file = fs::File::options().write(true).open(&path).unwrap();
                    file.set_modified(UNIX_EPOCH + Duration::from_secs(*secs))
                        .unwrap();
                }
            }
            Item::Dir { path: rel, mode } => {
                fs::create_dir_all(&path).unwrap();
                dir_modes.push((depth(rel), path, *mode));
            }
            Item::Link { target, .. } => std::os::unix::fs::symlink(target, &path).unwrap(),
            Item::Fifo { .. } => rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o644),
                0,
            )
            .unwrap(),
            Item::CharDev {
                major, minor, mode, ..
            } => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(*mode),
                    rustix::fs::makedev(*major, *minor),
                )
                .unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }
    dir_modes.sort_by_key(|(depth, _, _)| std::cmp::Reverse(*depth));
    for (_, path, mode) in dir_modes {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// An entry as REAPI sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File {
        executable: bool,
        sha256: String,
    },
    Symlink(String),
    /// FIFO, socket, device: REAPI has no such node.
    Other(String),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Dir => f.write_str("dir"),
            Node::File { executable, sha256 } => {
                write!(f, "file{} {}", if *executable { " +x" } else { "" }, &sha256[..8])
            }
            Node::Symlink(target) => write!(f, "symlink -> {target}"),
            Node::Other(kind) => f.write_str(kind),
        }
    }
}

/// Everything below a root, by path (components joined with `/`).
type Tree = BTreeMap<String, Node>;

/// An entry as the disk holds it, for "byte-for-byte unchanged".
#[derive(Clone, Debug, PartialEq, Eq)]
struct Raw {
    kind: char,
    mode: u32,
    data: Vec<u8>,
    ino: u64,
    rdev: u64,
    mtime: (i64, i64),
}

/// Every entry below `root` (not following symlinks), parents first, plus the root as `""`.
fn walk(root: &Path) -> Vec<(String, fs::Metadata)> {
    fn into(root: &Path, rel: &str, out: &mut Vec<(String, fs::Metadata)>) {
        let dir = if rel.is_empty() {
            root.to_owned()
        } else {
            root.join(rel)
        };
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(root.join(&rel)).unwrap();
            let is_dir = meta.is_dir();
            out.push((rel.clone(), meta));
            if is_dir {
                into(root, &rel, out);
            }
        }
    }
    let mut out = vec![(String::new(), fs::symlink_metadata(root).unwrap())];
    into(root, "", &mut out);
    out
}

fn kind_name(kind: fs::FileType) -> &'static str {
    if kind.is_dir() {
        "dir"
    } else if kind.is_file() {
        "file"
    } else if kind.is_symlink() {
        "symlink"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_char_device() {
        "chardev"
    } else if kind.is_block_device() {
        "blockdev"
    } else {
        "socket"
    }
}

fn describe(root: &Path) -> Tree {
    walk(root)
        .into_iter()
        .skip(1)
        .map(|(rel, meta)| {
            let path = root.join(&rel);
            let kind = meta.file_type();
            let node = if kind.is_dir() {
                Node::Dir
            } else if kind.is_file() {
                Node::File {
                    executable: meta.mode() & 0o100 != 0,
                    sha256: Digest::of(DigestFunction::Sha256, &fs::read(&path).unwrap()).hash_hex(),
                }
            } else if kind.is_symlink() {
                Node::Symlink(
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_string()
                        .unwrap(),
                )
            } else {
                Node::Other(kind_name(kind).into())
            };
            (rel, node)
        })
        .collect()
}

fn raw(root: &Path) -> BTreeMap<String, Raw> {
    walk(root)
        .into_iter()
        .map(|(rel, meta)| {
            let path = root.join(&rel);
            let kind = meta.file_type();
            let data = if kind.is_file() {
                fs::read(&path).unwrap()
            } else if kind.is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            let raw = Raw {
                kind: kind_name(kind).chars().next().unwrap(),
                mode: meta.mode() & 0o7777,
                data,
                ino: meta.ino(),
                rdev: meta.rdev(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
            };
            (rel, raw)
        })
        .collect()
}

/// The paths where two trees differ, sorted.
fn changed_paths(a: &Tree, b: &Tree) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// A readable diff from `a` to `b`.
fn tree_diff(a: &Tree, b: &Tree) -> String {
    let mut out = String::new();
    for path in changed_paths(a, b) {
        match (a.get(&path), b.get(&path)) {
            (None, Some(n)) => writeln!(out, "      + {path}: {n}"),
            (Some(o), None) => writeln!(out, "      - {path}: {o}"),
            (Some(o), Some(n)) => writeln!(out, "      ~ {path}: {o} => {n}"),
            (None, None) => unreachable!(),
        }
        .unwrap();
    }
    out
}

fn show_tree(tree: &Tree) -> String {
    if tree.is_empty() {
        return "    (empty)\n".into();
    }
    tree.iter().map(|(p, n)| format!("    {p}: {n}\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// Running one case through the oracle and casket.

/// A pre/post hook of `cases.py`, implemented here by case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    None,
    /// c16: `dest/a2` is a hard link of `dest/a` before the import.
    HardLinkA2,
    /// c24: `<run>/dest-evil` exists beside DEST; afterwards its listing is the post result.
    DestEvil,
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    src: Vec<Item>,
    dest: Vec<Item>,
    /// The explicit list (hand cases), given to both.
    files: Option<Vec<String>>,
    /// Random trees: casket imports everything, the oracle gets casket's listing as its list.
    casket_order: bool,
    link: bool,
    ignore_missing: bool,
    hook: Hook,
    /// Random trees: the seed, for messages.
    seed: Option<u64>,
}

struct OracleOut {
    /// Category and message.
    error: Option<(String, String)>,
    overwritten: Vec<String>,
    ignored: Vec<String>,
    files_written: Vec<String>,
    root_mode: u32,
    tree: Tree,
    modes: BTreeMap<String, u32>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn octal(value: &Value) -> u32 {
    u32::from_str_radix(value.as_str().unwrap(), 8).unwrap()
}

fn run_oracle(script: &Path, src: &Path, dest: &Path, files: Option<&Path>, case: &Case) -> OracleOut {
    let mut command = Command::new(PYTHON);
    command.arg(script).arg(src).arg(dest);
    if let Some(files) = files {
        command.arg("--files-from").arg(files);
    }
    if case.link {
        command.arg("--link");
    }
    if case.ignore_missing {
        command.arg("--ignore-missing");
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}: the oracle crashed ({}): {}",
        case.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = v["error"].as_object().map(|e| {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        (text("category"), text("message"))
    });
    let mut tree = Tree::new();
    let mut modes = BTreeMap::new();
    for entry in v["tree"].as_array().unwrap() {
        let path = entry["path"].as_str().unwrap().to_owned();
        let node = match entry["kind"].as_str().unwrap() {
            "dir" => Node::Dir,
            "file" => Node::File {
                executable: entry["executable"].as_bool().unwrap(),
                sha256: entry["sha256"].as_str().unwrap().to_owned(),
            },
            "symlink" => Node::Symlink(entry["target"].as_str().unwrap().to_owned()),
            other => Node::Other(other.to_owned()),
        };
        if !entry["mode"].is_null() {
            modes.insert(path.clone(), octal(&entry["mode"]));
        }
        tree.insert(path, node);
    }
    OracleOut {
        error,
        overwritten: strings(&v["overwritten"]),
        ignored: strings(&v["ignored"]),
        files_written: strings(&v["files_written"]),
        root_mode: octal(&v["root_mode"]),
        tree,
        modes,
    }
}

/// Everything one case produced.
struct Run {
    case: Case,
    /// DEST before the import, as REAPI sees it.
    before: Tree,
    oracle: OracleOut,
    /// casket's import with the file backend, source and destination on disk.
    casket: Result<ImportReport, VdirError>,
    casket_tree: Tree,
    casket_raw_before: BTreeMap<String, Raw>,
    casket_raw_after: BTreeMap<String, Raw>,
    src_raw: BTreeMap<String, Raw>,
    /// c24: what is in `dest-evil` beside DEST afterwards.
    oracle_outside: Vec<String>,
    casket_outside: Vec<String>,
    /// The mode a directory created now gets (the umask applied to 0777).
    fresh_dir_mode: u32,
    /// Directories of the source that do not lead to a directory in casket's result.
    unresolvable_dirs: Vec<String>,
    /// The files of casket's result where directories of the source lead (through symlinks).
    dirs_on_files: Vec<String>,
    /// Files and symlinks of the source whose parent does not lead to a directory in
    /// BuildStream's result.
    oracle_cut_entries: Vec<String>,
    /// Disagreements between casket's backends, and anything else wrong that is not a
    /// difference from BuildStream.
    problems: Vec<String>,
}

impl Run {
    fn report(&self) -> Result<&ImportReport, String> {
        self.casket.as_ref().map_err(|e| format!("casket failed: {e}"))
    }

    /// How casket's outcome differs from BuildStream's, if it does.
    fn difference(&self) -> Option<(Aspect, String)> {
        match (&self.oracle.error, &self.casket) {
            (None, Ok(report)) => {
                let mut text = String::new();
                if self.oracle.tree != self.casket_tree {
                    writeln!(text, "    trees differ (BuildStream => casket):").unwrap();
                    text += &tree_diff(&self.oracle.tree, &self.casket_tree);
                }
                let (mut ours, mut theirs) = (report.ignored.clone(), self.oracle.ignored.clone());
                ours.sort();
                theirs.sort();
                if ours != theirs {
                    writeln!(text, "    ignored: BuildStream {theirs:?}, casket {ours:?}").unwrap();
                }
                (!text.is_empty()).then_some((Aspect::Outcome, text))
            }
            (Some((category, message)), Ok(_)) => Some((
                Aspect::Outcome,
                format!(
                    "    BuildStream fails ({category}: {}), casket succeeds; casket's changes:\n{}",
                    message.lines().next().unwrap_or_default(),
                    tree_diff(&self.before, &self.casket_tree)
                ),
            )),
            (None, Err(e)) => Some((
                Aspect::Outcome,
                format!(
                    "    BuildStream succeeds, casket fails ({e}); BuildStream's changes:\n{}",
                    tree_diff(&self.before, &self.oracle.tree)
                ),
            )),
            (Some((category, _)), Err(e)) => (self.oracle.tree != self.before).then(|| {
                (
                    Aspect::Partial,
                    format!(
                        "    both fail (BuildStream {category}, casket {e}); BuildStream left:\n{}",
                        tree_diff(&self.before, &self.oracle.tree)
                    ),
                )
            }),
        }
    }

    /// The case, both trees and the difference, for a failure message.
    fn explain(&self) -> String {
        let mut text = String::new();
        if let Some(seed) = self.case.seed {
            writeln!(
                text,
                "  seed {seed:#x} (rerun alone with CASKET_ORACLE_SEED={seed:#x})"
            )
            .unwrap();
        }
        write!(
            text,
            "  SRC:\n{}  DEST:\n{}",
            show_spec(&self.case.src),
            show_spec(&self.case.dest)
        )
        .unwrap();
        match &self.oracle.error {
            None => write!(text, "  BuildStream's result:\n{}", show_tree(&self.oracle.tree)).unwrap(),
            Some((c, m)) => writeln!(text, "  BuildStream fails: {c}: {m}").unwrap(),
        }
        match &self.casket {
            Ok(report) => write!(
                text,
                "  casket's result ({report:?}):\n{}",
                show_tree(&self.casket_tree)
            )
            .unwrap(),
            Err(e) => writeln!(text, "  casket fails: {e}").unwrap(),
        }
        text
    }
}

fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Builds DEST (and what its hooks add) at `<parent>/dest`.
fn build_dest(parent: &Path, case: &Case) -> PathBuf {
    let dest = parent.join("dest");
    build(&dest, &case.dest);
    match case.hook {
        Hook::None => {}
        Hook::HardLinkA2 => fs::hard_link(dest.join("a"), dest.join("a2")).unwrap(),
        Hook::DestEvil => fs::create_dir(parent.join("dest-evil")).unwrap(),
    }
    dest
}

async fn capture(store: &Arc<dyn BlobStore>, path: &Path) -> Digest {
    casket_tree::capture(store.as_ref(), path, &CaptureOptions::default(), &())
        .await
        .unwrap()
        .root
}

/// Imports `source` into a CAS copy of the tree `dest`; the result and the digest afterwards.
async fn cas_import(
    store: &Arc<dyn BlobStore>,
    dest: &Digest,
    source: &dyn Directory,
    filter: &ImportFilter,
    options: &ImportOptions,
) -> (Result<ImportReport, VdirError>, Digest) {
    let target = CasDirectory::open(store.clone(), dest).await.unwrap();
    let result = target.import_files(source, filter, options).await;
    (result, target.digest().await.unwrap())
}

async fn run_case(script: PathBuf, case: Case) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build(&src, &case.src);
    let parents = ["oracle", "casket", "fromcas"].map(|p| tmp.path().join(p));
    let [oracle_dest, casket_dest, fromcas_dest] = parents.clone().map(|p| build_dest(&p, &case));
    let fresh = tmp.path().join("fresh");
    fs::create_dir(&fresh).unwrap();
    let fresh_dir_mode = fs::metadata(&fresh).unwrap().mode() & 0o7777;
    let before = describe(&casket_dest);
    let casket_raw_before = raw(&casket_dest);
    let fromcas_raw_before = raw(&fromcas_dest);
    let src_raw = raw(&src);

    let source = FileDirectory::open(&src).unwrap();
    let files = match (&case.files, case.casket_order) {
        (Some(files), _) => Some(files.clone()),
        (None, true) => Some(source.list_relative_paths().await.unwrap()),
        (None, false) => None,
    };
    let list_path = tmp.path().join("files.txt");
    if let Some(files) = &files {
        let mut text = files.join("\n");
        text.push('\n');
        fs::write(&list_path, text).unwrap();
    }
    let filter = match (&case.files, &files) {
        (Some(_), Some(files)) => ImportFilter::Paths(files.clone()),
        _ => ImportFilter::All,
    };
    let options = ImportOptions {
        ignore_missing: case.ignore_missing,
        link: case.link,
    };

    let oracle = {
        let (case, src, dest) = (case.clone(), src.clone(), oracle_dest.clone());
        let list = files.is_some().then_some(list_path.clone());
        tokio::task::spawn_blocking(move || run_oracle(&script, &src, &dest, list.as_deref(), &case))
            .await
            .unwrap()
    };

    let oracle_cut_entries = src_raw
        .iter()
        .filter(|(rel, raw)| raw.kind != 'd' && rel.contains('/'))
        .filter(|(rel, _)| {
            let parent = Path::new(rel.as_str()).parent().unwrap();
            !fs::metadata(oracle_dest.join(parent)).is_ok_and(|m| m.is_dir())
        })
        .map(|(rel, _)| rel.clone())
        .collect();

    // CAS copies of the source (when a tree can hold it) and of DEST, before anything changes.
    let store: Arc<dyn BlobStore> = Arc::new(MemoryStore::new());
    let dest_digest = capture(&store, &casket_dest).await;
    let representable = case.src.iter().all(Item::representable);
    let src_digest = if representable {
        Some(capture(&store, &src).await)
    } else {
        None
    };

    let casket = FileDirectory::open(&casket_dest)
        .unwrap()
        .import_files(&source, &filter, &options)
        .await;
    let casket_tree = describe(&casket_dest);
    let casket_raw_after = raw(&casket_dest);
    let unresolvable_dirs = src_raw
        .iter()
        .filter(|(rel, raw)| raw.kind == 'd' && !rel.is_empty())
        .filter(|(rel, _)| !fs::metadata(casket_dest.join(rel)).is_ok_and(|m| m.is_dir()))
        .map(|(rel, _)| rel.clone())
        .collect();
    let real_dest = fs::canonicalize(&casket_dest).unwrap();
    let dirs_on_files = src_raw
        .iter()
        .filter(|(rel, raw)| raw.kind == 'd' && !rel.is_empty())
        .filter_map(|(rel, _)| {
            let real = fs::canonicalize(casket_dest.join(rel)).ok()?;
            let inside = real.strip_prefix(&real_dest).ok()?.to_str()?.to_owned();
            fs::symlink_metadata(&real).ok()?.is_file().then_some(inside)
        })
        .collect();

    let mut problems = Vec::new();
    let mut more = Vec::new();
    let expected_digest = match &casket {
        Ok(_) => capture(&store, &casket_dest).await,
        Err(_) => {
            if casket_raw_after != casket_raw_before {
                problems.push(format!(
                    "the file backend failed ({}) but changed DEST:\n{}",
                    casket.as_ref().unwrap_err(),
                    tree_diff(&before, &casket_tree)
                ));
            }
            dest_digest
        }
    };
    let mut agree = |what: &str,
                     result: &Result<ImportReport, VdirError>,
                     digest: Option<Digest>,
                     tree: Option<&Tree>| {
        match (&casket, result) {
            (Ok(a), Ok(b)) if a != b => problems.push(format!(
                "{what}: the report differs from the file backend's: {b:?} vs {a:?}"
            )),
            (Ok(_), Err(e)) => problems.push(format!("{what} fails ({e}), the file backend does not")),
            (Err(e), Ok(_)) => problems.push(format!("{what} succeeds, the file backend fails ({e})")),
            _ => {}
        }
        if let Some(digest) = digest
            && digest != expected_digest
        {
            problems.push(format!("{what}: the tree differs from the file backend's"));
        }
        if let Some(tree) = tree
            && *tree != casket_tree
        {
            problems.push(format!(
                "{what}: the tree differs from the file backend's:\n{}",
                tree_diff(&casket_tree, tree)
            ));
        }
    };

    // CAS destination, source on disk (always possible).
    let (result, digest) = cas_import(&store, &dest_digest, &source, &filter, &options).await;
    agree("CAS import from disk", &result, Some(digest), None);

    if let Some(src_digest) = src_digest {
        let cas_source = CasDirectory::open(store.clone(), &src_digest).await.unwrap();
        // CAS to CAS.
        let (result, digest) = cas_import(&store, &dest_digest, &cas_source, &filter, &options).await;
        agree("CAS import from CAS", &result, Some(digest), None);
        // Random trees: the explicit list of every path gives the same as everything.
        if let (true, Some(files)) = (case.casket_order, &files) {
            let paths = ImportFilter::Paths(files.clone());
            let (result, digest) = cas_import(&store, &dest_digest, &cas_source, &paths, &options).await;
            agree(
                "CAS import from CAS of the listed paths",
                &result,
                Some(digest),
                None,
            );
        }
        // Disk destination, CAS source.
        let result = FileDirectory::open(&fromcas_dest)
            .unwrap()
            .import_files(&cas_source, &filter, &options)
            .await;
        let tree = describe(&fromcas_dest);
        if result.is_err() && raw(&fromcas_dest) != fromcas_raw_before {
            more.push("import from CAS to disk failed but changed DEST".to_owned());
        }
        agree("import from CAS to disk", &result, None, Some(&tree));
    }

    problems.extend(more);
    let outside = |parent: &Path| match case.hook {
        Hook::DestEvil => list_dir(&parent.join("dest-evil")),
        _ => Vec::new(),
    };
    Run {
        oracle_outside: outside(&parents[0]),
        casket_outside: outside(&parents[1]),
        case,
        before,
        oracle,
        casket,
        casket_tree,
        casket_raw_before,
        casket_raw_after,
        src_raw,
        fresh_dir_mode,
        unresolvable_dirs,
        dirs_on_files,
        oracle_cut_entries,
        problems,
    }
}

async fn run_all(script: &Path, cases: Vec<Case>) -> Runs {
    futures::stream::iter(cases)
        .map(|case| run_case(script.to_owned(), case))
        .buffer_unordered(PARALLEL)
        .map(|run| (run.case.name.clone(), run))
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// The peer, and the cases of cases.py.

/// The oracle script, or `None` (after saying so) when the test is to be skipped.
fn oracle_script() -> Option<PathBuf> {
    let script = shared_dir().join("oracle/bst_import.py");
    let problem = if !script.is_file() {
        Some(format!(
            "{} not found; it is in the shared folder (../shared beside the project, or \
             CASKET_SHARED)",
            script.display()
        ))
    } else {
        match Command::new(PYTHON).args(["-c", "import buildstream"]).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`{PYTHON} -c 'import buildstream'` failed: {}; it needs Debian's \
                 python3-buildstream (apt-get install python3-buildstream)",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run {PYTHON}: {e}")),
        }
    };
    peer_available("buildstream1-oracle", problem).then_some(script)
}

struct HandCases {
    cases: Vec<Case>,
    /// Cases of cases.py not run here, with the reason.
    skipped: Vec<(String, &'static str)>,
}

fn hand_cases() -> HandCases {
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle_cases.py");
    let out = Command::new(PYTHON)
        .arg(helper)
        .arg(shared_dir().join("oracle"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oracle_cases.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let spec = |v: &Value| -> Vec<Item> { v.as_array().unwrap().iter().map(Item::from_json).collect() };
    let probe = tempfile::NamedTempFile::new().unwrap();
    let root = probe.as_file().metadata().unwrap().uid() == 0;
    let mut cases = Vec::new();
    let mut skipped = Vec::new();
    for c in v["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_owned();
        let hook = match (
            name.split('-').next().unwrap(),
            c["pre"].as_bool(),
            c["post"].as_bool(),
        ) {
            (_, Some(false), Some(false)) => Hook::None,
            ("c16", Some(true), Some(false)) => Hook::HardLinkA2,
            ("c24", Some(true), Some(true)) => Hook::DestEvil,
            _ => panic!("{name}: cases.py has a pre/post hook this test does not implement"),
        };
        if c["root_only"].as_bool().unwrap() && !root {
            skipped.push((name, "needs root"));
            continue;
        }
        cases.push(Case {
            name,
            src: spec(&c["src"]),
            dest: spec(&c["dest"]),
            files: (!c["files"].is_null()).then(|| strings(&c["files"])),
            casket_order: false,
            link: c["link"].as_bool().unwrap(),
            ignore_missing: c["ignore_missing"].as_bool().unwrap(),
            hook,
            seed: None,
        });
    }
    let sibling = Item::from_json(&v["sibling"]);
    for s in v["src_kinds"].as_array().unwrap() {
        for d in v["dest_kinds"].as_array().unwrap() {
            let mut src = vec![sibling.clone()];
            src.extend(spec(&s[1]));
            cases.push(Case {
                name: format!("matrix: {} x {}", s[0].as_str().unwrap(), d[0].as_str().unwrap()),
                src,
                dest: spec(&d[1]),
                files: None,
                casket_order: false,
                link: false,
                ignore_missing: false,
                hook: Hook::None,
                seed: None,
            });
        }
    }
    HandCases { cases, skipped }
}

// ---------------------------------------------------------------------------------------------
// Random trees.

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A small tree: names from [`NAMES`], depth at most 3, files (some executable), empty and
/// non-empty directories, relative symlinks that never leave the root (at most as many leading
/// `..` as the link has parents, then names): to files, directories, nothing, or loops.
fn random_tree(rng: &mut Rng) -> Vec<Item> {
    fn dir(rng: &mut Rng, prefix: &str, parents: usize, out: &mut Vec<Item>) {
        let mut names = NAMES.to_vec();
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i + 1));
        }
        names.truncate(rng.below(if parents == 0 { 5 } else { 4 }));
        for name in names {
            let path = format!("{prefix}{name}");
            let roll = rng.below(100);
            if parents < 2 && roll < 35 {
                out.push(Item::Dir {
                    path: path.clone(),
                    mode: 0o755,
                });
                dir(rng, &format!("{path}/"), parents + 1, out);
            } else if roll < 70 {
                out.push(Item::File {
                    path,
                    content: ["", "1", "2", "12"][rng.below(4)].into(),
                    mode: if rng.below(3) == 0 { 0o755 } else { 0o644 },
                    mtime: None,
                });
            } else {
                let mut parts: Vec<&str> = vec![".."; rng.below(parents + 1)];
                for _ in 0..rng.below(3) {
                    parts.push(NAMES[rng.below(NAMES.len())]);
                }
                let target = if parts.is_empty() {
                    ".".into()
                } else {
                    parts.join("/")
                };
                out.push(Item::Link { path, target });
            }
        }
    }
    let mut out = Vec::new();
    dir(rng, "", 0, &mut out);
    out
}

fn random_case(seed: u64) -> Case {
    let mut rng = Rng(seed);
    Case {
        name: format!("random {seed:#x}"),
        src: random_tree(&mut rng),
        dest: random_tree(&mut rng),
        files: None,
        casket_order: true,
        link: false,
        ignore_missing: false,
        hook: Hook::None,
        seed: Some(seed),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_cases_and_collision_matrix_match_buildstream() {
    let Some(script) = oracle_script() else {
        return;
    };
    let HandCases { cases, skipped } = hand_cases();
    let names: BTreeSet<String> = cases.iter().map(|c| c.name.clone()).collect();
    assert_eq!(cases.len() + skipped.len(), 31 + 4 * 10, "cases.py changed size");
    for (name, why) in &skipped {
        eprintln!("{name}: skipped ({why})");
    }
    let runs = run_all(&script, cases).await;

    let mut failures = Vec::new();
    let mut listed = BTreeSet::new();
    for &(name, bug, aspect, casket, check) in DIVERGENCES {
        assert!(listed.insert(name), "{name} is listed twice in DIVERGENCES");
        let number = bug.strip_prefix('B').and_then(|n| n.parse::<u32>().ok());
        assert!(matches!(number, Some(1..=12)), "{name}: {bug} is not a bug of §9");
        if skipped.iter().any(|(s, _)| s == name) {
            continue;
        }
        assert!(
            names.contains(name),
            "DIVERGENCES names {name:?}, which is no case"
        );
        let run = &runs[name];
        let expected = match aspect {
            Aspect::Outcome | Aspect::Partial => Some(aspect),
            Aspect::Modes | Aspect::Report => None,
        };
        let found = run.difference();
        if found.as_ref().map(|(a, _)| *a) != expected {
            let shown = found.map_or("no difference as REAPI sees it".into(), |(a, t)| {
                format!("{a:?}:\n{t}")
            });
            failures.push(format!(
                "{name} ({bug}, {aspect:?}: casket {casket}) is stale: found {shown}\n{}",
                run.explain()
            ));
            continue;
        }
        if let Err(why) = check(&runs) {
            failures.push(format!(
                "{name} ({bug}: casket {casket}): {why}\n{}",
                run.explain()
            ));
        }
    }
    for &(name, what, check) in AGREEMENTS {
        if let Err(why) = check(&runs) {
            failures.push(format!("{name} ({what}): {why}\n{}", runs[name].explain()));
        }
    }
    let mut counts = BTreeMap::new();
    for (name, run) in &runs {
        if !listed.contains(name.as_str()) {
            check_unlisted(name, run, &mut failures, &mut counts);
        }
        for problem in &run.problems {
            failures.push(format!("{name}: {problem}\n{}", run.explain()));
        }
    }
    eprintln!("hand cases: {} run, generic divergences {counts:?}", runs.len());
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The first generic divergence that recognises `run`.
fn recognise(run: &Run) -> Option<&'static Generic> {
    GENERIC_DIVERGENCES
        .iter()
        .find(|(_, _, _, recognise, _)| recognise(run))
}

/// A run not in [`DIVERGENCES`] may differ only as [`GENERIC_DIVERGENCES`] allow.
fn check_unlisted(name: &str, run: &Run, failures: &mut Vec<String>, counts: &mut BTreeMap<String, usize>) {
    let Some((aspect, text)) = run.difference() else {
        return;
    };
    match recognise(run) {
        Some((what, bug, _, _, _)) => *counts.entry(format!("{bug}: {what}")).or_default() += 1,
        None => failures.push(format!(
            "{name}: unexplained difference from BuildStream ({aspect:?}):\n{text}{}",
            run.explain()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_trees_match_buildstream() {
    let Some(script) = oracle_script() else {
        return;
    };
    let env = |key: &str| {
        std::env::var(key).ok().map(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            }
            .unwrap_or_else(|e| panic!("{key}={v}: {e}"))
        })
    };
    let (first, count) = match env("CASKET_ORACLE_SEED") {
        Some(seed) => (seed, env("CASKET_ORACLE_CASES").unwrap_or(1)),
        None => (RANDOM_SEED, env("CASKET_ORACLE_CASES").unwrap_or(RANDOM_CASES)),
    };
    let mut seeds: BTreeSet<u64> = (0..count).map(|i| first.wrapping_add(i)).collect();
    seeds.extend(GENERIC_DIVERGENCES.iter().map(|(_, _, _, _, seed)| *seed));
    let runs = run_all(&script, seeds.into_iter().map(random_case).collect()).await;
    let mut failures = Vec::new();
    let mut counts = BTreeMap::<String, usize>::new();
    for (name, run) in &runs {
        *counts
            .entry(
                match (&run.oracle.error, &run.casket) {
                    (None, Ok(_)) => "both succeed",
                    (Some(_), Err(_)) => "both fail",
                    _ => "one fails",
                }
                .to_owned(),
            )
            .or_default() += 1;
        check_unlisted(name, run, &mut failures, &mut counts);
        for problem in &run.problems {
            failures.push(format!("{name}: {problem}\n{}", run.explain()));
        }
    }
    for &(what, bug, _, _, seed) in GENERIC_DIVERGENCES {
        let run = &runs[&random_case(seed).name];
        let found = recognise(run).map(|(w, _, _, _, _)| *w);
        if found != Some(what) {
            failures.push(format!(
                "{bug} ({what}) is stale: its example is recognised as {found:?}\n{}",
                run.explain()
            ));
        }
    }
    eprintln!("random trees: {counts:?}");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
