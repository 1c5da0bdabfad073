//! Self-test of the 3-node Garage harness (`support::garage`), with curl's SigV4 signing as
//! the S3 client:
//!
//! * the cluster starts healthy on every node, with the bucket and a key that works (a wrong
//!   secret is refused);
//! * an object PUT through node 1 reads back byte for byte through node 2; a missing key is 404;
//! * with node 3 killed the cluster is "degraded" and PUT/GET through nodes 1 and 2 still work;
//! * node 3 restarted: healthy everywhere, and it serves the object written while it was down;
//! * node 1's `/metrics` counted its PutObject requests, node 2's its GetObject requests.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::garage::Garage;

/// An S3 request with curl (`--aws-sigv4`), to `node`'s endpoint: PUT `body` when given, else
/// GET. Returns the HTTP status (0 when nothing answered) and the response body.
fn s3(garage: &Garage, node: usize, key: &str, body: Option<&[u8]>, secret: &str) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let response = dir.path().join("response");
    let url = format!("{}/{}/{key}", garage.s3_endpoint(node), garage.bucket());
    let mut cmd = Command::new("curl");
    cmd.args([
        "--silent",
        "--show-error",
        "--max-time",
        "60",
        "--write-out",
        "%{http_code}",
    ])
    .arg("--output")
    .arg(&response)
    .arg("--aws-sigv4")
    .arg(format!("aws:amz:{}:s3", garage.region()))
    .arg("--user")
    .arg(format!("{}:{secret}", garage.key_id()))
    // Garage wants the payload hash header; curl then signs it.
    .args(["--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if let Some(body) = body {
        let upload = dir.path().join("upload");
        std::fs::write(&upload, body).unwrap();
        cmd.arg("--upload-file").arg(&upload);
    }
    let out = cmd
        .arg(&url)
        .output()
        .expect("curl (with --aws-sigv4, 7.75 or later) is needed");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let body = if Path::new(&response).exists() {
        std::fs::read(&response).unwrap()
    } else {
        Vec::new()
    };
    (code, body)
}

fn put(garage: &Garage, node: usize, key: &str, body: &[u8]) {
    let (code, response) = s3(garage, node, key, Some(body), garage.secret());
    assert_eq!(
        code,
        200,
        "PUT {key} via node {node}: {}",
        String::from_utf8_lossy(&response)
    );
}

fn get(garage: &Garage, node: usize, key: &str) -> Vec<u8> {
    let (code, response) = s3(garage, node, key, None, garage.secret());
    assert_eq!(
        code,
        200,
        "GET {key} via node {node}: {}",
        String::from_utf8_lossy(&response)
    );
    response
}

fn assert_health(garage: &Garage, nodes: &[usize], expected: &str) {
    for &node in nodes {
        assert_eq!(
            garage.health(node),
            expected,
            "cluster health seen by node {node}"
        );
    }
}

#[test]
fn three_nodes_survive_one_killed_and_restarted() {
    let started = Instant::now();
    let Some(mut garage) = Garage::start() else { return };
    eprintln!("Garage::start() took {:?}", started.elapsed());

    assert_health(&garage, &[1, 2, 3], "healthy");
    let buckets = garage.cli(&["bucket", "list"]);
    assert!(
        buckets.contains(garage.bucket()),
        "bucket missing from `garage bucket list`:\n{buckets}"
    );
    // The admin port answers unauthenticated health checks.
    let health = Command::new("curl")
        .args(["--silent", "--fail", "--output", "/dev/null"])
        .arg(format!("{}/health", garage.admin_endpoint(1)))
        .status()
        .unwrap();
    assert!(health.success(), "GET /health on node 1's admin port failed");

    // The key really is checked.
    let wrong_secret = "f".repeat(64);
    let (code, _) = s3(&garage, 1, "refused", Some(b"no"), &wrong_secret);
    assert_eq!(code, 403, "a PUT signed with a wrong secret");

    // Written through node 1, read through node 2.
    let first: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    put(&garage, 1, "objects/first", &first);
    assert_eq!(get(&garage, 2, "objects/first"), first);
    let (code, _) = s3(&garage, 2, "objects/missing", None, garage.secret());
    assert_eq!(code, 404, "GET of a missing key");

    // One node down: degraded, still readable and writable through the others.
    let phase = Instant::now();
    garage.kill(3);
    eprintln!("kill(3) took {:?}", phase.elapsed());
    assert_health(&garage, &[1, 2], "degraded");
    let (code, _) = s3(&garage, 3, "objects/first", None, garage.secret());
    assert_eq!(code, 0, "node 3 still answers after kill");
    let second = b"written while node 3 was down".to_vec();
    put(&garage, 1, "objects/second", &second);
    assert_eq!(get(&garage, 2, "objects/second"), second);
    assert_eq!(get(&garage, 2, "objects/first"), first);

    // Back to healthy; node 3 serves what it missed.
    let phase = Instant::now();
    garage.restart(3);
    eprintln!("restart(3) took {:?}", phase.elapsed());
    assert_health(&garage, &[1, 2, 3], "healthy");
    assert_eq!(get(&garage, 3, "objects/second"), second);

    let node1 = garage.s3_requests(1);
    let node2 = garage.s3_requests(2);
    eprintln!("S3 requests: node 1 {node1:?}, node 2 {node2:?}");
    // Two good PUTs plus the refused one.
    assert!(
        node1.get("PutObject").copied().unwrap_or(0) >= 2,
        "node 1's requests: {node1:?}"
    );
    assert!(
        node2.get("GetObject").copied().unwrap_or(0) >= 4,
        "node 2's requests: {node2:?}"
    );
    assert!(
        !node2.contains_key("PutObject"),
        "node 2 served no PUT: {node2:?}"
    );
    eprintln!("whole test took {:?}", started.elapsed());
}
