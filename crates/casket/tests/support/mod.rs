//! Shared helpers for the CLI's integration tests: running the binary, generating trees, and
//! finding real peers.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

pub(crate) mod bazel;
pub(crate) mod buildstream2;
pub(crate) mod garage;
#[path = "../../../casket-vdir/tests/common/peers.rs"]
mod peers;
pub(crate) mod tree;

pub(crate) use peers::{peer_available, shared_dir};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The `casket` binary under test, pointed at `store`.
pub(crate) fn casket(store: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_casket"));
    cmd.arg("--store").arg(store).arg("--quiet");
    cmd
}

/// Runs `cmd`, asserts it exits 0, and returns its stdout.
pub(crate) fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `cmd` and returns its whole output, whatever the exit status.
pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Checks that BuildStream 1.6.8 is importable by Debian's Python and the shared client exists.
pub(crate) fn buildstream1() -> Option<String> {
    let client = shared_dir().join("peers/bst1/client.py");
    if !client.exists() {
        return Some(format!("{} not found", client.display()));
    }
    let probe = Command::new("/usr/bin/python3")
        .args(["-c", "import buildstream; print(buildstream.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("1.6") => None,
        Ok(out) => Some(format!(
            "/usr/bin/python3 cannot import BuildStream 1.6: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Some(format!("/usr/bin/python3: {e}")),
    }
}

/// A `casket serve` process on a free loopback port, killed when dropped.
pub(crate) struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// The server's first line on stderr (what it serves, where, and how).
    pub(crate) banner: String,
}

impl Serve {
    /// Starts `casket serve` on `store` with `extra` arguments and waits until it listens.
    pub(crate) fn start(store: &Path, extra: &[&str]) -> Serve {
        Serve::start_at(store, "127.0.0.1:0", extra)
    }

    /// Starts `casket serve` listening on `address`.
    pub(crate) fn start_at(store: &Path, address: &str, extra: &[&str]) -> Serve {
        let mut cmd = casket(store);
        cmd.args(["serve", "--listen", address]).args(extra);
        Serve::spawn(cmd)
    }

    /// Starts `casket serve --config FILE` on a free port, with `env` added to its
    /// environment; the file names the stores.
    pub(crate) fn start_with_config(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_casket"));
        cmd.args(["--quiet", "serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(extra)
            .envs(env.iter().copied());
        Serve::spawn(cmd)
    }

    /// The monitoring port's address, from the banner (`… monitoring on ADDR…`).
    pub(crate) fn monitoring(&self) -> String {
        self.banner_address("monitoring on ")
    }

    /// The HTTP cache's URL, from the banner (`… HTTP cache on ADDR…`).
    pub(crate) fn http_url(&self) -> String {
        format!("http://{}", self.banner_address("HTTP cache on "))
    }

    /// The address the banner gives after `label`.
    fn banner_address(&self, label: &str) -> String {
        let (_, rest) = self
            .banner
            .split_once(label)
            .unwrap_or_else(|| panic!("no {label:?} in {:?}", self.banner));
        rest.split([',', ')']).next().unwrap().to_owned()
    }

    /// Runs `cmd` (a `casket serve` command line) and waits until it listens.
    fn spawn(mut cmd: Command) -> Serve {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let line = lines.next().unwrap().unwrap();
        let address = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve {
            child,
            url: format!("http://{address}"),
            banner: line,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// BuildStream 1.6.8's own client (`shared/peers/bst1/client.py`) under Debian's Python.
pub(crate) fn bst1_client() -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(shared_dir().join("peers/bst1/client.py"));
    cmd
}

/// How to reach the Garage bucket through node `node`, with the cluster's key.
pub(crate) fn garage_s3(garage: &garage::Garage, node: usize) -> casket_store::S3Options {
    casket_store::S3Options {
        bucket: garage.bucket().to_owned(),
        endpoint: Some(garage.s3_endpoint(node)),
        region: Some(garage.region().to_owned()),
        access_key_id: Some(garage.key_id().to_owned()),
        secret_access_key: Some(garage.secret().to_owned()),
        allow_http: true,
        virtual_hosted_style: false,
    }
}

/// A `casket serve` frontend over Garage: a tiered store with its near disk in
/// `DIR/NAME-near` and the bucket, reached through Garage node `node`, as its far tier; the
/// credentials are in the file.
pub(crate) fn tiered_frontend(garage: &garage::Garage, node: usize, dir: &Path, name: &str) -> Serve {
    tiered_frontend_with(garage, node, dir, name, true)
}

/// [`tiered_frontend`], with the credentials in the file or, when `keys_in_file` is false, in
/// the server's environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
pub(crate) fn tiered_frontend_with(
    garage: &garage::Garage,
    node: usize,
    dir: &Path,
    name: &str,
    keys_in_file: bool,
) -> Serve {
    let keys = if keys_in_file {
        format!(
            "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            garage.key_id(),
            garage.secret()
        )
    } else {
        String::new()
    };
    let env = if keys_in_file {
        vec![]
    } else {
        vec![
            ("AWS_ACCESS_KEY_ID", garage.key_id()),
            ("AWS_SECRET_ACCESS_KEY", garage.secret()),
        ]
    };
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[store]
kind = "tiered"
[store.near]
kind = "disk"
path = "{near}"
quota = "2G"
[store.far]
kind = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
region = "{region}"
allow_http = true
{keys}"#,
            near = dir.join(format!("{name}-near")).display(),
            bucket = garage.bucket(),
            endpoint = garage.s3_endpoint(node),
            region = garage.region(),
        ),
    )
    .unwrap();
    let serve = Serve::start_with_config(&config, &["--allow-push"], &env);
    assert!(serve.banner.contains("in front of s3://"), "{}", serve.banner);
    serve
}

/// `GET path` over HTTP/1.1; the response body.
pub(crate) fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}
