//! Tools that are not REAPI clients on `casket serve --http-listen`: ccache from Debian
//! compiles a small C project through casket's generic entries, once per layout ccache
//! offers; after its local cache is wiped, the second compilation is all remote hits. sccache
//! 0.8.2 does the same through its WebDAV backend, and Gradle 4.4.1 (Debian) through its
//! HttpBuildCache. And the status page, after that traffic and a gRPC push, in headless
//! Chromium.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use support::{Serve, casket, ok, peer_available};

const CCACHE: &str = "/usr/bin/ccache";
const CHROMIUM: &str = "/usr/bin/chromium";

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

/// sccache 0.8.2, as `.ci/peers/sccache.sh` installs it (`CASKET_SCCACHE` overrides).
fn sccache_binary() -> std::path::PathBuf {
    std::env::var_os("CASKET_SCCACHE").map_or_else(
        || {
            let peers =
                std::env::var("CASKET_PEERS_DIR").unwrap_or_else(|_| "/var/cache/casket-peers".to_owned());
            Path::new(&peers).join("sccache-0.8.2/sccache")
        },
        Into::into,
    )
}

/// Compiles every unit through sccache (its own server on `port`, its local cache in `cache_dir`,
/// its WebDAV backend at `endpoint`), stops its server, and returns its counters.
fn sccache_compile(
    project: &Path,
    units: &[String],
    cache_dir: &Path,
    endpoint: &str,
    port: u16,
) -> serde_json::Value {
    let sccache = || {
        let mut cmd = Command::new(sccache_binary());
        cmd.current_dir(project)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", cache_dir)
            .env("SCCACHE_DIR", cache_dir)
            .env("SCCACHE_WEBDAV_ENDPOINT", endpoint)
            .env("SCCACHE_SERVER_PORT", port.to_string())
            .env("SCCACHE_IDLE_TIMEOUT", "60");
        cmd
    };
    for unit in units {
        ok(sccache()
            .args(["gcc", "-O2", "-c", unit, "-o"])
            .arg(format!("{unit}.o")));
    }
    // sccache writes to its cache after answering: wait until every miss has been written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats: serde_json::Value =
            serde_json::from_str(&ok(sccache().args(["--show-stats", "--stats-format", "json"]))).unwrap();
        let misses = stats["stats"]["cache_misses"]["counts"]["C/C++"]
            .as_u64()
            .unwrap_or(0);
        let written = stats["stats"]["cache_writes"].as_u64().unwrap_or(0)
            + stats["stats"]["cache_write_errors"].as_u64().unwrap_or(0);
        if written >= misses || std::time::Instant::now() > deadline {
            ok(sccache().arg("--stop-server"));
            return stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sccache_hits_casket_over_webdav_after_its_local_cache_is_wiped() {
    let binary = sccache_binary();
    let missing =
        (!binary.exists()).then(|| format!("{} not found (.ci/peers/sccache.sh)", binary.display()));
    if !peer_available("sccache 0.8.2", missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(
        &dir.path().join("store"),
        &["--allow-push", "--http-listen", "127.0.0.1:0"],
    );
    let project = dir.path().join("src");
    let units = write_project(&project);
    let endpoint = format!("{}/kv/sccache", server.http_url());
    // A port of its own, away from a developer's sccache on the default 4226.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let cold = sccache_compile(&project, &units, &dir.path().join("cache-1"), &endpoint, port);
    let stats = |s: &serde_json::Value, what: &str| s["stats"][what].clone();
    assert_eq!(stats(&cold, "cache_write_errors"), 0, "{cold}");
    assert_eq!(stats(&cold, "cache_writes"), units.len(), "{cold}");

    let warm = sccache_compile(&project, &units, &dir.path().join("cache-2"), &endpoint, port);
    let hits = warm["stats"]["cache_hits"]["counts"]["C/C++"].clone();
    assert_eq!(
        hits,
        units.len(),
        "every compilation must be a remote hit: {warm}"
    );
    assert_eq!(stats(&warm, "cache_read_errors"), 0, "{warm}");
    assert!(dir.path().join("store/entries/sccache").is_dir());
}

/// Why Debian's Gradle cannot be used here, if it cannot.
fn gradle() -> Option<String> {
    match Command::new("/usr/bin/gradle").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "gradle --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Some(format!("/usr/bin/gradle: {e} (apt-get install gradle)")),
    }
}

#[test]
fn gradle_takes_a_compilation_from_casket_after_a_clean() {
    if !peer_available("gradle", gradle()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(
        &dir.path().join("store"),
        &["--allow-push", "--http-listen", "127.0.0.1:0"],
    );
    let project = dir.path().join("project");
    fs::create_dir_all(project.join("src/main/java")).unwrap();
    // No local cache: a hit can only come from casket. (--offline would turn the remote off too;
    // the java plugin downloads nothing.)
    fs::write(
        project.join("settings.gradle"),
        format!(
            "rootProject.name = 'probe'\nbuildCache {{\n  local {{ enabled = false }}\n  \
             remote(HttpBuildCache) {{ url = '{}/kv/gradle/'; push = true }}\n}}\n",
            server.http_url()
        ),
    )
    .unwrap();
    fs::write(project.join("build.gradle"), "apply plugin: 'java'\n").unwrap();
    fs::write(
        project.join("src/main/java/Probe.java"),
        "public class Probe { public static int twice(int x) { return 2 * x; } }\n",
    )
    .unwrap();
    let gradle = |args: &[&str]| {
        ok(Command::new("/usr/bin/gradle")
            .current_dir(&project)
            .env("GRADLE_USER_HOME", dir.path().join("gradle-home"))
            .args(["--no-daemon", "--console=plain", "--build-cache"])
            .args(args))
    };
    let cold = gradle(&["compileJava"]);
    assert!(cold.contains("1 actionable task: 1 executed"), "{cold}");
    gradle(&["clean"]);
    let warm = gradle(&["compileJava"]);
    assert!(warm.contains(":compileJava FROM-CACHE"), "{warm}");
    assert!(project.join("build/classes/java/main/Probe.class").is_file());
    assert!(dir.path().join("store/entries/gradle").is_dir());
}

/// Why headless Chromium cannot be used here, if it cannot.
fn chromium() -> Option<String> {
    match Command::new(CHROMIUM).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "{CHROMIUM} --version failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Some(format!("{CHROMIUM}: {e} (apt-get install chromium)")),
    }
}

/// `chromium --headless` on `url` with `args`; returns stdout and stderr.
fn headless(url: &str, profile: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--enable-logging=stderr", "--v=0", "--window-size=1366,1000"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The status page after real traffic over both protocols, rendered by Chromium: it shows a
/// hit ratio and each tool, and its script ran without a console error. With
/// `CASKET_STATUS_SCREENSHOT=PATH` the screenshot is also copied there (docs/status-page.png).
#[test]
fn the_status_page_shows_real_traffic_in_chromium() {
    if !peer_available("chromium", chromium()) || !peer_available("ccache", ccache()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(
        &dir.path().join("store"),
        &[
            "--allow-push",
            "--quota",
            "1G",
            "--http-listen",
            "127.0.0.1:0",
            "--monitoring-listen",
            "127.0.0.1:0",
        ],
    );
    let project = dir.path().join("src");
    let units = write_project(&project);
    let remote = format!("{}/kv/ccache|layout=subdirs", server.http_url());
    compile(&project, &units, &dir.path().join("cache-1"), &remote);
    compile(&project, &units, &dir.path().join("cache-2"), &remote);
    ok(casket(&dir.path().join("client")).args(["push", project.to_str().unwrap(), "--remote", &server.url]));

    let page = format!("http://{}/", server.monitoring());
    let profile = dir.path().join("chromium");
    let (dom, console) = headless(&page, &profile, &["--dump-dom"]);
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script did not finish:\n{dom}"
    );
    let errors: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(errors.is_empty(), "console messages:\n{}", errors.join("\n"));
    let hit_ratio = dom
        .split("Hit ratio, last hour</div><div class=\"value")
        .nth(1)
        .and_then(|rest| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(value, _)| value.to_owned())
        .unwrap_or_else(|| panic!("no hit ratio on the page:\n{dom}"));
    // Six misses on the first compilation, six hits on the second.
    assert_eq!(hit_ratio, "50.0%", "{dom}");
    for shown in ["http/ccache", "grpc/casket", "default", "1.0 GiB", "127.0.0.1"] {
        assert!(dom.contains(shown), "{shown:?} is not on the page:\n{dom}");
    }

    let screenshot = dir.path().join("status.png");
    headless(
        &page,
        &profile,
        &[&format!("--screenshot={}", screenshot.display())],
    );
    let png = fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(to) = std::env::var("CASKET_STATUS_SCREENSHOT") {
        fs::write(to, &png).unwrap();
    }
}
