//! Expiry of a shared bucket (`casket gc --config FILE --retention 30d`): mark, then sweep.
//!
//! An object store has no access times and many frontends share it, so nothing can expire
//! by LRU as the disk store does. Instead roots decide: refs, action results and Remote Asset
//! entries whose last write is older than the retention are removed (frontends rewrite the
//! ones they read, at most once per `casket_store::TOUCH_INTERVAL`, so a root in use stays
//! young). Every blob reachable from a root that stays is kept; the others are removed if they
//! were written before the grace period (younger ones may belong to an upload whose action
//! result or ref is not written yet).
//!
//! Safety: roots written while gc runs are marked again just before the sweep, which leaves
//! only the seconds between that second mark and the deletes for a new root to name a blob
//! that was unreachable and old. Whatever is removed, no build breaks: an action result is a
//! hit only when every output is present in the bucket (checked past any existence cache),
//! and refs and assets are served only when their trees are complete; an incomplete one is a
//! miss, and the client builds and uploads again.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStoreExt, ObjectStoreBlobs, RecordStore, RefStore, StoreError};
use casket_tree::Tree;
use futures::TryStreamExt;
use prost::Message;

use super::asset::record_roots;

/// How expiry behaves.
#[derive(Clone, Copy, Debug)]
pub struct RetentionOptions {
    /// Roots not written or read for this long are removed.
    pub retention: Duration,
    /// Blobs written this recently are never removed.
    pub grace: Duration,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What expiry did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Refs, action results and assets kept.
    pub roots_kept: u64,
    /// Refs, action results and assets removed.
    pub roots_removed: u64,
    /// Blobs listed in the bucket.
    pub blobs_listed: u64,
    /// Blobs kept because a root reaches them.
    pub blobs_reachable: u64,
    /// Unreachable blobs kept because they are younger than the grace period.
    pub blobs_recent: u64,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Their bytes.
    pub bytes_removed: u64,
}

/// The bucket's blobs and roots.
#[derive(Clone, Copy, Debug)]
pub struct Bucket<'a> {
    /// The blobs.
    pub blobs: &'a ObjectStoreBlobs,
    /// The refs.
    pub refs: &'a dyn RefStore,
    /// The action results.
    pub action_cache: &'a dyn RecordStore,
    /// The Remote Asset entries.
    pub assets: &'a dyn RecordStore,
}

/// Blobs removed per bulk request.
const DELETE_BATCH: usize = 1000;

/// Removes expired roots, then every blob no remaining root reaches (see the module docs).
pub async fn expire(bucket: Bucket<'_>, options: RetentionOptions) -> Result<RetentionReport, StoreError> {
    let started = SystemTime::now();
    let cutoff = started
        .checked_sub(options.retention)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = RetentionReport::default();
    let mut marker = Marker::new(bucket.blobs);
    mark_roots(
        bucket,
        &mut marker,
        &mut report,
        |touched| touched < cutoff,
        options.dry_run,
    )
    .await?;

    let young = started
        .checked_sub(options.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut candidates = Vec::new();
    let mut listed = bucket.blobs.list_blobs();
    while let Some(blob) = listed.try_next().await? {
        report.blobs_listed += 1;
        if marker.reached.contains(&blob.digest) {
            report.blobs_reachable += 1;
        } else if blob.written >= young {
            report.blobs_recent += 1;
        } else {
            candidates.push(blob.digest);
        }
    }
    drop(listed);

    // Roots written while we listed: keep what they reach too.
    let mut late = RetentionReport::default();
    let since = started.checked_sub(Duration::from_secs(1)).unwrap_or(started);
    mark_roots(bucket, &mut marker, &mut late, |touched| touched < since, true).await?;
    let (kept, doomed): (Vec<Digest>, Vec<Digest>) =
        candidates.into_iter().partition(|d| marker.reached.contains(d));
    report.blobs_reachable += kept.len() as u64;
    report.blobs_removed = doomed.len() as u64;
    report.bytes_removed = doomed.iter().map(Digest::size).sum();
    if !options.dry_run {
        for batch in doomed.chunks(DELETE_BATCH) {
            bucket.blobs.delete_many(batch).await?;
        }
    }
    Ok(report)
}

/// Marks what the roots reach; removes (unless `dry_run`) those `expired` says are expired.
async fn mark_roots(
    bucket: Bucket<'_>,
    marker: &mut Marker<'_>,
    report: &mut RetentionReport,
    expired: impl Fn(SystemTime) -> bool,
    dry_run: bool,
) -> Result<(), StoreError> {
    for entry in bucket.refs.scan().await?.refs {
        if expired(entry.touched) {
            report.roots_removed += 1;
            if !dry_run {
                bucket.refs.delete(&entry.name).await?;
            }
        } else {
            report.roots_kept += 1;
            marker.tree(&entry.digest).await?;
        }
    }
    for (records, is_action) in [(bucket.action_cache, true), (bucket.assets, false)] {
        for entry in records.list().await? {
            if expired(entry.touched) {
                report.roots_removed += 1;
                if !dry_run {
                    records.delete(&entry.key).await?;
                }
                continue;
            }
            report.roots_kept += 1;
            let Some(bytes) = records.peek(&entry.key).await? else {
                continue;
            };
            if is_action {
                marker.action_result(&entry.key, &bytes).await?;
            } else if let Some((blobs, directories)) = record_roots(&entry.key, &bytes) {
                marker.reached.extend(blobs);
                for root in directories {
                    marker.tree(&root).await?;
                }
            }
        }
    }
    Ok(())
}

/// The set of blobs reached so far.
struct Marker<'a> {
    blobs: &'a ObjectStoreBlobs,
    reached: HashSet<Digest>,
    trees: HashSet<Digest>,
}

impl<'a> Marker<'a> {
    fn new(blobs: &'a ObjectStoreBlobs) -> Self {
        Marker {
            blobs,
            reached: HashSet::new(),
            trees: HashSet::new(),
        }
    }

    /// Every directory and file of the tree at `root` that exists.
    async fn tree(&mut self, root: &Digest) -> Result<(), StoreError> {
        if !self.trees.insert(*root) {
            return Ok(());
        }
        self.reached.insert(*root);
        // An incomplete tree keeps what it still has; its root is served as a miss anyway.
        if let Ok(tree) = Tree::load(self.blobs, root, casket_tree::default_concurrency()).await {
            self.reached.extend(tree.digests());
        }
        Ok(())
    }

    /// Outputs, logs and output trees (with their files and directories) of an action result
    /// stored at `key` (`FUNCTION/HASH-SIZE`).
    async fn action_result(&mut self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let Some(function) = key.split('/').next().and_then(DigestFunction::from_name) else {
            return Ok(());
        };
        let Ok(result) = reapi::ActionResult::decode(bytes) else {
            return Ok(());
        };
        let proto = |d: Option<&reapi::Digest>| d.and_then(|d| Digest::from_proto(function, d).ok());
        let files = result.output_files.iter().map(|f| f.digest.as_ref());
        let logs = [result.stdout_digest.as_ref(), result.stderr_digest.as_ref()];
        self.reached.extend(files.chain(logs).filter_map(proto));
        for directory in &result.output_directories {
            let Some(tree_digest) = proto(directory.tree_digest.as_ref()) else {
                continue;
            };
            self.reached.insert(tree_digest);
            if let Some(root) = proto(directory.root_directory_digest.as_ref()) {
                self.tree(&root).await?;
            }
            let Ok(Some(bytes)) = self.blobs.get_bytes(&tree_digest).await else {
                continue;
            };
            let Ok(tree) = reapi::Tree::decode(bytes.as_ref()) else {
                continue;
            };
            for directory in tree.root.iter().chain(&tree.children) {
                self.reached
                    .insert(Digest::of(function, &directory.encode_to_vec()));
                let files = directory.files.iter().map(|f| f.digest.as_ref());
                self.reached.extend(files.filter_map(proto));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use casket_model::{Directory, FileNode, Node, RefName};
    use casket_store::{BlobStore, ExistenceCacheOptions, ObjectRecords, ObjectRefs, action_key};

    const DAY: Duration = Duration::from_secs(86400);

    /// Makes the object at `key` (relative to the bucket root) look written `age` ago.
    fn age(root: &Path, key: &str, age: Duration) {
        let file = std::fs::File::options()
            .write(true)
            .open(root.join(key))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let when = SystemTime::now() - age;
        file.set_times(std::fs::FileTimes::new().set_modified(when).set_accessed(when))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn expired_roots_go_and_so_do_the_blobs_only_they_reached() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
            .unwrap_or_else(|e| panic!("{e}"));
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(local);
        let no_cache = ExistenceCacheOptions {
            entries: 0,
            ttl: Duration::ZERO,
        };
        let blobs = ObjectStoreBlobs::with_existence_cache(store.clone(), "", no_cache);
        let refs = ObjectRefs::new(store.clone(), "");
        let action_cache = ObjectRecords::new(store.clone(), "", "ac");
        let assets = ObjectRecords::new(store, "", "assets");
        let put = |data: &'static [u8]| {
            let blobs = blobs.clone();
            async move {
                blobs
                    .put_bytes(DigestFunction::Sha256, Bytes::from_static(data))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            }
        };
        let tree = |file: Digest| {
            let mut directory = Directory::default();
            directory.insert(
                casket_model::EntryName::new("f").unwrap_or_else(|e| panic!("{e}")),
                Node::File(FileNode {
                    digest: file,
                    executable: false,
                    properties: Default::default(),
                }),
            );
            Bytes::from(directory.encode())
        };
        // A fresh ref and an old one, each naming a tree of one file.
        let (fresh_file, old_file) = (put(b"fresh file").await, put(b"old file").await);
        let fresh_tree = blobs
            .put_bytes(DigestFunction::Sha256, tree(fresh_file))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let old_tree = blobs
            .put_bytes(DigestFunction::Sha256, tree(old_file))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name = |s: &str| RefName::new(s).unwrap_or_else(|e| panic!("{e}"));
        refs.set(&name("p/fresh"), &fresh_tree)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        refs.set(&name("p/old"), &old_tree)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // A fresh action result with an output file and stdout.
        let (output, stdout) = (put(b"output").await, put(b"stdout").await);
        let result = reapi::ActionResult {
            output_files: vec![reapi::OutputFile {
                path: "out".into(),
                digest: Some(output.to_proto()),
                ..Default::default()
            }],
            stdout_digest: Some(stdout.to_proto()),
            ..Default::default()
        };
        let action = Digest::of(DigestFunction::Sha256, b"action");
        action_cache
            .put(&action_key(&action), Bytes::from(result.encode_to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Unreachable: one old blob, one just written.
        let (orphan, newborn) = (put(b"orphan").await, put(b"newborn").await);
        for digest in [fresh_file, old_file, fresh_tree, old_tree, output, stdout, orphan] {
            age(dir.path(), &format!("cas/sha256/{}", digest.hash_hex()), 3 * DAY);
        }
        age(dir.path(), "refs/p/old", 3 * DAY);

        let bucket = Bucket {
            blobs: &blobs,
            refs: &refs,
            action_cache: &action_cache,
            assets: &assets,
        };
        let options = RetentionOptions {
            retention: DAY,
            grace: DAY,
            dry_run: true,
        };
        let dry = expire(bucket, options).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            blobs
                .find_missing(&[old_file, orphan])
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            vec![]
        );
        let report = expire(
            bucket,
            RetentionOptions {
                dry_run: false,
                ..options
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dry, report, "a dry run reports what a real one does");
        assert_eq!(report.roots_removed, 1);
        assert_eq!(report.roots_kept, 2);
        assert_eq!(report.blobs_removed, 3, "{report:?}");
        assert_eq!(report.blobs_recent, 1);
        let all = [
            fresh_file, fresh_tree, output, stdout, newborn, old_file, old_tree, orphan,
        ];
        let missing = blobs.find_missing(&all).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(missing, vec![old_file, old_tree, orphan]);
        assert_eq!(
            refs.get(&name("p/old")).await.unwrap_or_else(|e| panic!("{e}")),
            None
        );
        assert!(
            refs.get(&name("p/fresh"))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some()
        );
    }
}
