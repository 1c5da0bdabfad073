//! `capture`, `checkout` and `ls`: whole trees.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use casket_model::{DigestFunction, Directory, Node, RefName};
use casket_store::{BlobStoreExt, RefStore};
use casket_tree::{CaptureOptions, CheckoutMode, CheckoutOptions, Tree};
use casket_vdir::Directory as _;
use clap::Args;
use serde_json::json;

use super::{Context, print_json};
use crate::progress::Bar;

/// Arguments of `casket capture`.
#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// The directory to capture.
    dir: PathBuf,
    /// Also point this ref at the new tree.
    #[arg(long, value_name = "NAME")]
    r#ref: Option<RefName>,
    /// Hash with this function.
    #[arg(long, default_value = "sha256", value_parser = super::blob::parse_function)]
    digest_function: DigestFunction,
    /// Record modification times as node properties (changes the digest).
    #[arg(long)]
    mtime: bool,
    /// Record permission bits as node properties (changes the digest).
    #[arg(long)]
    unix_mode: bool,
    /// Files stored at once (default: 4 per core).
    #[arg(long, short, value_name = "N")]
    jobs: Option<usize>,
    /// Print a JSON summary instead of the digest.
    #[arg(long)]
    json: bool,
}

/// Arguments of `casket checkout`.
#[derive(Args, Debug)]
pub struct CheckoutArgs {
    /// The tree: a root digest `HASH/SIZE` or a ref name.
    tree: String,
    /// The target directory: must not exist, or be empty (with --tar: the tar file, `-` for
    /// stdout).
    dir: PathBuf,
    /// Copy files instead of hard-linking the store's read-only objects.
    #[arg(long)]
    copy: bool,
    /// Write the tree as a tar stream instead (files 0644 or 0755, a fixed mtime).
    #[arg(long, conflicts_with_all = ["copy", "jobs", "json"])]
    tar: bool,
    /// Directories materialised at once (default: 4 per core).
    #[arg(long, short, value_name = "N")]
    jobs: Option<usize>,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

/// Arguments of `casket ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// The tree: a root digest `HASH/SIZE` or a ref name.
    tree: String,
    /// List every entry of the tree, not only the top level.
    #[arg(long, short)]
    recursive: bool,
    /// Print one JSON array.
    #[arg(long)]
    json: bool,
}

/// Captures a directory.
pub async fn capture(cx: &Context, args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let options = CaptureOptions {
        function: args.digest_function,
        mtime: args.mtime,
        unix_mode: args.unix_mode,
        concurrency: args.jobs.unwrap_or_else(casket_tree::default_concurrency),
        ..CaptureOptions::default()
    };
    let bar = Bar::new("capture", cx.quiet);
    let started = std::time::Instant::now();
    let captured = casket_tree::capture(cx.blobs.as_ref(), &args.dir, &options, &bar)
        .await
        .with_context(|| format!("cannot capture {}", args.dir.display()))?;
    bar.finish();
    if let Some(name) = &args.r#ref {
        cx.refs.set(name, &captured.root).await?;
    }
    if args.json {
        return print_json(&json!({
            "root": captured.root.to_string(),
            "ref": args.r#ref.map(|r| r.to_string()),
            "files": captured.files,
            "directories": captured.directories,
            "symlinks": captured.symlinks,
            "file_bytes": captured.file_bytes,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    out!("{}", captured.root);
    Ok(ExitCode::SUCCESS)
}

/// Checks a tree out.
pub async fn checkout(cx: &Context, args: CheckoutArgs) -> anyhow::Result<ExitCode> {
    let root = cx.resolve(&args.tree).await?;
    if args.tar {
        let out: Box<dyn std::io::Write + Send> = if args.dir == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::File::create_new(&args.dir)
                .with_context(|| format!("cannot create {}", args.dir.display()))?;
            Box::new(std::io::BufWriter::new(file))
        };
        let tree = casket_vdir::CasDirectory::open(cx.blobs.clone(), &root).await?;
        tree.snapshot()
            .await?
            .export_tar(out)
            .await
            .with_context(|| format!("cannot write {root} as tar"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = CheckoutOptions {
        mode: if args.copy {
            CheckoutMode::Copy
        } else {
            CheckoutMode::Hardlink
        },
        concurrency: args.jobs.unwrap_or_else(casket_tree::default_concurrency),
        ..CheckoutOptions::default()
    };
    let bar = Bar::new("checkout", cx.quiet);
    let started = std::time::Instant::now();
    let done = casket_tree::checkout(&cx.blobs, &root, &args.dir, &options, &bar)
        .await
        .with_context(|| format!("cannot check out {root} into {}", args.dir.display()))?;
    bar.finish();
    if args.json {
        return print_json(&json!({
            "root": root.to_string(),
            "linked": done.linked,
            "copied": done.copied,
            "directories": done.directories,
            "symlinks": done.symlinks,
            "file_bytes": done.file_bytes,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists a tree.
pub async fn ls(cx: &Context, args: LsArgs) -> anyhow::Result<ExitCode> {
    let root = cx.resolve(&args.tree).await?;
    let tree;
    let top;
    let entries: Vec<(String, &Node)> = if args.recursive {
        tree = Tree::load(cx.blobs.as_ref(), &root, casket_tree::default_concurrency()).await?;
        tree.walk()
    } else {
        let bytes = cx
            .blobs
            .get_bytes(&root)
            .await?
            .ok_or_else(|| anyhow!("directory {root} is not in the store"))?;
        top = Directory::decode(root.function(), &bytes)
            .with_context(|| format!("{root} is not a valid directory"))?;
        top.entries()
            .map(|(name, node)| (name.to_string(), node))
            .collect()
    };
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|(path, node)| entry_json(path, node))
            .collect();
        return print_json(&serde_json::Value::Array(list));
    }
    for (path, node) in entries {
        match node {
            Node::File(f) => {
                let kind = if f.executable { "exec" } else { "file" };
                out!("{kind:<4} {:>12} {}  {path}", f.digest.size(), f.digest);
            }
            Node::Directory(d) => out!("dir  {:>12} {d}  {path}/", "-"),
            Node::Symlink(s) => out!("link {:>12} {:<71}  {path} -> {}", "-", "-", s.target()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_json(path: &str, node: &Node) -> serde_json::Value {
    match node {
        Node::File(f) => json!({
            "path": path, "type": "file", "digest": f.digest.to_string(),
            "size": f.digest.size(), "executable": f.executable,
        }),
        Node::Directory(d) => json!({ "path": path, "type": "directory", "digest": d.to_string() }),
        Node::Symlink(s) => json!({ "path": path, "type": "symlink", "target": s.target() }),
    }
}
