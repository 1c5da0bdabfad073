//! Tools that are not REAPI clients on `casket serve --http-listen`: ccache from Debian
//! compiles a small C project through casket's generic entries, once per layout ccache
//! offers; after its local cache is wiped, the second compilation is all remote hits.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use support::{Serve, ok, peer_available};

const CCACHE: &str = "/usr/bin/ccache";

/// Why ccache cannot be used here, if it cannot.
fn ccache() -> Option<String> {
    match Command::new(CCACHE).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{CCACHE} --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Some(format!("{CCACHE}: {e} (apt-get install ccache)")),
    }
}

/// A small C project: a few translation units with a shared header.
fn write_project(dir: &Path) -> Vec<String> {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("shared.h"), "int twice(int);\n").unwrap();
    let mut units = vec!["twice.c".to_owned()];
    fs::write(
        dir.join("twice.c"),
        "#include \"shared.h\"\nint twice(int x) { return 2 * x; }\n",
    )
    .unwrap();
    for i in 0..5 {
        let name = format!("unit{i}.c");
        fs::write(
            dir.join(&name),
            format!("#include <stdio.h>\n#include \"shared.h\"\nint unit{i}(void) {{ return printf(\"%d\\n\", twice({i})); }}\n"),
        )
        .unwrap();
        units.push(name);
    }
    units
}

/// Compiles every unit through ccache with `cache_dir` as its local cache and `remote` as its
/// remote storage, and returns ccache's counters.
fn compile(project: &Path, units: &[String], cache_dir: &Path, remote: &str) -> BTreeMap<String, u64> {
    let ccache = || {
        let mut cmd = Command::new(CCACHE);
        cmd.current_dir(project)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("CCACHE_DIR", cache_dir)
            .env("CCACHE_REMOTE_STORAGE", remote)
            .env("CCACHE_CONFIGPATH", cache_dir.join("ccache.conf"));
        cmd
    };
    for unit in units {
        ok(ccache()
            .args(["gcc", "-O2", "-c", unit, "-o"])
            .arg(format!("{unit}.o")));
    }
    ok(ccache().arg("--print-stats"))
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('\t')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn ccache_hits_casket_after_its_local_cache_is_wiped_in_every_layout() {
    if !peer_available("ccache", ccache()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(
        &dir.path().join("store"),
        &["--allow-push", "--http-listen", "127.0.0.1:0"],
    );
    for layout in ["subdirs", "flat", "bazel"] {
        let project = dir.path().join(layout).join("src");
        let units = write_project(&project);
        let remote = format!("{}/kv/ccache-{layout}|layout={layout}", server.http_url());

        let cold = compile(
            &project,
            &units,
            &dir.path().join(layout).join("cache-1"),
            &remote,
        );
        assert_eq!(
            cold["remote_storage_hit"], 0,
            "{layout}: a fresh cache has no hits: {cold:?}"
        );
        assert!(
            cold["remote_storage_write"] >= units.len() as u64,
            "{layout}: {cold:?}"
        );
        assert_eq!(cold["remote_storage_error"], 0, "{layout}: {cold:?}");

        let warm = compile(
            &project,
            &units,
            &dir.path().join(layout).join("cache-2"),
            &remote,
        );
        assert_eq!(
            warm["remote_storage_hit"],
            units.len() as u64,
            "{layout}: every compilation must be a remote hit: {warm:?}"
        );
        assert_eq!(warm["cache_miss"], 0, "{layout}: {warm:?}");
        assert_eq!(warm["remote_storage_error"], 0, "{layout}: {warm:?}");
    }
    let entries = dir.path().join("store/entries");
    for layout in ["subdirs", "flat", "bazel"] {
        assert!(
            entries.join(format!("ccache-{layout}")).is_dir(),
            "no entries for {layout}"
        );
    }
    // The bazel layout writes ac/ paths: under kv/ they are entries, never action results.
    assert!(entries.join("ccache-bazel/ac").is_dir());
    assert!(
        !dir.path().join("store/ac").exists(),
        "ccache's values were stored as action results"
    );
}
