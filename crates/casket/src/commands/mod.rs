//! One module per command group; each turns parsed arguments into library calls and output.

/// `println!` that returns write errors (a closed pipe ends the command quietly in `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

pub mod blob;
pub mod casd;
pub mod maintenance;
pub mod refs;
pub mod remote;
pub mod serve;
pub mod tree;
pub mod vdir;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use casket_model::{Digest, RefName};
use casket_store::{BlobStore, BlockOptions, BlockStore, DiskOptions, DiskRefs, DiskStore, RefStore};

use crate::{Command, Global};

/// What every command works on: the local store and its refs.
pub struct Context {
    /// The disk store (of a block store, the one holding its large blobs, records and refs).
    pub disk: DiskStore,
    /// The block store, when the store is one (a server's store, `kind = "blocks"`).
    pub block: Option<BlockStore>,
    /// The store as a trait object.
    pub blobs: Arc<dyn BlobStore>,
    /// Its refs.
    pub refs: DiskRefs,
    /// Suppress progress bars.
    pub quiet: bool,
}

impl Context {
    fn open(global: &Global) -> anyhow::Result<Self> {
        let root = match &global.store {
            Some(root) => root.clone(),
            None => default_store()?,
        };
        let context = || format!("cannot open the store at {}", root.display());
        if BlockStore::exists_at(&root) {
            let block = BlockStore::open(
                &root,
                BlockOptions {
                    fsync: global.fsync,
                    ..BlockOptions::default()
                },
            )
            .with_context(context)?;
            return Ok(Context {
                disk: block.disk().clone(),
                refs: DiskRefs::new(block.disk()),
                blobs: Arc::new(block.clone()),
                block: Some(block),
                quiet: global.quiet,
            });
        }
        let disk = DiskStore::open(
            &root,
            DiskOptions {
                fsync: global.fsync,
                ..DiskOptions::default()
            },
        )
        .with_context(context)?;
        Ok(Context {
            refs: DiskRefs::new(&disk),
            blobs: Arc::new(disk.clone()),
            block: None,
            disk,
            quiet: global.quiet,
        })
    }

    /// A digest given as `HASH/SIZE`, or the root a ref points at.
    pub async fn resolve(&self, target: &str) -> anyhow::Result<Digest> {
        if let Ok(digest) = target.parse::<Digest>() {
            return Ok(digest);
        }
        let name = RefName::new(target)
            .map_err(|e| anyhow!("{target:?} is neither a digest (HASH/SIZE) nor a ref: {e}"))?;
        self.refs
            .get(&name)
            .await?
            .ok_or_else(|| anyhow!("no ref named {name:?} in {}", self.disk.root().display()))
    }
}

fn default_store() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or_else(|| {
            anyhow!("no --store, $CASKET_STORE, $XDG_CACHE_HOME or $HOME to place the store in")
        })?;
    Ok(cache.join("casket"))
}

/// Runs one command; `Ok` carries the exit code (fsck reports problems with 1).
pub async fn run(global: Global, command: Command) -> anyhow::Result<ExitCode> {
    // The server opens its own stores: its configuration file may name them.
    let command = match command {
        Command::Serve(args) => return serve::serve(&global, args).await,
        Command::Gc(args) if args.retention.is_some() => return maintenance::expire_bucket(args).await,
        other => other,
    };
    let cx = Context::open(&global)?;
    match command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Casd(_) => unreachable!("main runs the daemon on its own runtime"),
        Command::Push(args) => remote::push(&cx, args).await,
        Command::Pull(args) => remote::pull(&cx, args).await,
        Command::Capture(args) => tree::capture(&cx, args).await,
        Command::Checkout(args) => tree::checkout(&cx, args).await,
        Command::Ls(args) => tree::ls(&cx, args).await,
        Command::Import(args) => vdir::import(&cx, args).await,
        Command::Diff(args) => vdir::diff(&cx, args).await,
        Command::Cat(args) => blob::cat(&cx, args).await,
        Command::Put(args) => blob::put(&cx, args).await,
        Command::Ref(command) => refs::run(&cx, command).await,
        Command::Gc(args) => maintenance::gc(&cx, args).await,
        Command::Du(args) => maintenance::du(&cx, args).await,
        Command::Fsck(args) => maintenance::fsck(&cx, args).await,
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<ExitCode> {
    out!("{value}");
    Ok(ExitCode::SUCCESS)
}
