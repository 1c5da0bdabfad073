//! `casket serve --config`: the TOML file, its overrides, and the monitoring port's
//! `/status` and `/metrics`, end to end through the binary.
#![allow(clippy::unwrap_used)]

mod support;

use support::{Serve, casket, http_get, run};

#[test]
fn the_config_file_sets_quota_tokens_instances_and_the_monitoring_port() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens"), "# CI\nwrite ci-secret\n").unwrap();
    std::fs::write(
        dir.path().join("casket.toml"),
        r#"
store = "default-store"
token_file = "tokens"
quota = "1G"
grace = "5m"
monitoring_listen = "127.0.0.1:0"
[instances.release]
store = "release-store"
quota = "64M"
"#,
    )
    .unwrap();
    let config = dir.path().join("casket.toml");
    // The helper always passes --store, which wins over the file's `store`: give the same one.
    let server = Serve::start(
        &dir.path().join("default-store"),
        &["--config", config.to_str().unwrap()],
    );
    assert!(
        server.banner.contains("read-only without credentials"),
        "{}",
        server.banner
    );
    assert!(server.banner.contains("quota 1.00 GiB"), "{}", server.banner);
    let monitoring = server.monitoring();

    let status: serde_json::Value = serde_json::from_str(&http_get(&monitoring, "/status")).unwrap();
    assert_eq!(status["anonymous"], "read");
    assert_eq!(status["grace_seconds"], 300);
    let namespaces = status["namespaces"].as_array().unwrap();
    assert_eq!(namespaces.len(), 2, "{status}");
    assert_eq!(namespaces[0]["namespace"], "default");
    assert_eq!(namespaces[0]["quota_bytes"], 1u64 << 30);
    assert_eq!(namespaces[1]["namespace"], "release");
    assert_eq!(namespaces[1]["quota_bytes"], 64u64 << 20);
    assert!(
        namespaces[1]["store"]
            .as_str()
            .unwrap()
            .ends_with("release-store")
    );
    assert!(dir.path().join("release-store/casket-store").exists());

    let metrics = http_get(&monitoring, "/metrics");
    for expected in [
        "casket_store_bytes{namespace=\"default\"}",
        "casket_quota_bytes{namespace=\"release\"} 67108864",
        "# EOF",
    ] {
        assert!(metrics.contains(expected), "{expected} not in\n{metrics}");
    }
}

#[test]
fn a_bad_config_file_is_refused_with_its_name_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("casket.toml");
    std::fs::write(&config, "quota = \"a lot\"\n").unwrap();
    let out = run(casket(dir.path()).args(["serve", "--config", config.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("casket.toml") && stderr.contains("not a size"),
        "{stderr}"
    );

    std::fs::write(&config, "token_file = \"missing-tokens\"\n").unwrap();
    let out = run(casket(dir.path()).args(["serve", "--config", config.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing-tokens"));
}
