//! `serve`: the gRPC cache server on the local store.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use casket_remote::server::{ServerState, bind, serve as run_server};
use clap::Args;

use super::Context;

/// Arguments of `casket serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed on stderr).
    #[arg(long, default_value = "127.0.0.1:50051", env = "CASKET_LISTEN")]
    listen: SocketAddr,
    /// Let clients write blobs, action results, refs and assets (read-only otherwise).
    #[arg(long)]
    allow_push: bool,
    /// Do not offer the Remote Asset API (BuildStream 1 then falls back to ReferenceStorage).
    #[arg(long)]
    no_remote_asset: bool,
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(cx: &Context, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let listener = bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let state = ServerState {
        remote_asset: !args.no_remote_asset,
        ..ServerState::on_disk(&cx.disk, args.allow_push)
    };
    eprintln!(
        "casket: serving {} on {address} ({})",
        cx.disk.root().display(),
        if args.allow_push {
            "read-write"
        } else {
            "read-only"
        }
    );
    run_server(state, listener, shutdown_signal())
        .await
        .context("server failed")?;
    eprintln!("casket: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM (on SIGINT alone if SIGTERM cannot be watched).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
