//! Keeping a disk store healthy: LRU expiry to a quota (`gc`) and integrity checks (`fsck`).
//!
//! Both need trees (what a ref keeps alive), which is why they live here and not in the store.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use casket_model::{Digest, RefName};
use casket_store::{BlobStore, CorruptRef, DiskRefs, DiskStore, RefEntry, RefStore, Usage};
use futures::{StreamExt, TryStreamExt};

use crate::Progress;
use crate::error::{Result, TreeError, blocking, io_error, store_error};

/// How `gc` expires.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Bytes on disk the store may use after expiry.
    pub quota: u64,
    /// Objects used, and trees of refs set or read, within this period are never removed.
    pub grace: Duration,
}

/// What `gc` did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Exact usage before.
    pub before: Usage,
    /// Exact usage after.
    pub after: Usage,
    /// Objects removed.
    pub removed_blobs: u64,
    /// Objects over quota kept because a recently used ref's tree needs them.
    pub kept_protected: u64,
    /// Objects over quota kept because they were used within the grace period.
    pub kept_recent: u64,
    /// Refs removed because expiry took part of their tree.
    pub removed_refs: Vec<RefName>,
    /// Temp files of interrupted writes removed.
    pub removed_temp_files: u64,
    /// Whether usage is now within the quota.
    pub quota_met: bool,
}

/// Expires least-recently-used objects until the store's disk usage is within the quota.
///
/// Never removes an object used within the grace period, nor one reachable from a ref set or
/// read within it. Refs whose trees lose an object are removed with it, so every ref left
/// names a complete tree (if it did before).
pub async fn gc(
    store: &DiskStore,
    refs: &DiskRefs,
    options: &GcOptions,
    progress: &dyn Progress,
) -> Result<GcReport> {
    let mut report = GcReport {
        removed_temp_files: remove_stale_temp_files(store, options.grace).await?,
        ..Default::default()
    };
    let scan = {
        let store = store.clone();
        blocking(move || store.scan_objects().map_err(store_error("."))).await?
    };
    report.before = scan.usage();
    report.after = report.before;
    if report.before.stored_bytes <= options.quota {
        report.quota_met = true;
        return Ok(report);
    }

    let recent = |t: SystemTime| {
        SystemTime::now()
            .duration_since(t)
            .map_or(true, |age| age < options.grace)
    };
    // Looking at trees must not make them recent.
    let view = store.untouched();
    let all_refs = refs.list().await.map_err(store_error("refs"))?;
    let mut reachable_by_ref = Vec::with_capacity(all_refs.len());
    let mut protected = HashSet::new();
    for entry in all_refs {
        let reachable = reachable_digests(&view, &entry.digest).await?;
        if recent(entry.touched) {
            protected.extend(reachable.iter().copied());
        }
        reachable_by_ref.push((entry, reachable));
    }

    let mut objects = scan.objects;
    objects.sort_by_key(|o| o.last_used);
    progress.start(objects.len() as u64, report.before.stored_bytes - options.quota);
    let mut removed = HashSet::new();
    for object in objects {
        if report.after.stored_bytes <= options.quota {
            break;
        }
        if protected.contains(&object.digest) {
            report.kept_protected += 1;
        } else if recent(object.last_used) {
            report.kept_recent += 1;
        } else if store
            .delete(&object.digest)
            .await
            .map_err(store_error(object.digest.to_string()))?
        {
            report.after.blobs -= 1;
            report.after.bytes -= object.digest.size();
            report.after.stored_bytes -= object.stored_bytes;
            report.removed_blobs += 1;
            removed.insert(object.digest);
            progress.advance(1, object.stored_bytes);
        }
    }
    for (entry, reachable) in reachable_by_ref {
        if !reachable.is_disjoint(&removed) && refs.delete(&entry.name).await.map_err(store_error("refs"))? {
            report.removed_refs.push(entry.name);
        }
    }
    report.quota_met = report.after.stored_bytes <= options.quota;
    Ok(report)
}

/// Every digest reachable from `root` that can be found: missing or invalid directories are
/// skipped, so an incomplete tree still protects what is left of it. Store failures are errors.
pub async fn reachable_digests(store: &dyn BlobStore, root: &Digest) -> Result<HashSet<Digest>> {
    let walk = crate::walk(store, root, crate::default_concurrency(), crate::Gaps::Skip).await?;
    Ok(walk.reachable())
}

async fn remove_stale_temp_files(store: &DiskStore, min_age: Duration) -> Result<u64> {
    let store = store.clone();
    blocking(move || {
        let stale = store.stale_temp_files(min_age).map_err(store_error("tmp"))?;
        for path in &stale {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error("remove", path)(e));
                }
                _ => {}
            }
        }
        Ok(stale.len() as u64)
    })
    .await
}

/// How `fsck` checks.
#[derive(Clone, Debug)]
pub struct FsckOptions {
    /// Remove corrupt objects, stray files and temp files left by interrupted writes.
    pub repair: bool,
    /// Objects hashed at once.
    pub concurrency: usize,
}

/// An object whose content does not hash to its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptObject {
    /// Its name.
    pub digest: Digest,
    /// What its content hashes to.
    pub actual: Digest,
}

/// A ref whose tree cannot be fully checked out.
#[derive(Clone, Debug)]
pub struct IncompleteRef {
    /// The ref.
    pub name: RefName,
    /// The root it names.
    pub root: Digest,
    /// The first problem found, naming a path in the tree.
    pub problem: String,
}

/// What `fsck` found.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// Objects re-hashed.
    pub blobs: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Objects that do not match their names.
    pub corrupt: Vec<CorruptObject>,
    /// Files in the object folders that are not objects.
    pub strays: Vec<PathBuf>,
    /// Temp files of interrupted (or still running) writes; never visible as objects.
    pub temp_files: Vec<PathBuf>,
    /// Refs whose trees are incomplete.
    pub incomplete_refs: Vec<IncompleteRef>,
    /// Ref files that are not valid refs.
    pub corrupt_refs: Vec<CorruptRef>,
    /// Whether the problems above were removed.
    pub repaired: bool,
}

impl FsckReport {
    /// True when nothing is corrupt or incomplete (temp files are not a fault).
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.strays.is_empty()
            && self.incomplete_refs.is_empty()
            && self.corrupt_refs.is_empty()
    }
}

/// Re-hashes every object, then checks that every ref is readable and its tree complete. With
/// `repair`, corrupt objects, strays, temp files and unreadable ref files are removed before the
/// trees are checked, so the refs they broke are reported. Nothing it reads counts as use. The
/// trees are read from `trees`: the store itself (`store.untouched()`), or the block store whose
/// large blobs, records and refs `store` holds, through a view that does not touch either.
pub async fn fsck(
    store: &DiskStore,
    refs: &DiskRefs,
    trees: &dyn BlobStore,
    options: &FsckOptions,
    progress: &dyn Progress,
) -> Result<FsckReport> {
    let scan = {
        let store = store.clone();
        blocking(move || store.scan_objects().map_err(store_error("."))).await?
    };
    let usage = scan.usage();
    progress.start(usage.blobs, usage.bytes);
    let mut report = FsckReport {
        blobs: usage.blobs,
        bytes: usage.bytes,
        strays: scan.strays,
        temp_files: {
            let store = store.clone();
            blocking(move || store.stale_temp_files(Duration::ZERO).map_err(store_error("tmp"))).await?
        },
        repaired: options.repair,
        ..Default::default()
    };
    report.corrupt = futures::stream::iter(scan.objects)
        .map(|object| {
            let store = store.clone();
            async move {
                let digest = object.digest;
                let actual = blocking(move || {
                    store
                        .verify_object(&digest)
                        .map_err(store_error(digest.to_string()))
                })
                .await?;
                progress.advance(1, digest.size());
                Ok::<_, TreeError>(actual.map(|actual| CorruptObject { digest, actual }))
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_filter_map(|c| async move { Ok(c) })
        .try_collect()
        .await?;
    report.corrupt.sort_by_key(|c| c.digest);

    if options.repair {
        for c in &report.corrupt {
            store
                .delete(&c.digest)
                .await
                .map_err(store_error(c.digest.to_string()))?;
        }
        for path in report.strays.iter().chain(&report.temp_files) {
            match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error("remove", path)(e));
                }
                _ => {}
            }
        }
    }

    let ref_scan = refs.scan().await.map_err(store_error("refs"))?;
    if options.repair {
        for corrupt in &ref_scan.corrupt {
            tokio::fs::remove_file(&corrupt.path)
                .await
                .map_err(io_error("remove", &corrupt.path))?;
        }
    }
    report.corrupt_refs = ref_scan.corrupt;
    for RefEntry { name, digest, .. } in ref_scan.refs {
        if let Some(problem) = crate::Tree::problem(trees, &digest).await? {
            report.incomplete_refs.push(IncompleteRef {
                name,
                root: digest,
                problem: problem.to_string(),
            });
        }
    }
    Ok(report)
}
