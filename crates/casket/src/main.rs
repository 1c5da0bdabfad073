//! `casket`: the command-line front end. The only crate that uses `anyhow` and prints.
// Printing results is this crate's job, and in a binary every `pub` is crate-visible anyway.
#![allow(clippy::print_stdout, unreachable_pub)]

mod commands;
mod config;
mod progress;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A content-addressable artifact cache for build systems.
#[derive(Parser, Debug)]
#[command(
    name = "casket",
    version,
    after_help = "Examples:
  casket serve --allow-push                                    a cache for Bazel and BuildStream
  casket push ./out --remote grpc://cache:50051 --ref p/app/1  upload a tree and name it
  casket pull p/app/1 --remote grpc://cache:50051 ./app        download and check it out
  casket capture ./build/output --ref myproject/app/1a2b3c   store a directory, name it
  casket checkout myproject/app/1a2b3c /tmp/app                materialise it (hard links)
  casket ls -r myproject/app/1a2b3c                            list it
  casket gc --quota 10G                                        expire least recently used
  casket fsck --repair                                         re-hash everything

The store is $CASKET_STORE, or --store DIR, or $XDG_CACHE_HOME/casket (~/.cache/casket).
Exit status: 0 success, 1 failure, 2 usage error."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug)]
struct Global {
    /// The local store directory.
    #[arg(long, global = true, env = "CASKET_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// fsync every object before it becomes visible (survives power loss, slower).
    #[arg(long, global = true)]
    fsync: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the store over gRPC: REAPI cache, ByteStream, BuildStream refs, health.
    #[command(after_help = "Example: casket serve --listen 127.0.0.1:50051 --allow-push")]
    Serve(commands::serve::ServeArgs),
    /// Upload a tree (a directory, digest or ref) to a REAPI server, optionally naming it.
    #[command(after_help = "Examples:
  casket push ./out --remote grpc://cache:50051 --ref project/app/1a2b
  casket push project/app/1a2b --remote grpcs://cache:443 --token-file ~/.casket-token")]
    Push(commands::remote::PushArgs),
    /// Download a tree (by digest or server-side ref) into the store, optionally checking it out.
    #[command(after_help = "Example: casket pull project/app/1a2b --remote grpc://cache:50051 ./app")]
    Pull(commands::remote::PullArgs),
    /// Store a directory as a Merkle tree and print its root digest.
    #[command(after_help = "Example: casket capture ./out --ref project/element/key")]
    Capture(commands::tree::CaptureArgs),
    /// Materialise a tree (by digest or ref) into a new or empty directory.
    #[command(after_help = "Example: casket checkout project/element/key ./out --copy")]
    Checkout(commands::tree::CheckoutArgs),
    /// Import a tree or directory into another by BuildStream's rules, without a checkout.
    #[command(after_help = "Examples:
  casket import project/base/1 --into project/app/2 --ref project/app/2-staged
  casket import ./overlay --into ./sysroot --files overlay.list")]
    Import(commands::vdir::ImportArgs),
    /// List the paths added, removed and changed between two trees or directories.
    #[command(after_help = "Example: casket diff project/app/1 project/app/2")]
    Diff(commands::vdir::DiffArgs),
    /// List a tree's entries.
    #[command(after_help = "Example: casket ls -r --json project/element/key")]
    Ls(commands::tree::LsArgs),
    /// Write a blob's content to stdout.
    #[command(
        after_help = "Example: casket cat e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/0"
    )]
    Cat(commands::blob::CatArgs),
    /// Store a file as a blob and print its digest.
    #[command(after_help = "Example: casket put ./large.bin")]
    Put(commands::blob::PutArgs),
    /// Set, get, list and remove refs (names of trees).
    #[command(subcommand)]
    Ref(commands::refs::RefCommand),
    /// Expire least-recently-used objects down to a quota.
    #[command(after_help = "Example: casket gc --quota 10G --grace 1h")]
    Gc(commands::maintenance::GcArgs),
    /// Show exact store usage.
    Du(commands::maintenance::DuArgs),
    /// Re-hash every object and check every ref's tree is complete.
    #[command(after_help = "Example: casket fsck --repair")]
    Fsck(commands::maintenance::FsckArgs),
    /// Run as BuildStream 2's local CAS daemon (buildbox-casd's flags; see --help-casd).
    #[command(after_help = "Examples:
  casket casd --bind=unix:/tmp/casd.sock ~/.cache/buildstream
  ln -s $(command -v casket) ~/bin/buildbox-casd    BuildStream 2 then uses casket")]
    Casd(commands::casd::CasdArgs),
}

fn main() -> ExitCode {
    // Run as `buildbox-casd` (a link on PATH), casket is BuildStream 2's CAS daemon.
    let program = std::env::args_os().next().map(PathBuf::from);
    if program.as_deref().and_then(|p| p.file_name()) == Some(commands::casd::CASD_NAME.as_ref()) {
        return commands::casd::run(std::env::args().skip(1).collect());
    }
    let cli = Cli::parse();
    if let Command::Casd(casd) = cli.command {
        let args = match casd.args.first().map(String::as_str) {
            Some("--help-casd") => vec!["--help".to_owned()],
            _ => casd.args,
        };
        return commands::casd::run(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CASKET_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("casket: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli.global, cli.command)) {
        Ok(code) => code,
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("casket: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// True when output failed because the reader went away (`casket ls | head`).
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
