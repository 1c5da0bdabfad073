//! `import` and `diff`: virtual-directory operations on trees and directories.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use casket_model::RefName;
use casket_tree::CaptureOptions;
use casket_vdir::{CasDirectory, Directory, FileDirectory, ImportFilter, ImportOptions, Snapshot};
use clap::Args;
use serde_json::json;

use super::{Context, print_json};
use casket_store::RefStore;

/// Arguments of `casket import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// What to import: a directory, a root digest `HASH/SIZE` or a ref name (an existing
    /// directory wins; write `./NAME` to be explicit).
    source: String,
    /// Where to import: a directory (changed in place) or a tree by digest or ref (a new tree
    /// is stored and its digest printed).
    #[arg(long, value_name = "DEST")]
    into: String,
    /// Import only the paths listed in this file, one per line (`-` for stdin).
    #[arg(long, value_name = "LIST")]
    files: Option<PathBuf>,
    /// Report listed paths missing from the source instead of failing.
    #[arg(long)]
    ignore_missing: bool,
    /// Into a directory: hard-link files instead of copying them.
    #[arg(long)]
    link: bool,
    /// Point this ref at the new tree (tree destinations only).
    #[arg(long, value_name = "NAME")]
    r#ref: Option<RefName>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `casket diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first tree: a directory, a root digest or a ref.
    a: String,
    /// The second tree: a directory, a root digest or a ref.
    b: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// A directory on disk or a tree in the store.
enum Operand {
    Disk(FileDirectory),
    Tree(CasDirectory),
}

impl Operand {
    async fn open(cx: &Context, spec: &str) -> anyhow::Result<Operand> {
        if Path::new(spec).is_dir() {
            let real = std::fs::canonicalize(spec).with_context(|| format!("cannot resolve {spec}"))?;
            return Ok(Operand::Disk(FileDirectory::open(real)?));
        }
        let root = cx.resolve(spec).await?;
        let tree = CasDirectory::open(cx.blobs.clone(), &root)
            .await
            .with_context(|| format!("cannot open the tree {root}"))?;
        Ok(Operand::Tree(tree))
    }

    fn directory(&self) -> &dyn Directory {
        match self {
            Operand::Disk(dir) => dir,
            Operand::Tree(tree) => tree,
        }
    }

    /// A snapshot whose files compare by content: directories are captured first.
    async fn stored_snapshot(&self, cx: &Context) -> anyhow::Result<Snapshot> {
        match self {
            Operand::Tree(tree) => Ok(tree.snapshot().await?),
            Operand::Disk(dir) => {
                let captured =
                    casket_tree::capture(cx.blobs.as_ref(), dir.path(), &CaptureOptions::default(), &())
                        .await
                        .with_context(|| format!("cannot capture {}", dir.path().display()))?;
                Ok(CasDirectory::open(cx.blobs.clone(), &captured.root)
                    .await?
                    .snapshot()
                    .await?)
            }
        }
    }
}

fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Imports a tree or directory into another.
pub async fn import(cx: &Context, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let source = Operand::open(cx, &args.source).await?;
    let dest = Operand::open(cx, &args.into).await?;
    if args.r#ref.is_some() && matches!(dest, Operand::Disk(_)) {
        bail!("--ref names a tree: the destination {} is a directory", args.into);
    }
    let filter = match &args.files {
        Some(list) => ImportFilter::Paths(read_list(list)?),
        None => ImportFilter::All,
    };
    let options = ImportOptions {
        ignore_missing: args.ignore_missing,
        link: args.link,
    };
    let report = dest
        .directory()
        .import_files(source.directory(), &filter, &options)
        .await
        .with_context(|| format!("cannot import {} into {}", args.source, args.into))?;
    let root = match &dest {
        Operand::Tree(tree) => Some(tree.digest().await?),
        Operand::Disk(_) => None,
    };
    if let (Some(name), Some(root)) = (&args.r#ref, &root) {
        cx.refs.set(name, root).await?;
    }
    if args.json {
        return print_json(&json!({
            "root": root.map(|r| r.to_string()),
            "into": args.into,
            "ref": args.r#ref.map(|r| r.to_string()),
            "report": report,
        }));
    }
    match root {
        Some(root) => out!("{root}"),
        None => out!("imported into {}", args.into),
    }
    out!("written {} files and symlinks", report.written.len());
    for path in &report.overwritten {
        out!("overwritten {path}");
    }
    for path in &report.ignored {
        out!("ignored {path} (a non-empty directory is in its place)");
    }
    for skipped in &report.skipped {
        out!(
            "skipped {} ({:?}: a tree cannot hold it)",
            skipped.path,
            skipped.kind
        );
    }
    for path in &report.missing {
        out!("missing {path}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the differences between two trees; exits 1 when they differ.
pub async fn diff(cx: &Context, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let mut a = Operand::open(cx, &args.a).await?.stored_snapshot(cx).await?;
    let mut b = Operand::open(cx, &args.b).await?.stored_snapshot(cx).await?;
    let diff = a.diff(&mut b)?;
    let same = diff.added.is_empty() && diff.removed.is_empty() && diff.changed.is_empty();
    if args.json {
        print_json(&serde_json::to_value(&diff)?)?;
    } else {
        let mut lines: Vec<(&str, char)> = diff
            .added
            .iter()
            .map(|p| (p.as_str(), '+'))
            .chain(diff.removed.iter().map(|p| (p.as_str(), '-')))
            .chain(diff.changed.iter().map(|p| (p.as_str(), '~')))
            .collect();
        lines.sort_by(|x, y| x.0.split('/').cmp(y.0.split('/')));
        for (path, sign) in lines {
            out!("{sign} {path}");
        }
    }
    Ok(if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
