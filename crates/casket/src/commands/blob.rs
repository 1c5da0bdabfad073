//! `cat` and `put`: single blobs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use casket_model::{Digest, DigestFunction};
use casket_store::ReadRange;
use clap::Args;
use futures::TryStreamExt;

use super::Context;

/// Arguments of `casket cat`.
#[derive(Args, Debug)]
pub struct CatArgs {
    /// The blob's digest, `HASH/SIZE`.
    digest: Digest,
}

/// Arguments of `casket put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The file to store.
    file: PathBuf,
    /// Hash with this function.
    #[arg(long, default_value = "sha256", value_parser = parse_function)]
    digest_function: DigestFunction,
}

/// Parses a digest function name for clap.
pub fn parse_function(name: &str) -> Result<DigestFunction, String> {
    DigestFunction::from_name(name)
        .ok_or_else(|| format!("unknown digest function {name:?} (sha256 or blake3)"))
}

/// Streams a blob to stdout.
pub async fn cat(cx: &Context, args: CatArgs) -> anyhow::Result<ExitCode> {
    let mut stream = cx
        .blobs
        .read(&args.digest, ReadRange::ALL)
        .await?
        .ok_or_else(|| anyhow!("blob {} is not in the store", args.digest))?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.try_next().await? {
        match out.write_all(&chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            other => other.context("write to stdout")?,
        }
    }
    out.flush().context("write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Stores a file and prints its digest.
pub async fn put(cx: &Context, args: PutArgs) -> anyhow::Result<ExitCode> {
    let digest = cx
        .blobs
        .ingest_file(&args.file, args.digest_function)
        .await
        .with_context(|| format!("cannot store {}", args.file.display()))?;
    out!("{digest}");
    Ok(ExitCode::SUCCESS)
}
