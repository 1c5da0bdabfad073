//! `casket casd`, or casket run as `buildbox-casd`: BuildStream 2's local CAS daemon
//! (`casket_casd`). It parses casd's own command line, logs as casd does (to stderr, which
//! BuildStream sends to its log), and exits 0 at once on SIGTERM.

use std::process::ExitCode;

use clap::Args;

/// The program name BuildStream looks for on PATH.
pub const CASD_NAME: &str = "buildbox-casd";

/// Arguments of `casket casd`: buildbox-casd's, passed through.
#[derive(Args, Debug)]
pub struct CasdArgs {
    /// buildbox-casd's flags and cache root, e.g. `--bind=unix:/tmp/casd.sock ~/.cache/buildstream`
    /// (see `casket casd --help-casd`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "CASD ARGS")]
    pub args: Vec<String>,
}

/// Runs the daemon with casd's arguments (without the program name).
pub fn run(args: Vec<String>) -> ExitCode {
    let options = match casket_casd::parse(args) {
        Ok(casket_casd::Invocation::Version) => {
            // BuildStream reads the version from the first line.
            println!(
                "{CASD_NAME} {} (casket {}, a drop-in replacement)",
                casket_casd::CASD_VERSION,
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Ok(casket_casd::Invocation::Help) => {
            println!("{}", help());
            return ExitCode::SUCCESS;
        }
        Ok(casket_casd::Invocation::Run(options)) => options,
        Err(e) => {
            eprintln!("{CASD_NAME} (casket): {e}\n\n{}", help());
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CASKET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&options.log_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{CASD_NAME} (casket): cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async { casket_casd::run(*options, casket_casd::termination()).await });
    // Blocking work still running (a capture, an eviction) is abandoned, not waited for:
    // BuildStream reports an exit slower than half a second, or not 0, as a bug. Every
    // write is atomic, so nothing is left half-done.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{CASD_NAME} (casket): {e}");
            ExitCode::FAILURE
        }
    }
}

fn help() -> String {
    format!(
        "usage: {CASD_NAME} [--bind=unix:PATH | --bind=HOST:PORT]... [OPTIONS] CACHE_ROOT
casket's replacement for buildbox-casd {}, BuildStream 2's local CAS daemon.

  --bind=unix:PATH|HOST:PORT   where to listen (several allowed)
  --log-level=LEVEL            trace, debug, info, warning or error
  --quota-high=SIZE            most the cache may use (e.g. 50G)
  --quota-low=SIZE|N%          expiry frees down to this (default 65%)
  --cleanup-threshold=N%       background expiry starts here
  --reserved=SIZE              disk space always left free
  --protect-session-blobs      never expire what this run used
  --cas-remote=URL             a remote cache behind the local one (--cas-instance,
                               --cas-server-cert, --cas-client-key, --cas-client-cert,
                               --cas-access-token, --cas-retry-limit, --cas-retry-delay,
                               --cas-request-timeout, --cas-keepalive-time)
  --read-only-remote           never write to the remote
  --local-server-instance=NAME another name for the local cache

Local execution (--buildbox-run, --jobs) and casd's tuning flags are accepted and ignored;
Remote Asset, ActionCache and Execution remotes on the command line are refused (BuildStream
configures them with GetInstanceNameForRemotes).",
        casket_casd::CASD_VERSION
    )
}
