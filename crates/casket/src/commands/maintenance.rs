//! `gc`, `du` and `fsck`.

use std::process::ExitCode;
use std::time::Duration;

use casket_tree::maintenance::{FsckOptions, GcOptions};
use clap::Args;
use serde_json::json;

use super::{Context, print_json};
use crate::progress::Bar;
use crate::units::{format_size, parse_duration, parse_size};
use casket_store::RefStore;

/// Arguments of `casket gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Disk space the store may use afterwards, e.g. `10G`, `512M`.
    #[arg(long, value_parser = parse_size)]
    quota: u64,
    /// Never remove what was used, or is reachable from a ref set or read, this recently.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
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

/// Expires objects to a quota.
pub async fn gc(cx: &Context, args: GcArgs) -> anyhow::Result<ExitCode> {
    let options = GcOptions {
        quota: args.quota,
        grace: args.grace,
    };
    let bar = Bar::new("gc", cx.quiet);
    let report = casket_tree::maintenance::gc(&cx.disk, &cx.refs, &options, &bar).await?;
    bar.finish();
    if args.json {
        print_json(&json!({
            "quota": args.quota,
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
            format_size(args.quota),
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
    let bar = Bar::new("fsck", cx.quiet);
    let report = casket_tree::maintenance::fsck(&cx.disk, &cx.refs, &options, &bar).await?;
    bar.finish();
    if args.json {
        print_json(&json!({
            "blobs": report.blobs,
            "bytes": report.bytes,
            "corrupt": report.corrupt.iter().map(|c| json!({ "digest": c.digest.to_string(), "actual": c.actual.to_string() })).collect::<Vec<_>>(),
            "strays": report.strays.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "temp_files": report.temp_files.len(),
            "corrupt_refs": report.corrupt_refs.iter().map(|r| json!({ "path": r.path.display().to_string(), "reason": r.reason })).collect::<Vec<_>>(),
            "incomplete_refs": report.incomplete_refs.iter().map(|r| json!({ "name": r.name.as_str(), "root": r.root.to_string(), "problem": r.problem })).collect::<Vec<_>>(),
            "repaired": report.repaired,
            "clean": report.is_clean(),
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
        if report.is_clean() {
            out!("clean");
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
