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
    /// The blob's digest, `HASH/SIZE`, or its hash alone (`[blake3:]HASH`).
    #[arg(value_parser = parse_blob)]
    blob: Blob,
}

/// A blob named by its digest or by its hash alone.
#[derive(Clone, Debug)]
enum Blob {
    Digest(Digest),
    Hash(DigestFunction, [u8; 32]),
}

fn parse_blob(text: &str) -> Result<Blob, String> {
    if text.contains('/') {
        return text
            .parse()
            .map(Blob::Digest)
            .map_err(|e: casket_model::DigestError| e.to_string());
    }
    let (function, hash) = match text.split_once(':') {
        Some((name, hash)) => (parse_function(name)?, hash),
        None => (DigestFunction::Sha256, text),
    };
    let hash = casket_model::parse_hash(hash).map_err(|e| e.to_string())?;
    Ok(Blob::Hash(function, hash))
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
    let digest = match args.blob {
        Blob::Digest(digest) => digest,
        Blob::Hash(function, hash) => cx.blobs.stored_digest(function, &hash).await?.ok_or_else(|| {
            let hex = casket_model::hex_digits(&hash);
            anyhow!(
                "no blob with hash {} is in the store",
                String::from_utf8_lossy(&hex)
            )
        })?,
    };
    let mut stream = cx
        .blobs
        .read(&digest, ReadRange::ALL)
        .await?
        .ok_or_else(|| anyhow!("blob {digest} is not in the store"))?;
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
