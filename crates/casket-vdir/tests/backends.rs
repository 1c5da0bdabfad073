//! The CAS backend and the file backend behave identically: imports checked four ways
//! (file->file, cas->cas, file->cas, cas->file) on random trees, the seed's ordering example,
//! escapes from DEST, and the rest of the `Directory` API run side by side on both backends.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, DiskOptions, DiskStore, MemoryStore};
use casket_tree::CaptureOptions;
use casket_vdir::{
    CasDirectory, DETERMINISTIC_MTIME, Directory, EntryKind, FileDirectory, ImportFilter, ImportOptions,
    ImportReport, SandboxRoot, Skipped, SpecialKind, VdirError,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Trees on disk

/// A tree to write to disk: entry name -> node.
type Tree = BTreeMap<String, Node>;

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File { data: Vec<u8>, exec: bool },
    Dir(Tree),
    Link(String),
    Fifo,
}

fn file(data: &str) -> Node {
    Node::File {
        data: data.as_bytes().to_vec(),
        exec: false,
    }
}

fn exe(data: &str) -> Node {
    Node::File {
        data: data.as_bytes().to_vec(),
        exec: true,
    }
}

fn link(target: &str) -> Node {
    Node::Link(target.to_owned())
}

fn dir<const N: usize>(entries: [(&str, Node); N]) -> Node {
    Node::Dir(tree(entries))
}

fn tree<const N: usize>(entries: [(&str, Node); N]) -> Tree {
    entries
        .into_iter()
        .map(|(n, node)| (n.to_owned(), node))
        .collect()
}

fn write_tree(root: &Path, tree: &Tree) {
    fs::create_dir_all(root).unwrap();
    for (name, node) in tree {
        let path = root.join(name);
        match node {
            Node::File { data, exec } => {
                fs::write(&path, data).unwrap();
                let mode = if *exec { 0o755 } else { 0o644 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
            Node::Dir(children) => write_tree(&path, children),
            Node::Link(target) => symlink(target, &path).unwrap(),
            Node::Fifo => mkfifo(&path),
        }
    }
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// Everything below `root` (not following symlinks, never opening FIFOs) except the `skip`
/// subtrees: path -> kind, mode and content, target or (for directories) mtime.
fn disk_state(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    fn walk(path: &Path, skip: &[PathBuf], out: &mut BTreeMap<PathBuf, String>) {
        for entry in fs::read_dir(path).unwrap() {
            let path = entry.unwrap().path();
            if skip.contains(&path) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let kind = meta.file_type();
            let mode = meta.mode() & 0o7777;
            let text = if kind.is_dir() {
                walk(&path, skip, out);
                // The mtime shows entries created and removed again.
                format!("dir {mode:o} {}.{}", meta.mtime(), meta.mtime_nsec())
            } else if kind.is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if kind.is_file() {
                format!("file {mode:o} {:?}", fs::read(&path).unwrap())
            } else {
                format!("special {mode:o}")
            };
            out.insert(path, text);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, skip, &mut out);
    out
}

/// A temporary directory, in memory (`/dev/shm`) where possible unless `TMPDIR` says
/// otherwise: these tests create and delete many small trees, which is slow on some disks.
fn scratch() -> TempDir {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none()
        && shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn memory_store() -> Arc<dyn BlobStore> {
    Arc::new(MemoryStore::new())
}

async fn capture(store: &Arc<dyn BlobStore>, path: &Path) -> Digest {
    casket_tree::capture(store.as_ref(), path, &CaptureOptions::default(), &())
        .await
        .unwrap()
        .root
}

/// The digest of `tree`, by writing it to disk and capturing it.
async fn digest_of(store: &Arc<dyn BlobStore>, tree: &Tree) -> Digest {
    let tmp = scratch();
    write_tree(tmp.path(), tree);
    capture(store, tmp.path()).await
}

/// A readable listing of a directory: `dir/`, `link -> target`, `file = "data"` (` x` if
/// executable), in listing order.
async fn dump(dir: &dyn Directory) -> Vec<String> {
    let mut out = Vec::new();
    for path in dir.list_relative_paths().await.unwrap() {
        let stat = dir.stat(&path).await.unwrap();
        out.push(match stat.kind {
            EntryKind::Directory => format!("{path}/"),
            EntryKind::Symlink => format!("{path} -> {}", stat.target.unwrap()),
            EntryKind::File => {
                let data = dir.read_file(&path).await.unwrap();
                let exec = if stat.executable { " x" } else { "" };
                format!("{path} = {:?}{exec}", String::from_utf8_lossy(&data))
            }
            EntryKind::Special(kind) => format!("{path} ({kind:?})"),
        });
    }
    out
}

/// The tree stored at `digest`, dumped.
async fn dump_stored(store: &Arc<dyn BlobStore>, digest: &Digest) -> Vec<String> {
    dump(&CasDirectory::open(store.clone(), digest).await.unwrap()).await
}

/// An error as `Variant: message`, to compare failures across backends.
fn describe(e: &VdirError) -> String {
    let debug = format!("{e:?}");
    let variant = debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default();
    format!("{variant}: {e}")
}

/// The variant name of an expected error.
fn err<T: Debug>(result: casket_vdir::Result<T>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => describe(&e).split(':').next().unwrap().to_owned(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A test runner for `cases` cases (`PROPTEST_CASES` overrides it).
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Importing four ways

/// Which entries a step imports (turned into an [`ImportFilter`]).
#[derive(Clone, Debug)]
enum FilterSpec {
    All,
    Paths(Vec<String>),
    /// Every entry with no component equal to this name.
    Without(String),
}

impl FilterSpec {
    fn filter(&self) -> ImportFilter {
        match self {
            FilterSpec::All => ImportFilter::All,
            FilterSpec::Paths(paths) => ImportFilter::Paths(paths.clone()),
            FilterSpec::Without(name) => {
                let name = name.clone();
                ImportFilter::Predicate(Arc::new(move |path: &str| path.split('/').all(|c| c != name)))
            }
        }
    }
}

/// One import.
#[derive(Clone, Debug)]
struct Step {
    src: Tree,
    filter: FilterSpec,
    ignore_missing: bool,
    link: bool,
}

impl Step {
    fn all(src: Tree) -> Step {
        Step {
            src,
            filter: FilterSpec::All,
            ignore_missing: false,
            link: false,
        }
    }

    fn paths(src: Tree, paths: &[&str]) -> Step {
        Step {
            filter: FilterSpec::Paths(paths.iter().map(|p| (*p).to_owned()).collect()),
            ..Step::all(src)
        }
    }
}

/// What an import gave: its report, or its error as [`describe`]d.
type Outcome = Result<ImportReport, String>;

/// The result of [`four_ways`]: the final tree, in `store`, and each step's outcome.
struct Run {
    store: Arc<dyn BlobStore>,
    digest: Digest,
    outcomes: Vec<Outcome>,
}

impl Run {
    fn report(&self, step: usize) -> &ImportReport {
        match &self.outcomes[step] {
            Ok(report) => report,
            Err(e) => panic!("step {step} failed: {e}"),
        }
    }

    async fn dump(&self) -> Vec<String> {
        dump_stored(&self.store, &self.digest).await
    }
}

/// What is around each DEST on disk (and at every level above it, up to the temporary
/// directory): where a symlink resolved on the host, instead of inside DEST, would write.
fn sentinels() -> Tree {
    tree([
        ("a", dir([("keep", file("a"))])),
        ("dest-evil", dir([("keep", file("evil"))])),
        ("etc", dir([("passwd", file("root:x:0:0::/root:/bin/sh\n"))])),
        ("usr", dir([("keep", file("usr"))])),
    ])
}

/// Runs `steps` in order four ways, each starting from `dest`: file->file and cas->file into
/// copies of `dest` on disk, cas->cas and file->cas into `CasDirectory`s of it, and checks that
/// every step gives the same outcome and the same tree all four ways, that a failed step
/// changes nothing, that sources are never changed and that nothing outside DEST is written.
async fn four_ways(dest: &Tree, steps: &[Step]) -> Run {
    let tmp = scratch();
    let top = tmp.path();
    // DEST sits three levels down so that up to three `..` resolved on the host stay in `top`.
    let nest = top.join("o1/o2");
    for level in [top.to_owned(), top.join("o1"), nest.clone()] {
        write_tree(&level, &sentinels());
    }
    let (ff, cf) = (nest.join("ff/dest"), nest.join("cf/dest"));
    for path in [&ff, &cf] {
        write_tree(path.parent().unwrap(), &sentinels());
        write_tree(path, dest);
    }
    let sources: Vec<PathBuf> = (0..steps.len()).map(|i| top.join(format!("src{i}"))).collect();
    for (path, step) in sources.iter().zip(steps) {
        write_tree(path, &step.src);
    }
    let skip = [ff.clone(), cf.clone()];
    let outside = disk_state(top, &skip);

    let store = memory_store();
    let mut current = capture(&store, &ff).await;
    let cc = CasDirectory::open(store.clone(), &current).await.unwrap();
    let fc = CasDirectory::open(store.clone(), &current).await.unwrap();
    let mut outcomes = Vec::new();
    for (i, (path, step)) in sources.iter().zip(steps).enumerate() {
        let src_digest = capture(&store, path).await;
        let src_file = FileDirectory::open(path).unwrap();
        let src_cas = CasDirectory::open(store.clone(), &src_digest).await.unwrap();
        let filter = step.filter.filter();
        let options = ImportOptions {
            ignore_missing: step.ignore_missing,
            link: step.link,
        };
        let outcome = |r: casket_vdir::Result<ImportReport>| r.map_err(|e| describe(&e));

        let ff_outcome = outcome(
            FileDirectory::open(&ff)
                .unwrap()
                .import_files(&src_file, &filter, &options)
                .await,
        );
        let ff_digest = capture(&store, &ff).await;
        let cc_outcome = outcome(cc.import_files(&src_cas, &filter, &options).await);
        let cc_digest = cc.digest().await.unwrap();
        let fc_outcome = outcome(fc.import_files(&src_file, &filter, &options).await);
        let fc_digest = fc.digest().await.unwrap();
        let cf_outcome = outcome(
            FileDirectory::open(&cf)
                .unwrap()
                .import_files(&src_cas, &filter, &options)
                .await,
        );
        let cf_digest = capture(&store, &cf).await;

        let results = [
            ("cas->cas", cc_outcome, cc_digest),
            ("file->cas", fc_outcome, fc_digest),
            ("cas->file", cf_outcome, cf_digest),
        ];
        for (way, outcome, digest) in &results {
            assert_eq!(
                outcome, &ff_outcome,
                "step {i}: {way} and file->file report differently"
            );
            if digest != &ff_digest {
                panic!(
                    "step {i}: {way} and file->file give different trees:\n{way}: {:#?}\nfile->file: {:#?}",
                    dump_stored(&store, digest).await,
                    dump_stored(&store, &ff_digest).await,
                );
            }
        }
        if let Err(e) = &ff_outcome {
            assert_eq!(ff_digest, current, "step {i} failed ({e}) but changed DEST");
        }
        assert_eq!(
            src_cas.digest().await.unwrap(),
            src_digest,
            "step {i} changed its source"
        );
        current = ff_digest;
        outcomes.push(ff_outcome);
    }
    assert_eq!(
        disk_state(top, &skip),
        outside,
        "something outside DEST was written"
    );
    Run {
        store,
        digest: current,
        outcomes,
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// One small alphabet for SRC and DEST, so that paths collide at every depth.
const NAMES: [&str; 3] = ["a", "b", "c"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMES[..]).prop_map(str::to_owned)
}

/// Symlink targets: relative or absolute, through `..` and `.`, escaping the root, dangling,
/// pointing at files, directories or themselves.
fn target() -> BoxedStrategy<String> {
    let component = prop_oneof![
        6 => name(),
        2 => Just("..".to_owned()),
        1 => Just(".".to_owned()),
    ];
    let built = (
        prop::bool::weighted(0.25),
        prop::collection::vec(component, 1..=3),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(absolute, parts, slash)| {
            let mut target = if absolute { "/".to_owned() } else { String::new() };
            target.push_str(&parts.join("/"));
            if slash {
                target.push('/');
            }
            target
        });
    prop_oneof![
        8 => built,
        1 => prop::sample::select(vec!["/", "../dest-evil", "../../..", "/../a", "a/../../b"])
            .prop_map(str::to_owned),
    ]
    .boxed()
}

fn leaf(links: bool) -> BoxedStrategy<Node> {
    let file = (
        prop::collection::vec(prop::sample::select(vec![b'x', b'y']), 0..3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(data, exec)| Node::File { data, exec });
    let empty = Just(Node::Dir(Tree::new()));
    if links {
        prop_oneof![4 => file, 1 => empty, 3 => target().prop_map(Node::Link)].boxed()
    } else {
        prop_oneof![4 => file, 1 => empty].boxed()
    }
}

/// Each name of the alphabet present or not.
fn children(node: BoxedStrategy<Node>) -> BoxedStrategy<Tree> {
    prop::collection::vec(prop::option::weighted(0.5, node), NAMES.len())
        .prop_map(|slots| {
            NAMES
                .iter()
                .zip(slots)
                .filter_map(|(name, node)| Some(((*name).to_owned(), node?)))
                .collect()
        })
        .boxed()
}

fn random_tree(links: bool) -> BoxedStrategy<Tree> {
    let node = leaf(links).prop_recursive(3, 24, 3, |inner| children(inner).prop_map(Node::Dir));
    children(node.boxed())
}

/// A path to list for import: may go through source symlinks, be missing, be spelled with a
/// leading `/` or `./`, and rarely be invalid.
fn listed_path() -> BoxedStrategy<String> {
    prop_oneof![
        40 => (
            prop::sample::select(vec!["", "/", "./"]),
            prop::collection::vec(name(), 1..=3),
        )
            .prop_map(|(prefix, parts)| format!("{prefix}{}", parts.join("/"))),
        1 => Just("a/../b".to_owned()),
    ]
    .boxed()
}

/// Which entries of `src` to import; listed paths are often real entries of it.
fn filter_spec(src: &Tree) -> BoxedStrategy<FilterSpec> {
    let real = paths_of(src);
    let listed = if real.is_empty() {
        listed_path()
    } else {
        prop_oneof![
            3 => prop::sample::select(real).prop_map(|p| format!("/{p}")),
            2 => listed_path(),
        ]
        .boxed()
    };
    prop_oneof![
        5 => Just(FilterSpec::All),
        4 => prop::collection::vec(listed, 1..=4).prop_map(FilterSpec::Paths),
        1 => name().prop_map(FilterSpec::Without),
    ]
    .boxed()
}

fn step() -> BoxedStrategy<Step> {
    random_tree(true)
        .prop_flat_map(|src| {
            (
                filter_spec(&src),
                Just(src),
                any::<bool>(),
                prop::bool::weighted(0.2),
            )
        })
        .prop_map(|(filter, src, ignore_missing, link)| Step {
            src,
            filter,
            ignore_missing,
            link,
        })
        .boxed()
}

/// Every path of a tree, depth first, siblings by name, a directory before its contents.
fn paths_of(tree: &Tree) -> Vec<String> {
    fn walk(tree: &Tree, prefix: &str, out: &mut Vec<String>) {
        for (name, node) in tree {
            let path = format!("{prefix}{name}");
            out.push(path.clone());
            if let Node::Dir(children) = node {
                walk(children, &format!("{path}/"), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, "", &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// 1. CAS backend == file backend, on random trees

#[test]
fn imports_agree_four_ways() {
    let rt = runtime();
    runner(2000)
        .run(&(random_tree(true), step()), |(dest, step)| {
            rt.block_on(four_ways(&dest, &[step]));
            Ok(())
        })
        .unwrap();
}

/// Two imports in a row: the second meets what the first created (symlinks to follow,
/// directories to merge), four ways.
#[test]
fn import_sequences_agree_four_ways() {
    let rt = runtime();
    runner(1000)
        .run(&(random_tree(true), step(), step()), |(dest, first, second)| {
            rt.block_on(four_ways(&dest, &[first, second]));
            Ok(())
        })
        .unwrap();
}

/// A source tree with a FIFO somewhere in it, as `(with, without, fifo path)`.
fn fifo_source() -> impl Strategy<Value = (Tree, Tree, String)> {
    (random_tree(true), any::<Index>(), name()).prop_map(|(without, index, name)| {
        let mut dirs = vec![String::new()];
        dirs.extend(
            paths_of(&without)
                .into_iter()
                .filter(|p| matches!(node_at(&without, p), Some(Node::Dir(_)))),
        );
        let parent = dirs[index.index(dirs.len())].clone();
        let mut with = without.clone();
        let mut cursor = &mut with;
        for component in parent.split('/').filter(|c| !c.is_empty()) {
            match cursor.get_mut(component) {
                Some(Node::Dir(children)) => cursor = children,
                _ => unreachable!("a directory of the tree"),
            }
        }
        cursor.insert(name.clone(), Node::Fifo);
        let fifo = if parent.is_empty() {
            name
        } else {
            format!("{parent}/{name}")
        };
        let mut without = with.clone();
        remove_at(&mut without, &fifo);
        (with, without, fifo)
    })
}

fn node_at<'t>(tree: &'t Tree, path: &str) -> Option<&'t Node> {
    let (first, rest) = path.split_once('/').map_or((path, None), |(f, r)| (f, Some(r)));
    match (tree.get(first), rest) {
        (node, None) => node,
        (Some(Node::Dir(children)), Some(rest)) => node_at(children, rest),
        _ => None,
    }
}

fn remove_at(tree: &mut Tree, path: &str) {
    match path.split_once('/') {
        None => {
            tree.remove(path);
        }
        Some((first, rest)) => {
            if let Some(Node::Dir(children)) = tree.get_mut(first) {
                remove_at(children, rest);
            }
        }
    }
}

/// A FIFO in a source on disk is skipped and reported, never opened, the same way into a
/// directory on disk and into the CAS; with everything (or a predicate) imported the result is
/// the import of the same source without it.
#[test]
fn fifos_in_the_source_are_skipped() {
    let rt = runtime();
    runner(1000)
        .run(
            &(
                fifo_source().prop_flat_map(|source| (filter_spec(&source.0), Just(source))),
                random_tree(true),
                any::<bool>(),
            ),
            |((spec, (with, without, fifo)), dest, ignore_missing)| {
                // An implementation that opened the FIFO would hang here, with no writer.
                rt.block_on(check_fifo_case(
                    &with,
                    &without,
                    &fifo,
                    &dest,
                    &spec,
                    ignore_missing,
                ));
                Ok(())
            },
        )
        .unwrap();
}

async fn check_fifo_case(
    with: &Tree,
    without: &Tree,
    fifo: &str,
    dest: &Tree,
    spec: &FilterSpec,
    ignore_missing: bool,
) {
    let tmp = scratch();
    let (src, plain, ff) = (
        tmp.path().join("src"),
        tmp.path().join("plain"),
        tmp.path().join("ff"),
    );
    write_tree(&src, with);
    write_tree(&plain, without);
    write_tree(&ff, dest);
    let store = memory_store();
    let dest_digest = capture(&store, &ff).await;
    let filter = spec.filter();
    let options = ImportOptions {
        ignore_missing,
        link: false,
    };
    let source = FileDirectory::open(&src).unwrap();
    let ff_outcome = FileDirectory::open(&ff)
        .unwrap()
        .import_files(&source, &filter, &options)
        .await
        .map_err(|e| describe(&e));
    let ff_digest = capture(&store, &ff).await;
    let fc = CasDirectory::open(store.clone(), &dest_digest).await.unwrap();
    let fc_outcome = fc
        .import_files(&source, &filter, &options)
        .await
        .map_err(|e| describe(&e));
    assert_eq!(
        fc_outcome, ff_outcome,
        "file->cas and file->file report differently"
    );
    assert_eq!(
        fc.digest().await.unwrap(),
        ff_digest,
        "file->cas and file->file differ"
    );
    if ff_outcome.is_err() {
        assert_eq!(ff_digest, dest_digest, "a failed import changed DEST");
    }
    if let FilterSpec::Paths(_) = spec {
        if let Ok(report) = &ff_outcome {
            assert!(report.skipped.iter().all(|s| s.kind == SpecialKind::Fifo));
        }
        return;
    }
    // Everything, or a predicate: as if the FIFO were not there, plus the report.
    let plain_digest = capture(&store, &plain).await;
    let cc = CasDirectory::open(store.clone(), &dest_digest).await.unwrap();
    let cc_outcome = cc
        .import_files(
            &CasDirectory::open(store.clone(), &plain_digest).await.unwrap(),
            &filter,
            &options,
        )
        .await
        .map_err(|e| describe(&e));
    let taken = match spec {
        FilterSpec::Without(name) => fifo.split('/').all(|c| c != name),
        _ => true,
    };
    let expected = cc_outcome.map(|mut report| {
        if taken {
            report.skipped.push(Skipped {
                path: fifo.to_owned(),
                kind: SpecialKind::Fifo,
            });
        }
        report
    });
    assert_eq!(ff_outcome, expected, "a FIFO was not simply skipped");
    assert_eq!(cc.digest().await.unwrap(), ff_digest, "a FIFO changed the result");
}

/// A FIFO listed explicitly is skipped without any effect on DEST: its parents are not created
/// and whatever is in their place does not matter.
#[tokio::test]
async fn listed_fifo_changes_nothing() {
    let tmp = scratch();
    let src = tmp.path().join("src");
    write_tree(&src, &tree([("d", dir([("p", Node::Fifo)])), ("f", file("f"))]));
    let source = FileDirectory::open(&src).unwrap();
    let store = memory_store();
    for dest in [
        Tree::new(),
        tree([("d", file("a file"))]),
        tree([("d", link("nowhere"))]),
    ] {
        let path = tmp.path().join("dest");
        if path.exists() {
            fs::remove_dir_all(&path).unwrap();
        }
        write_tree(&path, &dest);
        let before = capture(&store, &path).await;
        let filter = ImportFilter::Paths(vec!["d/p".into()]);
        let expected = ImportReport {
            skipped: vec![Skipped {
                path: "d/p".into(),
                kind: SpecialKind::Fifo,
            }],
            ..ImportReport::default()
        };
        let report = FileDirectory::open(&path)
            .unwrap()
            .import_files(&source, &filter, &ImportOptions::default())
            .await
            .unwrap();
        assert_eq!(report, expected);
        assert_eq!(capture(&store, &path).await, before, "{dest:?}");
        let cas = CasDirectory::open(store.clone(), &before).await.unwrap();
        let report = cas
            .import_files(&source, &filter, &ImportOptions::default())
            .await
            .unwrap();
        assert_eq!(report, expected);
        assert_eq!(cas.digest().await.unwrap(), before, "{dest:?}");
    }
}

/// A FIFO in DEST is replaced by a file or symlink (and reported), and a directory cannot go
/// onto it; a tar export refuses it.
#[tokio::test]
async fn fifo_in_dest() {
    let tmp = scratch();
    let store = memory_store();
    let src = tmp.path().join("src");
    write_tree(
        &src,
        &tree([("p", exe("now a file")), ("q", dir([("x", file("x"))]))]),
    );
    let src_digest = capture(&store, &src).await;
    let sources: [Box<dyn Directory>; 2] = [
        Box::new(FileDirectory::open(&src).unwrap()),
        Box::new(CasDirectory::open(store.clone(), &src_digest).await.unwrap()),
    ];
    for (i, source) in sources.iter().enumerate() {
        let dest = tmp.path().join(format!("dest{i}"));
        write_tree(&dest, &tree([("p", Node::Fifo), ("q", Node::Fifo)]));
        let target = FileDirectory::open(&dest).unwrap();
        let only = |p: &str| ImportFilter::Paths(vec![p.into()]);
        let options = ImportOptions::default();
        let e = target.import_files(source.as_ref(), &only("q"), &options).await;
        assert_eq!(err(e), "NotADirectory");
        assert_eq!(
            err(target.export_tar(Box::new(std::io::sink())).await),
            "Unsupported"
        );
        let report = target
            .import_files(source.as_ref(), &only("p"), &options)
            .await
            .unwrap();
        assert_eq!(report.overwritten, ["p"]);
        assert_eq!(report.written, ["p"]);
        let stat = target.stat("p").await.unwrap();
        assert_eq!((stat.kind, stat.executable), (EntryKind::File, true));
        assert_eq!(
            target.stat("q").await.unwrap().kind,
            EntryKind::Special(SpecialKind::Fifo)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Determinism

/// A random tree of files and directories (no symlinks) imported one path at a time, in a
/// random order, gives the tree of the source: the same digest as importing it all at once and
/// as capturing the source.
#[test]
fn one_path_at_a_time_in_any_order() {
    let rt = runtime();
    let strategy = random_tree(false).prop_flat_map(|tree| {
        let paths = paths_of(&tree);
        (Just(tree), Just(paths).prop_shuffle())
    });
    runner(1000)
        .run(&strategy, |(tree, order)| {
            rt.block_on(check_order(&tree, &order));
            Ok(())
        })
        .unwrap();
}

async fn check_order(tree: &Tree, order: &[String]) {
    let tmp = scratch();
    let src = tmp.path().join("src");
    write_tree(&src, tree);
    let store = memory_store();
    let expected = capture(&store, &src).await;
    let file_source = FileDirectory::open(&src).unwrap();
    let cas_source = CasDirectory::open(store.clone(), &expected).await.unwrap();
    let options = ImportOptions::default();

    let from_file = CasDirectory::empty(store.clone(), DigestFunction::Sha256);
    let from_cas = CasDirectory::empty(store.clone(), DigestFunction::Sha256);
    let on_disk = FileDirectory::create(tmp.path().join("dest")).unwrap();
    for path in order {
        let filter = ImportFilter::Paths(vec![path.clone()]);
        let report = from_file
            .import_files(&file_source, &filter, &options)
            .await
            .unwrap();
        let written: &[String] = match node_at(tree, path) {
            Some(Node::Dir(_)) => &[],
            _ => std::slice::from_ref(path),
        };
        assert_eq!(report.written, written);
        assert!(report.overwritten.is_empty() && report.ignored.is_empty());
        from_cas
            .import_files(&cas_source, &filter, &options)
            .await
            .unwrap();
        on_disk
            .import_files(&cas_source, &filter, &options)
            .await
            .unwrap();
    }
    assert_eq!(
        from_file.digest().await.unwrap(),
        expected,
        "one at a time, file->cas"
    );
    assert_eq!(
        from_cas.digest().await.unwrap(),
        expected,
        "one at a time, cas->cas"
    );
    assert_eq!(
        capture(&store, on_disk.path()).await,
        expected,
        "one at a time, cas->file"
    );

    for (source, filter) in [
        (&file_source as &dyn Directory, ImportFilter::All),
        (&cas_source, ImportFilter::All),
        (&file_source, ImportFilter::Paths(order.to_vec())),
        (&cas_source, ImportFilter::Paths(order.to_vec())),
    ] {
        let at_once = CasDirectory::empty(store.clone(), DigestFunction::Sha256);
        let report = at_once.import_files(source, &filter, &options).await.unwrap();
        assert_eq!(
            at_once.digest().await.unwrap(),
            expected,
            "all at once, {filter:?}"
        );
        let files: Vec<String> = paths_of(tree)
            .into_iter()
            .filter(|p| !matches!(node_at(tree, p), Some(Node::Dir(_))))
            .collect();
        assert_eq!(report.written, files, "all at once, {filter:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The seed's ordering example: `usr/sbin`, `sbin -> usr/sbin`, `sbin/hello`

#[tokio::test]
async fn seed_order_link_first_across_two_imports() {
    for target in ["usr/sbin", "/usr/sbin"] {
        // The link and its directory come first; the file follows the link (c03).
        let run = four_ways(
            &Tree::new(),
            &[
                Step::all(tree([("sbin", link(target)), ("usr", dir([("sbin", dir([]))]))])),
                Step::all(tree([("sbin", dir([("hello", exe("hi"))]))])),
            ],
        )
        .await;
        assert_eq!(
            run.dump().await,
            [
                format!("sbin -> {target}"),
                "usr/".into(),
                "usr/sbin/".into(),
                "usr/sbin/hello = \"hi\" x".into(),
            ]
        );
        assert_eq!(run.report(0).written, ["sbin"]);
        assert_eq!(run.report(1).written, ["sbin/hello"]);
        assert!(run.report(1).overwritten.is_empty() && run.report(1).ignored.is_empty());

        // Already in DEST, next to other content (c03 proper).
        let dest = tree([
            ("sbin", link(target)),
            ("usr", dir([("sbin", dir([("existing", file("e"))]))])),
        ]);
        let run = four_ways(&dest, &[Step::all(tree([("sbin", dir([("hello", exe("hi"))]))]))]).await;
        assert_eq!(
            run.dump().await,
            [
                format!("sbin -> {target}"),
                "usr/".into(),
                "usr/sbin/".into(),
                "usr/sbin/existing = \"e\"".into(),
                "usr/sbin/hello = \"hi\" x".into(),
            ]
        );

        // The link alone, its target missing: the target is created (c10, c11).
        let run = four_ways(
            &tree([("sbin", link(target))]),
            &[Step::paths(
                tree([("sbin", dir([("hello", exe("hi"))]))]),
                &["sbin/hello"],
            )],
        )
        .await;
        assert_eq!(
            run.dump().await,
            [
                format!("sbin -> {target}"),
                "usr/".into(),
                "usr/sbin/".into(),
                "usr/sbin/hello = \"hi\" x".into(),
            ]
        );
    }
}

#[tokio::test]
async fn seed_order_directory_first_across_two_imports() {
    for target in ["usr/sbin", "/usr/sbin"] {
        // The real directory with content comes first; the link is ignored (c04).
        let run = four_ways(
            &Tree::new(),
            &[
                Step::all(tree([("sbin", dir([("hello", exe("hi"))]))])),
                Step::all(tree([
                    ("sbin", link(target)),
                    ("usr", dir([("sbin", dir([("init", file("i"))]))])),
                ])),
            ],
        )
        .await;
        assert_eq!(
            run.dump().await,
            [
                "sbin/",
                "sbin/hello = \"hi\" x",
                "usr/",
                "usr/sbin/",
                "usr/sbin/init = \"i\"",
            ]
        );
        assert_eq!(
            run.report(1),
            &ImportReport {
                written: vec!["usr/sbin/init".into()],
                ignored: vec!["sbin".into()],
                ..ImportReport::default()
            }
        );

        // An empty real directory is replaced by the link, and that is reported (c05).
        let run = four_ways(
            &tree([("sbin", dir([]))]),
            &[Step::all(tree([("sbin", link(target))]))],
        )
        .await;
        assert_eq!(run.dump().await, [format!("sbin -> {target}")]);
        assert_eq!(
            run.report(0),
            &ImportReport {
                written: vec!["sbin".into()],
                overwritten: vec!["sbin".into()],
                ..ImportReport::default()
            }
        );
    }
}

#[tokio::test]
async fn seed_order_within_one_import() {
    for target in ["usr/sbin", "/usr/sbin"] {
        let src = tree([
            ("sbin", link(target)),
            ("usr", dir([("sbin", dir([("hello", exe("hi"))]))])),
        ]);
        let linked = [
            format!("sbin -> {target}"),
            "usr/".into(),
            "usr/sbin/".into(),
            "usr/sbin/hello = \"hi\" x".into(),
        ];
        // One order whatever the order of the list: `sbin`, `sbin/hello` (through the source
        // link), `usr/sbin`. The link is written first, and the file follows it.
        for list in [
            ["usr/sbin", "sbin", "sbin/hello"],
            ["sbin/hello", "sbin", "usr/sbin"],
            ["sbin", "usr/sbin", "sbin/hello"],
        ] {
            let run = four_ways(&Tree::new(), &[Step::paths(src.clone(), &list)]).await;
            assert_eq!(run.dump().await, linked, "{list:?}");
            assert_eq!(run.report(0).written, ["sbin", "sbin/hello"], "{list:?}");
        }
        // The whole source: the link, then the directories and the file.
        let run = four_ways(&Tree::new(), &[Step::all(src.clone())]).await;
        assert_eq!(run.dump().await, linked);
        assert_eq!(run.report(0).written, ["sbin", "usr/sbin/hello"]);

        // The file alone, listed through the source link: DEST gets the path as listed.
        let run = four_ways(&Tree::new(), &[Step::paths(src.clone(), &["sbin/hello"])]).await;
        assert_eq!(run.dump().await, ["sbin/", "sbin/hello = \"hi\" x"]);

        // DEST already has a real `sbin/` with content: the link is ignored, the rest merges.
        let run = four_ways(
            &tree([("sbin", dir([("old", file("o"))]))]),
            &[Step::paths(src.clone(), &["usr/sbin", "sbin", "sbin/hello"])],
        )
        .await;
        assert_eq!(
            run.dump().await,
            [
                "sbin/",
                "sbin/hello = \"hi\" x",
                "sbin/old = \"o\"",
                "usr/",
                "usr/sbin/"
            ]
        );
        assert_eq!(run.report(0).ignored, ["sbin"]);
        assert_eq!(run.report(0).written, ["sbin/hello"]);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Escapes

/// A name that exists nowhere on the host, for what a broken implementation would write
/// through links pointing at the host's `/etc`.
fn canary() -> String {
    format!("casket-vdir-canary-{}", std::process::id())
}

fn host_passwd() -> Option<(Vec<u8>, i64, i64)> {
    let meta = fs::symlink_metadata("/etc/passwd").ok()?;
    Some((fs::read("/etc/passwd").ok()?, meta.mtime(), meta.mtime_nsec()))
}

/// Asserts that `/etc/<canary>` was never created (removing it if it was).
fn assert_no_canary_on_host() {
    let path = Path::new("/etc").join(canary());
    let existed = fs::symlink_metadata(&path).is_ok();
    if existed {
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
    }
    assert!(!existed, "{} was written on the host", path.display());
}

#[tokio::test]
async fn escapes_stay_inside_dest() {
    let passwd = host_passwd();
    let canary = canary();

    // c09: `..` beyond the root clamps there.
    let run = four_ways(
        &tree([("opt", dir([("escape-hatch", link("../../usr"))]))]),
        &[Step::all(tree([(
            "opt",
            dir([("escape-hatch", dir([("etc", dir([("org.conf", file("conf"))]))]))]),
        )]))],
    )
    .await;
    assert_eq!(
        run.dump().await,
        [
            "opt/",
            "opt/escape-hatch -> ../../usr",
            "usr/",
            "usr/etc/",
            "usr/etc/org.conf = \"conf\"",
        ]
    );

    // c21: a link to the root's parent is the root.
    let run = four_ways(
        &tree([("a", dir([("up", link("../.."))]))]),
        &[Step::all(tree([(
            "a",
            dir([("up", dir([("etc", dir([("x", file("x"))]))]))]),
        )]))],
    )
    .await;
    assert_eq!(run.dump().await, ["a/", "a/up -> ../..", "etc/", "etc/x = \"x\""]);

    // c24: a sibling of DEST named like DEST is not DEST's business.
    let run = four_ways(
        &tree([("esc", link("../dest-evil"))]),
        &[Step::all(tree([("esc", dir([("pwned", file("p"))]))]))],
    )
    .await;
    assert_eq!(
        run.dump().await,
        ["dest-evil/", "dest-evil/pwned = \"p\"", "esc -> ../dest-evil"]
    );

    // Absolute and deep relative links to the host's /etc lead to DEST's `etc`.
    let run = four_ways(
        &tree([
            ("p", link("/../etc")),
            ("q", link("../../../../../../../../etc")),
            ("r", link(&format!("/../../etc/{canary}"))),
        ]),
        &[
            Step::all(tree([
                ("p", dir([(canary.as_str(), file("via p"))])),
                ("q", dir([("via-q", file("via q"))])),
                // Onto a link to the host's /etc/<canary>: the link itself is replaced.
                ("r", file("replaced")),
            ])),
            Step::paths(tree([("p", dir([("listed", file("l"))]))]), &["p/listed"]),
        ],
    )
    .await;
    assert_eq!(
        run.dump().await,
        [
            "etc/".to_owned(),
            format!("etc/{canary} = \"via p\""),
            "etc/listed = \"l\"".into(),
            "etc/via-q = \"via q\"".into(),
            "p -> /../etc".into(),
            "q -> ../../../../../../../../etc".into(),
            "r = \"replaced\"".into(),
        ]
    );
    assert_eq!(run.report(0).overwritten, ["r"]);

    // A source symlink to `/../etc/passwd` is kept verbatim; a directory imported onto it later
    // merges through it, inside DEST (the host's /etc/passwd is a file, so even a broken
    // implementation could not write below it).
    let run = four_ways(
        &Tree::new(),
        &[
            Step::all(tree([("up", link("/../etc/passwd"))])),
            Step::all(tree([("up", dir([(canary.as_str(), file("c"))]))])),
        ],
    )
    .await;
    assert_eq!(
        run.dump().await,
        [
            "etc/".to_owned(),
            "etc/passwd/".into(),
            format!("etc/passwd/{canary} = \"c\""),
            "up -> /../etc/passwd".into(),
        ]
    );

    assert_eq!(host_passwd(), passwd, "the host's /etc/passwd changed");
    assert_no_canary_on_host();
}

/// The API's own edits resolve links inside the directory as imports do.
#[tokio::test]
async fn edits_through_escaping_links_stay_inside() {
    let canary = canary();
    let fixture = tree([
        ("esc", link("../dest-evil")),
        ("hatch", link("../../usr")),
        ("p", link("/../etc")),
    ]);
    let digest = on_both(&fixture, async |env: &Env| {
        env.dir
            .write_file("esc/pwned", Bytes::from("p"), false)
            .await
            .unwrap();
        env.dir
            .write_file(&format!("p/{canary}"), Bytes::from("c"), false)
            .await
            .unwrap();
        let sub = env.dir.descend("hatch/lib", true).await.unwrap();
        sub.write_file("x", Bytes::from("x"), false).await.unwrap();
        assert_eq!(
            dump(env.dir.as_ref()).await,
            [
                "dest-evil/".to_owned(),
                "dest-evil/pwned = \"p\"".into(),
                "esc -> ../dest-evil".into(),
                "etc/".into(),
                format!("etc/{canary} = \"c\""),
                "hatch -> ../../usr".into(),
                "p -> /../etc".into(),
                "usr/".into(),
                "usr/lib/".into(),
                "usr/lib/x = \"x\"".into(),
            ]
        );
    })
    .await;
    assert_ne!(digest, digest_of(&memory_store(), &fixture).await);
    assert_no_canary_on_host();
}

// ---------------------------------------------------------------------------------------------
// 5. The API, on both backends

/// One backend, set up with a tree.
struct Env {
    name: &'static str,
    dir: Box<dyn Directory>,
    /// The directory on disk (file backend).
    root: Option<PathBuf>,
    /// The tree (CAS backend).
    cas: Option<CasDirectory>,
    store: Arc<dyn BlobStore>,
    tmp: TempDir,
}

impl Env {
    async fn new(cas: bool, tree: &Tree) -> Env {
        let tmp = scratch();
        let store = memory_store();
        // The root has sentinel siblings, to see that nothing is written next to it.
        let parent = tmp.path().join("around");
        write_tree(&parent, &sentinels());
        let root = parent.join("root");
        write_tree(&root, tree);
        if cas {
            let digest = capture(&store, &root).await;
            fs::remove_dir_all(&parent).unwrap();
            let cas = CasDirectory::open(store.clone(), &digest).await.unwrap();
            Env {
                name: "cas",
                dir: Box::new(cas.clone()),
                root: None,
                cas: Some(cas),
                store,
                tmp,
            }
        } else {
            Env {
                name: "file",
                dir: Box::new(FileDirectory::open(&root).unwrap()),
                root: Some(root),
                cas: None,
                store,
                tmp,
            }
        }
    }

    /// The digest of the tree as it is now.
    async fn digest(&self) -> Digest {
        match (&self.root, &self.cas) {
            (Some(root), _) => capture(&self.store, root).await,
            (None, Some(cas)) => cas.digest().await.unwrap(),
            (None, None) => unreachable!("one backend or the other"),
        }
    }

    /// A path on disk, outside the directory.
    fn scratch(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Runs `script` on a file backend and on a CAS backend, each set up with `tree`, and checks
/// that both end with the same tree, which is returned, and that the file backend wrote nothing
/// next to its directory.
async fn on_both(tree: &Tree, script: impl AsyncFn(&Env)) -> Digest {
    let mut digests = Vec::new();
    for cas in [false, true] {
        let env = Env::new(cas, tree).await;
        eprintln!("--- {} backend", env.name);
        let around = env
            .root
            .as_ref()
            .map(|root| (root.parent().unwrap().to_owned(), [root.clone()]));
        let before = around.as_ref().map(|(parent, skip)| disk_state(parent, skip));
        script(&env).await;
        let after = around.as_ref().map(|(parent, skip)| disk_state(parent, skip));
        assert_eq!(after, before, "something next to the directory changed");
        digests.push(env.digest().await);
    }
    assert_eq!(
        digests[0], digests[1],
        "the two backends ended with different trees"
    );
    digests[0]
}

fn api_tree() -> Tree {
    tree([
        (
            "a",
            dir([
                ("b", dir([("f", file("hello"))])),
                ("e", dir([])),
                ("r", link("/b")),
                ("x", exe("run")),
            ]),
        ),
        ("abs", link("/a")),
        ("c", file("cc")),
        ("dang", link("nowhere/deep")),
        ("fl", link("c")),
        ("l", link("a/b")),
        ("loop", link("loop")),
        ("up", link("../../..")),
    ])
}

const API_PATHS: [&str; 13] = [
    "a", "a/b", "a/b/f", "a/e", "a/r", "a/x", "abs", "c", "dang", "fl", "l", "loop", "up",
];

#[tokio::test]
async fn api_descend() {
    on_both(&api_tree(), async |env: &Env| {
        let d = &env.dir;
        assert_eq!(d.list_relative_paths().await.unwrap(), API_PATHS);
        for path in ["a/b", "l", "/l/", "abs/b", "up/a/b", "up/up/l"] {
            let sub = d.descend(path, false).await.unwrap();
            assert_eq!(sub.list_relative_paths().await.unwrap(), ["f"], "{path}");
        }
        assert_eq!(
            d.descend("abs", false)
                .await
                .unwrap()
                .list_relative_paths()
                .await
                .unwrap(),
            ["b", "b/f", "e", "r", "x"]
        );
        assert_eq!(
            d.descend("up", false)
                .await
                .unwrap()
                .list_relative_paths()
                .await
                .unwrap(),
            API_PATHS
        );
        assert_eq!(err(d.descend("nope", false).await), "NotFound");
        assert_eq!(err(d.descend("c", false).await), "NotADirectory");
        assert_eq!(err(d.descend("fl", false).await), "NotADirectory");
        assert_eq!(err(d.descend("loop", false).await), "SymlinkLoop");
        assert_eq!(err(d.descend("a/..", false).await), "InvalidPath");
        assert_eq!(err(d.descend("dang", false).await), "NotFound");
        assert_eq!(err(d.descend("c/x", true).await), "NotADirectory");

        // A descended directory is the root of its own symlinks: `/b` is `a/b` from `a`.
        let a = d.descend("a", false).await.unwrap();
        assert_eq!(a.read_file("r/f").await.unwrap(), "hello");
        assert_eq!(err(d.read_file("a/r/f").await), "NotFound");

        // Creating: through a dangling link its target, else plain directories.
        let deep = d.descend("dang", true).await.unwrap();
        assert!(deep.list_relative_paths().await.unwrap().is_empty());
        assert_eq!(d.stat("nowhere/deep").await.unwrap().kind, EntryKind::Directory);
        assert_eq!(d.stat("dang").await.unwrap().kind, EntryKind::Symlink);
        let sub = d.descend("new/sub", true).await.unwrap();
        sub.write_file("g", Bytes::from("g"), false).await.unwrap();
        deep.write_file("h", Bytes::from("h"), true).await.unwrap();
        assert_eq!(d.read_file("new/sub/g").await.unwrap(), "g");
        assert_eq!(d.read_file("dang/h").await.unwrap(), "h");
        // The same directory twice: both handles see each other's edits.
        let again = d.descend("l", false).await.unwrap();
        let first = d.descend("a/b", false).await.unwrap();
        first
            .write_file("via-first", Bytes::from("1"), false)
            .await
            .unwrap();
        assert_eq!(again.read_file("via-first").await.unwrap(), "1");
    })
    .await;
}

#[tokio::test]
async fn api_read_and_write() {
    on_both(&api_tree(), async |env: &Env| {
        let d = &env.dir;
        for (path, exists) in [
            ("a/b/f", true),
            ("l/f", true),
            ("dang", true),
            ("loop", true),
            ("abs/x", true),
            ("nope", false),
            ("c/x", false),
            ("dang/x", false),
            ("", true),
        ] {
            assert_eq!(d.exists(path).await.unwrap(), exists, "{path}");
        }
        assert_eq!(err(d.exists("loop/x").await), "SymlinkLoop");

        let stat = d.stat("a/x").await.unwrap();
        assert_eq!(
            (stat.kind, stat.size, stat.executable, stat.target),
            (EntryKind::File, 3, true, None)
        );
        let stat = d.stat("fl").await.unwrap();
        assert_eq!(
            (stat.kind, stat.size, stat.target.as_deref()),
            (EntryKind::Symlink, 0, Some("c"))
        );
        assert_eq!(d.stat("l").await.unwrap().kind, EntryKind::Symlink);
        assert_eq!(d.stat("l/f").await.unwrap().size, 5);
        assert_eq!(d.stat("a").await.unwrap().kind, EntryKind::Directory);
        assert_eq!(err(d.stat("nope").await), "NotFound");

        assert_eq!(d.read_file("fl").await.unwrap(), "cc");
        assert_eq!(d.read_file("l/f").await.unwrap(), "hello");
        assert_eq!(d.read_file("/a/./b//f").await.unwrap(), "hello");
        assert_eq!(err(d.read_file("a").await), "IsADirectory");
        assert_eq!(err(d.read_file("l").await), "IsADirectory");
        assert_eq!(err(d.read_file("dang").await), "NotFound");
        assert_eq!(err(d.read_file("loop").await), "SymlinkLoop");
        assert_eq!(d.get_size().await.unwrap(), 10);

        // A symlink is replaced, never followed.
        d.write_file("fl", Bytes::from("was a link"), false)
            .await
            .unwrap();
        assert_eq!(d.stat("fl").await.unwrap().kind, EntryKind::File);
        assert_eq!(d.read_file("c").await.unwrap(), "cc");
        d.write_file("dang", Bytes::from("d"), false).await.unwrap();
        assert!(!d.exists("nowhere").await.unwrap());
        d.write_file("loop", Bytes::from("no loop"), true).await.unwrap();
        assert!(d.stat("loop").await.unwrap().executable);
        // Parents are followed (inside) and created.
        d.write_file("l/g", Bytes::from("g"), false).await.unwrap();
        assert_eq!(d.read_file("a/b/g").await.unwrap(), "g");
        d.write_file("n/e/w", Bytes::from("new"), true).await.unwrap();
        assert_eq!(d.stat("n/e").await.unwrap().kind, EntryKind::Directory);
        // A file is replaced; a directory is refused.
        d.write_file("c", Bytes::from("ccc"), false).await.unwrap();
        assert_eq!(d.read_file("c").await.unwrap(), "ccc");
        assert_eq!(err(d.write_file("a", Bytes::new(), false).await), "IsADirectory");
        assert_eq!(
            err(d.write_file("a/e", Bytes::new(), false).await),
            "IsADirectory"
        );
        assert_eq!(
            err(d.write_file("c/x", Bytes::new(), false).await),
            "NotADirectory"
        );
        assert_eq!(err(d.write_file("", Bytes::new(), false).await), "InvalidPath");
        assert_eq!(
            d.get_size().await.unwrap(),
            ["hello", "run", "ccc", "was a link", "d", "no loop", "g", "new"]
                .iter()
                .map(|s| s.len() as u64)
                .sum::<u64>()
        );
    })
    .await;
}

#[tokio::test]
async fn api_remove_and_rename() {
    on_both(&api_tree(), async |env: &Env| {
        let d = &env.dir;
        assert_eq!(err(d.remove("a", false).await), "NotEmpty");
        assert_eq!(err(d.remove("nope", false).await), "NotFound");
        assert_eq!(err(d.remove("", true).await), "InvalidPath");
        d.remove("a/e", false).await.unwrap();
        // The link goes, not what it points to.
        d.remove("l", false).await.unwrap();
        assert!(d.exists("a/b/f").await.unwrap());
        // Through a link to a directory, the entry in it.
        d.remove("abs/x", false).await.unwrap();
        assert!(!d.exists("a/x").await.unwrap());

        assert_eq!(err(d.rename("c", "fl").await), "Exists");
        assert_eq!(err(d.rename("c", "a").await), "Exists");
        assert_eq!(err(d.rename("a", "a/b/z").await), "IntoItself");
        assert_eq!(err(d.rename("a", "abs/z").await), "IntoItself");
        assert_eq!(err(d.rename("nope", "z").await), "NotFound");
        assert_eq!(err(d.rename("c", "missing/z").await), "NotFound");
        d.rename("c", "abs/c2").await.unwrap();
        assert_eq!(d.read_file("a/c2").await.unwrap(), "cc");
        assert!(!d.exists("c").await.unwrap());
        assert_eq!(d.stat("fl").await.unwrap().kind, EntryKind::Symlink);
        assert_eq!(err(d.read_file("fl").await), "NotFound");
        // A directory moves with its contents; links to it now dangle.
        d.rename("a/b", "bb").await.unwrap();
        assert_eq!(d.read_file("bb/f").await.unwrap(), "hello");
        assert_eq!(err(d.descend("abs/b", false).await), "NotFound");
        // A link moves as a link.
        d.rename("loop", "a/loop").await.unwrap();
        assert_eq!(d.stat("a/loop").await.unwrap().target.as_deref(), Some("loop"));

        d.remove("a", true).await.unwrap();
        assert_eq!(
            d.list_relative_paths().await.unwrap(),
            ["abs", "bb", "bb/f", "dang", "fl", "up"]
        );
        d.remove("bb", true).await.unwrap();
        assert_eq!(d.get_size().await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn api_modified_paths() {
    on_both(&api_tree(), async |env: &Env| {
        let d = &env.dir;
        let files_and_links = ["a/b/f", "a/r", "a/x", "abs", "c", "dang", "fl", "l", "loop", "up"];
        assert_eq!(d.list_modified_paths().await.unwrap(), files_and_links);
        d.mark_unmodified().await.unwrap();
        assert!(d.list_modified_paths().await.unwrap().is_empty());

        d.write_file("a/b/f", Bytes::from("hello, world"), false)
            .await
            .unwrap();
        d.write_file("n/new", Bytes::from("n"), false).await.unwrap();
        d.remove("c", false).await.unwrap();
        // An executable bit alone is a change.
        d.write_file("a/x", Bytes::from("run"), false).await.unwrap();
        // A symlink retargeted by an import is a change.
        let src = env.scratch("src");
        write_tree(&src, &tree([("fl", link("a/x")), ("n", dir([]))]));
        d.import_files(
            &FileDirectory::open(&src).unwrap(),
            &ImportFilter::All,
            &ImportOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            d.list_modified_paths().await.unwrap(),
            ["a/b/f", "a/x", "fl", "n/new"]
        );

        // A handle of its own has its own baseline.
        let a = d.descend("a", false).await.unwrap();
        assert_eq!(a.list_modified_paths().await.unwrap(), ["b/f", "r", "x"]);
        a.mark_unmodified().await.unwrap();
        d.write_file("a/y", Bytes::from("y"), false).await.unwrap();
        assert_eq!(a.list_modified_paths().await.unwrap(), ["y"]);

        // The file backend reads the disk afresh: changes made there are seen.
        if let Some(root) = &env.root {
            d.mark_unmodified().await.unwrap();
            fs::write(root.join("a/b/f"), "changed on disk, longer").unwrap();
            assert_eq!(d.list_modified_paths().await.unwrap(), ["a/b/f"]);
            fs::write(root.join("a/b/f"), "hello, world").unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn api_listing_order() {
    let fixture = tree([
        ("B", file("upper case first")),
        ("a", dir([("b", dir([("z", file(""))])), ("a", link("b"))])),
        ("a-b", file("")),
        ("a.b", dir([])),
        ("a0", file("")),
        ("é", file("")),
        ("z", dir([])),
    ]);
    on_both(&fixture, async |env: &Env| {
        // Depth first, name bytes, a directory right before its contents: not a string sort
        // of whole paths (which would put `a-b` and `a.b` before `a/a`).
        let expected = ["B", "a", "a/a", "a/b", "a/b/z", "a-b", "a.b", "a0", "z", "é"];
        assert_eq!(env.dir.list_relative_paths().await.unwrap(), expected);
        let mut snapshot = env.dir.snapshot().await.unwrap();
        assert_eq!(snapshot.list().unwrap(), expected);
        assert_eq!(
            env.dir.list_modified_paths().await.unwrap(),
            ["B", "a/a", "a/b/z", "a-b", "a0", "é"]
        );
    })
    .await;
}

#[tokio::test]
async fn api_export_files() {
    on_both(&api_tree(), async |env: &Env| {
        let digest = env.digest().await;
        for can_link in [false, true] {
            let out = env.scratch(&format!("export-{can_link}/deeper"));
            env.dir.export_files(&out, can_link).await.unwrap();
            assert_eq!(capture(&env.store, &out).await, digest, "link: {can_link}");
            assert_eq!(fs::read_link(out.join("up")).unwrap(), Path::new("../../.."));
            let mode = fs::metadata(out.join("a/x")).unwrap().mode();
            assert_eq!(mode & 0o100, 0o100);
            let exported = fs::metadata(out.join("a/b/f")).unwrap().ino();
            if let Some(root) = &env.root {
                let source = fs::metadata(root.join("a/b/f")).unwrap().ino();
                assert_eq!(exported == source, can_link, "hard-linked exactly when asked");
            }
        }
        // From a descended directory, into one that exists: merged.
        let out = env.scratch("export-sub");
        write_tree(&out, &tree([("old", file("o"))]));
        env.dir
            .descend("l", false)
            .await
            .unwrap()
            .export_files(&out, false)
            .await
            .unwrap();
        let expected = tree([("f", file("hello")), ("old", file("o"))]);
        assert_eq!(
            capture(&env.store, &out).await,
            digest_of(&env.store, &expected).await
        );
    })
    .await;

    // A CAS tree in a store with local files: hard links to the store's objects.
    let tmp = scratch();
    let store: Arc<dyn BlobStore> =
        Arc::new(DiskStore::open(tmp.path().join("store"), DiskOptions::default()).unwrap());
    let digest = digest_of(&store, &api_tree()).await;
    let cas = CasDirectory::open(store.clone(), &digest).await.unwrap();
    for can_link in [false, true] {
        let out = tmp.path().join(format!("export-{can_link}"));
        cas.export_files(&out, can_link).await.unwrap();
        assert_eq!(capture(&store, &out).await, digest);
        let nlink = fs::metadata(out.join("a/b/f")).unwrap().nlink();
        assert_eq!(nlink > 1, can_link, "link: {can_link}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_export_tar() {
    on_both(&api_tree(), async |env: &Env| {
        let path = env.scratch("out.tar");
        env.dir
            .export_tar(Box::new(fs::File::create(&path).unwrap()))
            .await
            .unwrap();
        let mut archive = tar::Archive::new(fs::File::open(&path).unwrap());
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), DETERMINISTIC_MTIME as u64);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            let name = entry
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned();
            let mode = header.mode().unwrap();
            let text = match header.entry_type() {
                tar::EntryType::Directory => format!("{name}/ {mode:o}"),
                tar::EntryType::Symlink => {
                    format!("{name} -> {}", entry.link_name().unwrap().unwrap().display())
                }
                tar::EntryType::Regular => {
                    let mut data = String::new();
                    entry.read_to_string(&mut data).unwrap();
                    format!("{name} {mode:o} {data:?}")
                }
                other => panic!("unexpected {other:?}"),
            };
            entries.push(text);
        }
        assert_eq!(
            entries,
            [
                "a/ 755",
                "a/b/ 755",
                "a/b/f 644 \"hello\"",
                "a/e/ 755",
                "a/r -> /b",
                "a/x 755 \"run\"",
                "abs -> /a",
                "c 644 \"cc\"",
                "dang -> nowhere/deep",
                "fl -> c",
                "l -> a/b",
                "loop -> loop",
                "up -> ../../..",
            ]
        );
        // The system tar reads it too.
        if let Ok(out) = std::process::Command::new("tar").arg("-tf").arg(&path).output()
            && out.status.success()
        {
            let listed = String::from_utf8(out.stdout).unwrap();
            let listed: Vec<&str> = listed.lines().map(|l| l.trim_end_matches('/')).collect();
            assert_eq!(listed, API_PATHS);
        }
        // From a descended directory.
        let path = env.scratch("sub.tar");
        let sub = env.dir.descend("abs", false).await.unwrap();
        sub.export_tar(Box::new(fs::File::create(&path).unwrap()))
            .await
            .unwrap();
        let mut archive = tar::Archive::new(fs::File::open(&path).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["b", "b/f", "e", "r", "x"]);
    })
    .await;
}

#[tokio::test]
async fn cas_digest_is_cached_and_invalidated() {
    // Both backends make the same edits; the CAS digest at the end equals the capture of the
    // file backend's tree (checked by `on_both`).
    on_both(&api_tree(), async |env: &Env| {
        let before = env.digest().await;
        let sub = env.dir.descend("l", false).await.unwrap();
        sub.write_file("g", Bytes::from("through a descended handle"), false)
            .await
            .unwrap();
        let after = env.digest().await;
        assert_ne!(after, before);
        // A failed edit changes nothing.
        assert!(env.dir.write_file("a", Bytes::new(), false).await.is_err());
        assert!(env.dir.rename("a", "a/b/a").await.is_err());
        assert_eq!(env.digest().await, after);
        sub.remove("g", false).await.unwrap();
        assert_eq!(env.digest().await, before, "the same tree again");
        sub.write_file("g", Bytes::from("through a descended handle"), false)
            .await
            .unwrap();
    })
    .await;

    let store = memory_store();
    let digest = digest_of(&store, &api_tree()).await;
    let cas = CasDirectory::open(store.clone(), &digest).await.unwrap();
    assert_eq!(cas.digest().await.unwrap(), digest);
    assert_eq!(cas.digest().await.unwrap(), digest);
    let sub = cas.descend("a/b", false).await.unwrap();
    sub.write_file("g", Bytes::from("g"), false).await.unwrap();
    let edited = cas.digest().await.unwrap();
    assert_ne!(edited, digest);
    assert_eq!(cas.digest().await.unwrap(), edited);
    let mut expected = api_tree();
    let Some(Node::Dir(a)) = expected.get_mut("a") else {
        unreachable!()
    };
    let Some(Node::Dir(b)) = a.get_mut("b") else {
        unreachable!()
    };
    b.insert("g".into(), file("g"));
    assert_eq!(edited, digest_of(&store, &expected).await);
    // The edited directories were stored: the tree opens anew.
    let reopened = CasDirectory::open(store.clone(), &edited).await.unwrap();
    assert_eq!(reopened.read_file("l/g").await.unwrap(), "g");
    // A clone shares the tree.
    let clone = cas.clone();
    clone.remove("a/b/g", false).await.unwrap();
    assert_eq!(cas.digest().await.unwrap(), digest);
}

#[tokio::test]
async fn deterministic_mtimes() {
    on_both(&api_tree(), async |env: &Env| {
        env.dir.set_deterministic_mtime().await.unwrap();
        if let Some(root) = &env.root {
            let mut paths = vec![root.clone()];
            paths.extend(API_PATHS.iter().map(|p| root.join(p)));
            for path in paths {
                let meta = fs::symlink_metadata(&path).unwrap();
                assert_eq!(
                    (meta.mtime(), meta.mtime_nsec()),
                    (DETERMINISTIC_MTIME, 0),
                    "{}",
                    path.display()
                );
            }
        }
    })
    .await;

    // In the CAS, recorded mtimes are dropped.
    let tmp = scratch();
    write_tree(tmp.path(), &api_tree());
    let store = memory_store();
    let plain = capture(&store, tmp.path()).await;
    let options = CaptureOptions {
        mtime: true,
        ..CaptureOptions::default()
    };
    let timed = casket_tree::capture(store.as_ref(), tmp.path(), &options, &())
        .await
        .unwrap()
        .root;
    assert_ne!(timed, plain);
    let cas = CasDirectory::open(store.clone(), &timed).await.unwrap();
    cas.descend("a", false)
        .await
        .unwrap()
        .set_deterministic_mtime()
        .await
        .unwrap();
    let partly = cas.digest().await.unwrap();
    assert!(partly != timed && partly != plain, "only below `a`");
    cas.set_deterministic_mtime().await.unwrap();
    assert_eq!(cas.digest().await.unwrap(), plain);
}

// ---------------------------------------------------------------------------------------------
// 6. SandboxRoot

#[tokio::test]
async fn sandbox_root_virtual_then_real() {
    let tmp = scratch();
    let store = memory_store();
    let src = tmp.path().join("src");
    let staged = tree([
        ("bin", dir([("sh", exe("#!"))])),
        ("etc", dir([("hostname", file("box"))])),
        ("lib", link("usr/lib")),
        ("usr", dir([("lib", dir([("libc.so", file("c"))]))])),
    ]);
    write_tree(&src, &staged);
    let path = tmp.path().join("sandbox");
    let sandbox = SandboxRoot::new(&path, store.clone(), DigestFunction::Sha256);

    // Virtual: a CAS tree, nothing on disk; every handle is the same tree.
    let before = sandbox.virtual_directory().await.unwrap();
    before
        .import_files(
            &FileDirectory::open(&src).unwrap(),
            &ImportFilter::All,
            &ImportOptions::default(),
        )
        .await
        .unwrap();
    before
        .write_file("lib/extra", Bytes::from("x"), false)
        .await
        .unwrap();
    assert!(!path.exists(), "staging touched the disk");
    let other = sandbox.virtual_directory().await.unwrap();
    assert_eq!(other.read_file("usr/lib/extra").await.unwrap(), "x");

    // Real: the tree is written out, once.
    let real = sandbox.real_directory().await.unwrap().to_owned();
    assert_eq!(real, path);
    let expected = tree([
        ("bin", dir([("sh", exe("#!"))])),
        ("etc", dir([("hostname", file("box"))])),
        ("lib", link("usr/lib")),
        (
            "usr",
            dir([("lib", dir([("extra", file("x")), ("libc.so", file("c"))]))]),
        ),
    ]);
    assert_eq!(capture(&store, &real).await, digest_of(&store, &expected).await);
    assert_eq!(sandbox.real_directory().await.unwrap(), path);

    // From now on, fresh views of the real path: changes made there are seen by every view,
    // whenever it was obtained.
    let first = sandbox.virtual_directory().await.unwrap();
    fs::write(real.join("etc/new"), "written with std::fs").unwrap();
    fs::remove_file(real.join("etc/hostname")).unwrap();
    let second = sandbox.virtual_directory().await.unwrap();
    for view in [&first, &second] {
        assert_eq!(view.read_file("etc/new").await.unwrap(), "written with std::fs");
        assert!(!view.exists("etc/hostname").await.unwrap());
    }
    fs::write(real.join("late"), "after both views").unwrap();
    for view in [&first, &second] {
        assert_eq!(view.read_file("late").await.unwrap(), "after both views");
    }
    // And writes through a view land on the real path.
    second
        .write_file("lib/through-view", Bytes::from("v"), false)
        .await
        .unwrap();
    assert_eq!(fs::read(real.join("usr/lib/through-view")).unwrap(), b"v");
    assert!(first.exists("usr/lib/through-view").await.unwrap());
    // Handles from before the switch still show the tree as it was.
    assert!(before.exists("etc/hostname").await.unwrap());
    assert!(!before.exists("etc/new").await.unwrap());

    // A sandbox path that already has content is refused.
    let busy = tmp.path().join("busy");
    write_tree(&busy, &tree([("x", file("x"))]));
    let sandbox = SandboxRoot::new(&busy, store.clone(), DigestFunction::Sha256);
    assert_eq!(err(sandbox.real_directory().await.map(Path::to_owned)), "Exists");
}
