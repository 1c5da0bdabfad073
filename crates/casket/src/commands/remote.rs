//! `push` and `pull`: whole trees to and from any REAPI server, with refs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use casket_model::{Digest, RefName};
use casket_remote::client::transfer::{TransferReport, pull_tree, push_tree};
use casket_remote::client::{ClientTls, RemoteCas, RemoteOptions};
use casket_tree::{CaptureOptions, CheckoutMode, CheckoutOptions};
use clap::Args;
use serde_json::json;

use super::{Context, print_json};
use crate::progress::Bar;
use crate::units::format_size;
use casket_store::RefStore;

/// How to reach the server.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// The server: grpc://HOST:PORT or http://... (plain), grpcs://... or https://... (TLS).
    #[arg(long, env = "CASKET_REMOTE", value_name = "URL")]
    remote: String,
    /// The REAPI instance name.
    #[arg(long, default_value = "")]
    instance: String,
    /// A file holding a bearer token to send.
    #[arg(long, env = "CASKET_REMOTE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificates (PEM) to verify the server with, instead of the system's.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The most requests in flight at once: the client finds how many the
    /// server takes well, up to this (1 sends them one at a time).
    #[arg(long, default_value_t = 16)]
    jobs: usize,
    /// Our own cap on a batch request, below the server's limit.
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    max_batch_size: Option<u64>,
    /// Send and receive large blobs in zstd when the server offers it (pays on slow links).
    #[arg(long)]
    zstd: bool,
    /// Retries of a failed request (with backoff) before giving up.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

impl RemoteArgs {
    async fn connect(&self) -> anyhow::Result<RemoteCas> {
        let read =
            |path: &PathBuf| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        let token = match &self.token_file {
            Some(path) => Some(String::from_utf8(read(path)?)?.trim().to_owned()),
            None => None,
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        let options = RemoteOptions {
            instance: self.instance.clone(),
            token,
            tls: ClientTls {
                ca: self.tls_ca.as_ref().map(read).transpose()?,
                identity,
            },
            concurrency: self.jobs.max(1),
            retries: self.retries,
            compression: self.zstd,
            max_batch_bytes: self
                .max_batch_size
                .unwrap_or(casket_remote::server::MAX_BATCH_BYTES),
            ..RemoteOptions::new(self.remote.clone())
        };
        RemoteCas::connect(options)
            .await
            .with_context(|| format!("cannot use {}", self.remote))
    }
}

/// Arguments of `casket push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// What to push: a directory (captured first), a root digest `HASH/SIZE`, or a local ref.
    source: String,
    /// Name the tree on the server (a local ref pushed without --ref keeps its name).
    #[arg(long = "ref", value_name = "NAME")]
    ref_name: Option<RefName>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Arguments of `casket pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// What to pull: a root digest `HASH/SIZE` or a ref name on the server.
    tree: String,
    /// Also check the tree out into this new or empty directory.
    dir: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Pushes a tree.
pub async fn push(cx: &Context, args: PushArgs) -> anyhow::Result<ExitCode> {
    let path = PathBuf::from(&args.source);
    let (root, local_ref) = if path.is_dir() {
        let options = CaptureOptions::default();
        let bar = Bar::new("capture", cx.quiet);
        let captured = casket_tree::capture(cx.blobs.as_ref(), &path, &options, &bar)
            .await
            .with_context(|| format!("cannot capture {}", path.display()))?;
        bar.finish();
        (captured.root, None)
    } else {
        let local_ref = RefName::new(&args.source)
            .ok()
            .filter(|_| args.source.parse::<Digest>().is_err());
        (cx.resolve(&args.source).await?, local_ref)
    };
    let remote = args.remote.connect().await?;
    let bar = Bar::new("push", cx.quiet);
    let report = push_tree(cx.blobs.clone(), &remote, &root, &bar)
        .await
        .with_context(|| format!("cannot push {root} to {}", args.remote.remote))?;
    bar.finish();
    let name = args.ref_name.or(local_ref);
    if let Some(name) = &name {
        remote
            .set_ref(name, &root)
            .await
            .with_context(|| format!("cannot set ref {name} on {}", args.remote.remote))?;
    }
    summarize("push", &remote, &root, name.as_ref(), &report, args.remote.json)
}

/// Pulls a tree.
pub async fn pull(cx: &Context, args: PullArgs) -> anyhow::Result<ExitCode> {
    let remote = args.remote.connect().await?;
    let (root, name) = match args.tree.parse::<Digest>() {
        Ok(root) => (root, None),
        Err(_) => {
            let name = RefName::new(&args.tree)
                .map_err(|e| anyhow!("{:?} is neither a digest (HASH/SIZE) nor a ref: {e}", args.tree))?;
            let root = remote
                .get_ref(&name)
                .await
                .with_context(|| format!("cannot look up {name} on {}", args.remote.remote))?
                .ok_or_else(|| anyhow!("{} has no complete tree named {name}", args.remote.remote))?;
            (root, Some(name))
        }
    };
    let bar = Arc::new(Bar::new("pull", cx.quiet));
    let report = pull_tree(&remote, cx.blobs.clone(), &root, bar.clone())
        .await
        .with_context(|| format!("cannot pull {root} from {}", args.remote.remote))?;
    bar.finish();
    if let Some(name) = &name {
        cx.refs.set(name, &root).await?;
    }
    if let Some(dir) = &args.dir {
        let options = CheckoutOptions {
            mode: CheckoutMode::Hardlink,
            ..CheckoutOptions::default()
        };
        casket_tree::checkout(&cx.blobs, &root, dir, &options, &())
            .await
            .with_context(|| format!("cannot check out {root} into {}", dir.display()))?;
    }
    summarize("pull", &remote, &root, name.as_ref(), &report, args.remote.json)
}

/// The closing summary: blobs moved and already there, bytes, RPCs by method, time.
fn summarize(
    verb: &str,
    remote: &RemoteCas,
    root: &Digest,
    name: Option<&RefName>,
    report: &TransferReport,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let rpcs = remote.stats().rpcs();
    let (limit, peak) = remote.in_flight_limit();
    if as_json {
        return print_json(&json!({
            "root": root.to_string(),
            "ref": name.map(ToString::to_string),
            "blobs": report.blobs,
            "present": report.present,
            "transferred_blobs": report.transferred_blobs,
            "transferred_bytes": report.transferred_bytes,
            "seconds": report.seconds,
            "rpcs": rpcs,
            "retries": remote.stats().retries(),
            "in_flight": { "limit": limit, "peak": peak },
        }));
    }
    let rate = report.transferred_bytes as f64 / report.seconds.max(1e-9);
    out!("{root}");
    eprintln!(
        "casket: {verb}: {} of {} blobs ({}) in {:.2} s ({}/s), {} already there; RPCs: {}",
        report.transferred_blobs,
        report.blobs,
        format_size(report.transferred_bytes),
        report.seconds,
        format_size(rate as u64),
        report.present,
        rpcs.iter()
            .map(|(method, n)| format!("{method} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
