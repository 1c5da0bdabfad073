//! `gc`, `du` and `fsck`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use casket_cache::config::open_bucket;
use casket_cache::retention::{RetentionOptions, expire};

use casket_store::{BlobStore, BlockStore};
use casket_tree::maintenance::{FsckOptions, GcOptions};
use clap::Args;
use serde_json::json;

use super::{Context, print_json};
use crate::config::ServeConfig;
use crate::progress::Bar;
use crate::units::{format_size, parse_duration, parse_size};
use casket_store::RefStore;

/// Arguments of `casket gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Disk space the store may use afterwards, e.g. `10G`, `512M` (a disk store).
    #[arg(long, value_parser = parse_size, required_unless_present = "retention", conflicts_with = "retention")]
    quota: Option<u64>,
    /// Never remove what was used, or is reachable from a ref set or read, this recently (a
    /// disk store); never remove blobs written this recently (a bucket).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
    /// Expire the bucket of the configuration file's `[store]` (kind `s3`, or `tiered` with an
    /// `s3` far tier): remove refs, action results and assets unused for this long, e.g. `30d`,
    /// then every blob none of the others reach.
    #[arg(long, value_parser = parse_duration, requires = "config")]
    pub(crate) retention: Option<Duration>,
    /// The server's configuration file, naming the bucket.
    #[arg(long, env = "CASKET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// With --retention: report what would be removed, remove nothing.
    #[arg(long, requires = "retention")]
    dry_run: bool,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
}

/// Arguments of `casket du`.
#[derive(Args, Debug)]
pub struct DuArgs {
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
}

/// Arguments of `casket fsck`.
#[derive(Args, Debug)]
pub struct FsckArgs {
    /// Remove corrupt objects, strays and temp files of interrupted writes.
    #[arg(long)]
    repair: bool,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
}

/// Expires a bucket by retention: see `casket_cache::retention`.
pub async fn expire_bucket(args: GcArgs) -> anyhow::Result<ExitCode> {
    let (Some(retention), Some(path)) = (args.retention, &args.config) else {
        bail!("--retention needs --config");
    };
    let config = ServeConfig::load(path)?;
    let s3 = config
        .store
        .as_ref()
        .and_then(|store| store.bucket())
        .ok_or_else(|| {
            anyhow!(
                "{}: [store] is not a bucket (kind s3, or tiered with an s3 far tier)",
                path.display()
            )
        })?;
    let bucket = open_bucket(s3)?;
    let options = RetentionOptions {
        retention,
        grace: args.grace,
        dry_run: args.dry_run,
    };
    let report = expire(&bucket, options)
        .await
        .with_context(|| format!("cannot expire {}", bucket.description))?;
    if args.json {
        return print_json(&json!({
            "bucket": bucket.description,
            "dry_run": args.dry_run,
            "roots_kept": report.roots_kept,
            "roots_removed": report.roots_removed,
            "roots_unreadable": report.roots_unreadable,
            "blobs_listed": report.blobs_listed,
            "blobs_reachable": report.blobs_reachable,
            "blobs_recent": report.blobs_recent,
            "blobs_removed": report.blobs_removed,
            "bytes_removed": report.bytes_removed,
        }));
    }
    out!(
        "{}{}: removed {} roots (kept {}) and {} blobs, {} (kept {} reachable, {} recent)",
        if args.dry_run { "dry run, " } else { "" },
        bucket.description,
        report.roots_removed,
        report.roots_kept,
        report.blobs_removed,
        format_size(report.bytes_removed),
        report.blobs_reachable,
        report.blobs_recent,
    );
    Ok(ExitCode::SUCCESS)
}

/// Expires objects to a quota.
pub async fn gc(cx: &Context, args: GcArgs) -> anyhow::Result<ExitCode> {
    let Some(quota) = args.quota else {
        bail!("--quota is required for a disk store");
    };
    if let Some(block) = &cx.block {
        return expire_blocks(block, quota, &args).await;
    }
    let options = GcOptions {
        quota,
        grace: args.grace,
    };
    let bar = Bar::new("gc", cx.quiet);
    let report = casket_tree::maintenance::gc(&cx.disk, &cx.refs, &options, &bar).await?;
    bar.finish();
    if args.json {
        print_json(&json!({
            "quota": quota,
            "before": { "blobs": report.before.blobs, "bytes": report.before.bytes, "stored_bytes": report.before.stored_bytes },
            "after": { "blobs": report.after.blobs, "bytes": report.after.bytes, "stored_bytes": report.after.stored_bytes },
            "removed_blobs": report.removed_blobs,
            "kept_protected": report.kept_protected,
            "kept_recent": report.kept_recent,
            "removed_refs": report.removed_refs.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "removed_temp_files": report.removed_temp_files,
            "quota_met": report.quota_met,
        }))?;
    } else {
        out!(
            "removed {} objects, {} refs; {} on disk (was {}), quota {}",
            report.removed_blobs,
            report.removed_refs.len(),
            format_size(report.after.stored_bytes),
            format_size(report.before.stored_bytes),
            format_size(quota),
        );
        if !report.quota_met {
            out!(
                "quota not met: {} objects are protected by recent refs, {} were used within {:?}",
                report.kept_protected,
                report.kept_recent,
                args.grace
            );
        }
    }
    Ok(if report.quota_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Expires a block store to a quota: whole blocks, oldest first, their recently used blobs
/// copied forward.
async fn expire_blocks(block: &BlockStore, quota: u64, args: &GcArgs) -> anyhow::Result<ExitCode> {
    let (store, grace) = (block.clone(), args.grace);
    let expiry = tokio::task::spawn_blocking(move || store.expire(quota, grace)).await??;
    let quota_met = expiry.after <= quota;
    if args.json {
        print_json(&json!({
            "quota": quota,
            "before": { "stored_bytes": expiry.before },
            "after": { "stored_bytes": expiry.after },
            "removed_blobs": expiry.removed_blobs,
            "copied_forward": expiry.copied_forward,
            "quota_met": quota_met,
        }))?;
    } else {
        out!(
            "removed {} blobs, copied {} used within {:?} forward; {} on disk (was {}), quota {}",
            expiry.removed_blobs,
            expiry.copied_forward,
            args.grace,
            format_size(expiry.after),
            format_size(expiry.before),
            format_size(quota),
        );
    }
    Ok(if quota_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints exact usage.
pub async fn du(cx: &Context, args: DuArgs) -> anyhow::Result<ExitCode> {
    let usage = cx.blobs.usage().await?;
    let refs = cx.refs.list().await?.len();
    if args.json {
        return print_json(&json!({
            "store": cx.disk.root().display().to_string(),
            "blobs": usage.blobs,
            "bytes": usage.bytes,
            "stored_bytes": usage.stored_bytes,
            "refs": refs,
        }));
    }
    out!(
        "{} blobs, {} of content, {} on disk, {} refs in {}",
        usage.blobs,
        format_size(usage.bytes),
        format_size(usage.stored_bytes),
        refs,
        cx.disk.root().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Re-hashes every object and checks every ref.
pub async fn fsck(cx: &Context, args: FsckArgs) -> anyhow::Result<ExitCode> {
    let options = FsckOptions {
        repair: args.repair,
        concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    // A block store's blocks first: damaged records leave its index, so the refs they broke
    // are reported below.
    let blocks = match &cx.block {
        Some(block) => {
            let store = block.clone();
            Some(tokio::task::spawn_blocking(move || store.verify()).await??)
        }
        None => None,
    };
    let trees: Box<dyn BlobStore> = match &cx.block {
        Some(block) => Box::new(block.untouched()),
        None => Box::new(cx.disk.untouched()),
    };
    let bar = Bar::new("fsck", cx.quiet);
    let mut report =
        casket_tree::maintenance::fsck(&cx.disk, &cx.refs, trees.as_ref(), &options, &bar).await?;
    bar.finish();
    let blocks = blocks.unwrap_or_default();
    report.blobs += blocks.intact + blocks.corrupt.len() as u64;
    let clean = report.is_clean() && blocks.corrupt.is_empty() && blocks.damaged_blocks.is_empty();
    if args.json {
        print_json(&json!({
            "blobs": report.blobs,
            "bytes": report.bytes,
            "corrupt": report.corrupt.iter().map(|c| json!({ "digest": c.digest.to_string(), "actual": c.actual.to_string() })).collect::<Vec<_>>(),
            "strays": report.strays.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "temp_files": report.temp_files.len(),
            "corrupt_refs": report.corrupt_refs.iter().map(|r| json!({ "path": r.path.display().to_string(), "reason": r.reason })).collect::<Vec<_>>(),
            "incomplete_refs": report.incomplete_refs.iter().map(|r| json!({ "name": r.name.as_str(), "root": r.root.to_string(), "problem": r.problem })).collect::<Vec<_>>(),
            "damaged_blocks": blocks.damaged_blocks.iter().map(|(path, valid, len)| json!({ "path": path.display().to_string(), "valid": valid, "len": len })).collect::<Vec<_>>(),
            "damaged_records": blocks.corrupt.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "repaired": report.repaired,
            "clean": clean,
        }))?;
    } else {
        let verb = if report.repaired { "removed" } else { "found" };
        out!("checked {} objects ({})", report.blobs, format_size(report.bytes));
        for c in &report.corrupt {
            out!(
                "corrupt object {} (content hashes to {}), {verb}",
                c.digest,
                c.actual
            );
        }
        for p in &report.strays {
            out!("stray file {}, {verb}", p.display());
        }
        for (path, valid, len) in &blocks.damaged_blocks {
            out!("block {} is damaged after byte {valid} of {len}", path.display());
        }
        for digest in &blocks.corrupt {
            out!("blob {digest} in a damaged block record, dropped from the index");
        }
        if !report.temp_files.is_empty() {
            out!(
                "{} temp files of interrupted or running writes, {verb}",
                report.temp_files.len()
            );
        }
        for r in &report.corrupt_refs {
            out!("unreadable ref file {} ({}), {verb}", r.path.display(), r.reason);
        }
        for r in &report.incomplete_refs {
            out!("incomplete ref {} ({}): {}", r.name, r.root, r.problem);
        }
        if clean {
            out!("clean");
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
