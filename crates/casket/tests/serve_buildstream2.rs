//! BuildStream 2.8.1 against `casket serve`, as its only artifact server and as its source
//! cache. BuildStream comes from PyPI into a venv outside the checkout
//! (`${CASKET_PEERS_DIR:-/var/cache/casket-peers}/bst2-venv`, made by .ci/peers/buildstream2.sh);
//! its bundled buildbox-casd does all the remote traffic.
//!
//! The project (tests/fixtures/buildstream2, completed here with what git cannot hold) has
//! `import` elements with a text file, an executable, a symlink, an empty directory, a file over
//! 1 MiB and one over casket's 8 MiB batch limit, a tarball source, a `manual` element built in
//! the bubblewrap sandbox, and a `compose` of them. It is built and pushed; a fresh cache sees
//! every artifact as available remotely, pulls them by artifact name and checks them out byte
//! for byte. `bst source push` then fills casket as a source cache, and once the tarball's
//! upstream is gone a fresh cache still fetches it, from casket. casket's own commands show
//! what the server holds. BuildStream only warns about a remote it cannot use, so every run is
//! checked for warnings as well as for its exit status.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::buildstream2::{
    BATCH_LIMIT, Client, Entry, Tree, assert_same, buildstream2, cas_view, config, project, snapshot,
};
use support::{Serve, casket, ok, peer_available};

/// The project's name, the first part of every artifact name.
const PROJECT: &str = "casket-bst2";
/// Every element of the fixture (without `.bst`), dependencies first.
const ELEMENTS: [&str; 6] = ["base", "data", "runtime", "hello", "tarball", "all"];
/// The elements whose own sources go to a source cache (`all` and `hello` have none).
const SOURCED: [&str; 4] = ["base", "data", "runtime", "tarball"];
/// The Remote Asset URIs BuildStream names artifacts and sources by.
const ARTIFACT_URN: &str = "urn:fdc:buildstream.build:2020:artifact:";
const SOURCE_URN: &str = "urn:fdc:buildstream.build:2020:source:";

// ---------------------------------------------------------------------------------------------
// The server's side

/// The Remote Asset records casket keeps of `kind` (`blob` or `directory`): each is the Push
/// request that made it, so it holds its URIs as plain text.
fn asset_records(store: &Path, kind: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = fs::read_dir(store.join("assets").join(kind)) else {
        return Vec::new();
    };
    dir.map(|e| fs::read(e.unwrap().path()).unwrap()).collect()
}

/// How many of `records` mention `text`.
fn mentioning(records: &[Vec<u8>], text: &str) -> usize {
    records
        .iter()
        .filter(|r| r.windows(text.len()).any(|w| w == text.as_bytes()))
        .count()
}

/// Shows that `store` holds the tree BuildStream checked out into `checkout`: casket computes
/// its root digest (in a scratch store under `work`, to leave `store` alone), lists it from
/// `store` and checks it out again from there.
fn assert_served(store: &Path, work: &Path, checkout: &Path, what: &str) {
    let digest = ok(casket(&work.join("scratch")).arg("capture").arg(checkout))
        .trim()
        .to_owned();
    let listing: Value =
        serde_json::from_str(&ok(casket(store).args(["ls", "-r", "--json", &digest]))).unwrap();
    let tree = snapshot(checkout);
    assert_eq!(
        listing.as_array().map(Vec::len),
        Some(tree.len()),
        "{what}: casket ls of {digest}: {listing}"
    );
    let again = work.join("casket-checkouts").join(what);
    fs::create_dir_all(again.parent().unwrap()).unwrap();
    ok(casket(store).args(["checkout", "--copy", &digest]).arg(&again));
    assert_same(
        &format!("{what}: casket's checkout of {digest}"),
        &cas_view(tree),
        &cas_view(snapshot(&again)),
    );
}

// ---------------------------------------------------------------------------------------------
// The steps

/// One element's artifact.
struct Artifact {
    element: &'static str,
    key: String,
}

impl Artifact {
    /// The artifact name (`project/element/key`), as `bst artifact` commands take it.
    fn name(&self) -> String {
        format!("{PROJECT}/{}/{}", self.element, self.key)
    }

    /// The key as BuildStream's messages show it.
    fn brief(&self) -> &str {
        &self.key[..8]
    }
}

/// `bst ARGS NAMES...`
fn with_names<'a>(args: &[&'a str], names: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(names.iter().map(String::as_str))
        .collect()
}

/// Builds everything with casket as the only artifact server, checks every artifact was
/// pushed, and checks them out from the builder's cache into `first/ELEMENT`.
fn build_and_push(builder: &Client, project: &Path, first: &Path) -> Vec<Artifact> {
    let build = builder.ok(project, &["build", "all.bst"]);
    let format = "%{name} %{full-key}";
    let show = builder.ok(project, &["show", "--deps", "all", "--format", format, "all.bst"]);
    let mut keys: BTreeMap<&str, &str> = show
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, key)| (name.trim_end_matches(".bst"), key.trim()))
        .collect();
    let artifacts: Vec<Artifact> = ELEMENTS
        .iter()
        .map(|&element| Artifact {
            element,
            key: keys
                .remove(element)
                .unwrap_or_else(|| panic!("no key for {element}: {show}"))
                .to_owned(),
        })
        .collect();
    for artifact in &artifacts {
        let job = format!("push:{}.bst", artifact.element);
        let pushed = format!("Pushed artifact {}", artifact.brief());
        assert!(build.job_says(&job, &pushed), "{job}: {build}");
    }
    assert!(
        build.job_says("build:hello.bst", "Running commands"),
        "no sandboxed build: {build}"
    );
    for artifact in &artifacts {
        let target = first.join(artifact.element);
        builder.ok(
            project,
            &[
                "artifact",
                "checkout",
                "--deps",
                "none",
                &artifact.name(),
                "--directory",
                target.to_str().unwrap(),
            ],
        );
    }
    artifacts
}

/// The builder's checkouts hold what the project says.
fn check_first_checkouts(project: &Path, first: &Path) {
    let tree = |element: &str| snapshot(&first.join(element));
    let base = tree("base");
    assert_same(
        "base is its sources",
        &cas_view(snapshot(&project.join("files/base"))),
        &cas_view(tree("base")),
    );
    assert!(
        matches!(base["bin/tool"], Entry::File { mode, .. } if mode & 0o111 != 0),
        "{base:?}"
    );
    assert_eq!(base["bin/hello"], Entry::Link("../etc/hello.txt".into()));
    assert!(matches!(base["empty"], Entry::Dir { .. }), "{base:?}");

    let data: Tree = ["usr", "usr/share", "usr/share/data"]
        .map(|d| (d.to_owned(), Entry::Dir { mode: 0o755 }))
        .into_iter()
        .chain(
            snapshot(&project.join("files/data"))
                .into_iter()
                .map(|(path, entry)| (format!("usr/share/data/{path}"), entry)),
        )
        .collect();
    assert_same("data is its sources", &cas_view(data), &cas_view(tree("data")));

    let hello = tree("hello");
    assert!(
        matches!(&hello["built.txt"], Entry::File { content, .. } if content == b"built in the sandbox by sh\n"),
        "{hello:?}"
    );
    let tarball = tree("tarball");
    assert!(tarball.contains_key("opt/pkg/bin/pkg"), "{tarball:?}");

    let mut composed = Tree::new();
    for element in ["base", "data", "tarball", "hello"] {
        composed.extend(tree(element));
    }
    assert_same("all composes its dependencies", &composed, &tree("all"));
}

/// In a fresh cache and outside any project (so nothing can come from local sources): every
/// artifact is available remotely, pulls by name, and checks out as in `first`.
fn pull_into_fresh_cache(work: &Path, url: &str, artifacts: &[Artifact], first: &Path) {
    let nowhere = work.join("nowhere");
    fs::create_dir(&nowhere).unwrap();
    let puller = Client::new(work.join("puller"), &config(Some(url), None));
    let names: Vec<String> = artifacts.iter().map(Artifact::name).collect();
    let states = |state: &str| -> BTreeMap<String, String> {
        names.iter().map(|n| (n.clone(), state.to_owned())).collect()
    };

    let show = puller.ok(&nowhere, &with_names(&["artifact", "show"], &names));
    assert_eq!(show.states(), states("available"), "{show}");
    let pull = puller.ok(&nowhere, &with_names(&["artifact", "pull"], &names));
    for artifact in artifacts {
        let job = format!("pull:{}", artifact.element);
        let pulled = format!("Pulled artifact {}", artifact.brief());
        assert!(pull.job_says(&job, &pulled), "{job}: {pull}");
    }
    let show = puller.ok(&nowhere, &with_names(&["artifact", "show"], &names));
    assert_eq!(show.states(), states("cached"), "{show}");

    for artifact in artifacts {
        let target = work.join("second").join(artifact.element);
        puller.ok(
            &nowhere,
            &[
                "artifact",
                "checkout",
                "--deps",
                "none",
                &artifact.name(),
                "--directory",
                target.to_str().unwrap(),
            ],
        );
        assert_same(
            &format!("{} pulled from casket", artifact.element),
            &snapshot(&first.join(artifact.element)),
            &snapshot(&target),
        );
    }
}

/// `bst source push` of every element's sources to casket as a source cache. Returns the
/// tarball's sources as the builder checks them out.
fn push_sources(builder: &Client, project: &Path, work: &Path, store: &Path, url: &str) -> PathBuf {
    builder.configure(&config(Some(url), Some(url)));
    let push = builder.ok(project, &["source", "push", "--deps", "all", "all.bst"]);
    for element in SOURCED {
        let job = format!("src-push:{element}.bst");
        assert!(push.job_says(&job, "Pushed source"), "{job}: {push}");
    }
    // One directory asset per source: the tarball and the three local ones.
    let directories = asset_records(store, "directory");
    let tar = mentioning(&directories, &format!("{SOURCE_URN}tar/"));
    let local = mentioning(&directories, &format!("{SOURCE_URN}local/"));
    assert!(
        tar >= 1 && local >= 3,
        "{tar} tar and {local} local source assets"
    );

    let checkout = work.join("sources-upstream");
    builder.ok(
        project,
        &[
            "source",
            "checkout",
            "tarball.bst",
            "--directory",
            checkout.to_str().unwrap(),
        ],
    );
    let tarball = checkout.join("tarball");
    assert!(tarball.join("bin/pkg").exists(), "{:?}", snapshot(&checkout));
    assert_served(store, work, &tarball, "tarball-source");
    tarball
}

/// Removes the tarball's upstream: a fresh cache without a source cache cannot fetch it, one
/// with casket as its only source cache fetches every source and checks out `tarball`.
fn fetch_sources_from_casket(work: &Path, project: &Path, url: &str, tarball: &Path) {
    fs::remove_dir_all(work.join("upstream")).unwrap();
    let offline = Client::new(work.join("offline"), &config(None, None));
    let fetch = offline.run(project, &["source", "fetch", "tarball.bst"]);
    assert!(
        !fetch.success && fetch.log.contains("pkg.tar.gz"),
        "fetched without upstream: {fetch}"
    );

    let fetcher = Client::new(work.join("fetcher"), &config(None, Some(url)));
    let fetch = fetcher.ok(project, &["source", "fetch", "--deps", "all", "all.bst"]);
    for element in SOURCED {
        let job = format!("fetch:{element}.bst");
        assert!(fetch.job_says(&job, "Pulled source"), "{job}: {fetch}");
    }
    let checkout = work.join("sources-casket");
    fetcher.ok(
        project,
        &[
            "source",
            "checkout",
            "tarball.bst",
            "--directory",
            checkout.to_str().unwrap(),
        ],
    );
    assert_same(
        "tarball source from casket",
        &snapshot(tarball),
        &snapshot(&checkout.join("tarball")),
    );
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn buildstream_2_builds_pushes_pulls_and_caches_sources_through_casket() {
    if !peer_available("buildstream 2.8.1", buildstream2()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let project = project(work);
    let store = work.join("store");
    let server = Serve::start(&store, &["--allow-push"]);
    let first = work.join("first");

    // 1. Build and push with casket as the only artifact server.
    let builder = Client::new(work.join("builder"), &config(Some(&server.url), None));
    let artifacts = build_and_push(&builder, &project, &first);
    check_first_checkouts(&project, &first);

    // 2. casket holds every artifact under its URI, and each artifact's whole files tree; no
    // source yet.
    let blobs = asset_records(&store, "blob");
    for artifact in &artifacts {
        let uri = format!("{ARTIFACT_URN}{}", artifact.name());
        assert!(mentioning(&blobs, &uri) > 0, "no asset for {uri}");
        assert_served(&store, work, &first.join(artifact.element), artifact.element);
    }
    let sources = mentioning(&asset_records(&store, "directory"), SOURCE_URN);
    assert_eq!(sources, 0, "sources pushed without a source cache");

    // 3. A fresh cache pulls them by name.
    pull_into_fresh_cache(work, &server.url, &artifacts, &first);

    // 4. casket as a source cache: push, then fetch with upstream gone.
    let tarball = push_sources(&builder, &project, work, &store, &server.url);
    fetch_sources_from_casket(work, &project, &server.url, &tarball);

    // 5. The server's store is whole, and holds at least the large files.
    let fsck: Value = serde_json::from_str(&ok(casket(&store).args(["fsck", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{fsck}");
    let du: Value = serde_json::from_str(&ok(casket(&store).args(["du", "--json"]))).unwrap();
    let large = (BATCH_LIMIT + (3 << 19)) as u64;
    assert!(du["bytes"].as_u64().unwrap() > large, "{du}");
}

#[test]
fn buildstream_2_cannot_push_to_a_read_only_casket() {
    if !peer_available("buildstream 2.8.1", buildstream2()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let project = project(work);
    let store = work.join("store");
    let server = Serve::start(&store, &[]);
    let client = Client::new(work.join("client"), &config(Some(&server.url), None));
    let build = client.run(&project, &["build", "base.bst"]);
    // Either BuildStream learns at start-up that it cannot push (a warning, then a build
    // without the remote) or the push itself fails; it never claims to have pushed.
    assert!(
        !build.success || build.log.contains("Failed to initialize remote"),
        "a read-only server took a push: {build}"
    );
    assert!(!build.log.contains("Pushed artifact"), "{build}");
    let du: Value = serde_json::from_str(&ok(casket(&store).args(["du", "--json"]))).unwrap();
    assert_eq!(du["blobs"], 0, "nothing was stored: {du}");
    assert!(asset_records(&store, "blob").is_empty());
}
