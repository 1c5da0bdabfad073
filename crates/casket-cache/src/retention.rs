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
//! Safety: marking walks everything a kept root still reaches, skipping only directories that
//! are gone, and any store failure aborts the run before anything is deleted. Roots written while gc runs are marked again just before the sweep, which leaves
//! only the seconds between that second mark and the deletes for a new root to name a blob
//! that was unreachable and old. Whatever is removed, no build breaks: an action result is a
//! hit only when every output is present in the bucket (checked past any existence cache),
//! and refs and assets are served only when their trees are complete; an incomplete one is a
//! miss, and the client builds and uploads again.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use casket_model::proto::reapi;
use casket_model::{Digest, DigestFunction};
use casket_tree::Gaps;
use futures::TryStreamExt;
use prost::Message;

use crate::action::references;
use crate::asset::record_needs;
use crate::error::{CacheError, Result};
use crate::namespace::Namespace;

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
    /// Kept action results and assets that cannot be read as such (they keep nothing alive).
    pub roots_unreadable: u64,
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

/// Blobs removed per bulk request.
const DELETE_BATCH: usize = 1000;

/// Removes expired roots, then every blob no remaining root reaches (see the module docs).
/// `namespace.blobs` must list its blobs (a bucket does).
pub async fn expire(namespace: &Namespace, options: RetentionOptions) -> Result<RetentionReport> {
    let started = SystemTime::now();
    let cutoff = started
        .checked_sub(options.retention)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut report = RetentionReport::default();
    let mut marker = Marker::new(namespace);
    mark_roots(
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
    let mut listed = namespace.blobs.list_blobs();
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
    mark_roots(&mut marker, &mut late, |touched| touched < since, true).await?;
    let (kept, doomed): (Vec<Digest>, Vec<Digest>) =
        candidates.into_iter().partition(|d| marker.reached.contains(d));
    report.blobs_reachable += kept.len() as u64;
    report.blobs_removed = doomed.len() as u64;
    report.bytes_removed = doomed.iter().map(Digest::size).sum();
    if !options.dry_run {
        for batch in doomed.chunks(DELETE_BATCH) {
            namespace.blobs.delete_many(batch).await?;
        }
    }
    Ok(report)
}

/// Marks what the roots reach; removes (unless `dry_run`) those `expired` says are expired.
async fn mark_roots(
    marker: &mut Marker<'_>,
    report: &mut RetentionReport,
    expired: impl Fn(SystemTime) -> bool,
    dry_run: bool,
) -> Result<()> {
    let namespace = marker.namespace;
    for entry in namespace.refs.scan().await?.refs {
        if expired(entry.touched) {
            report.roots_removed += 1;
            if !dry_run {
                namespace.refs.delete(&entry.name).await?;
            }
        } else {
            report.roots_kept += 1;
            marker.tree(&entry.digest).await?;
        }
    }
    let kinds = [
        (&namespace.action_cache, Root::ActionResult),
        (&namespace.assets, Root::Asset),
        (&namespace.entries, Root::Entry),
    ];
    for (records, kind) in kinds {
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
            let readable = match kind {
                Root::ActionResult => marker.action_result(&entry.key, &bytes).await?,
                Root::Asset => marker.asset(&entry.key, &bytes).await?,
                Root::Entry => marker.entry(&bytes),
            };
            if !readable {
                report.roots_unreadable += 1;
            }
        }
    }
    Ok(())
}

/// The kinds of record that are roots.
#[derive(Clone, Copy)]
enum Root {
    ActionResult,
    Asset,
    Entry,
}

/// The set of blobs reached so far.
struct Marker<'a> {
    namespace: &'a Namespace,
    reached: HashSet<Digest>,
    trees: HashSet<Digest>,
}

impl<'a> Marker<'a> {
    fn new(namespace: &'a Namespace) -> Self {
        Marker {
            namespace,
            reached: HashSet::new(),
            trees: HashSet::new(),
        }
    }

    /// Every directory and file of the tree at `root` that can be reached: a missing or
    /// invalid directory hides only what is below it.
    async fn tree(&mut self, root: &Digest) -> Result<()> {
        if !self.trees.insert(*root) {
            return Ok(());
        }
        let blobs = self.namespace.blobs.as_ref();
        let walk = casket_tree::walk(blobs, root, casket_tree::default_concurrency(), Gaps::Skip).await?;
        self.reached.extend(walk.reachable());
        Ok(())
    }

    /// What the action result stored at `key` (`FUNCTION/HASH-SIZE`) references; false if it
    /// is not a readable result.
    async fn action_result(&mut self, key: &str, bytes: &[u8]) -> Result<bool> {
        let Some(function) = key.split('/').next().and_then(DigestFunction::from_name) else {
            return Ok(false);
        };
        let Ok(result) = reapi::ActionResult::decode(bytes) else {
            return Ok(false);
        };
        match references(self.namespace.blobs.as_ref(), function, &result).await {
            Ok(references) => {
                self.reached.extend(references.needed);
                for tree in &references.output_trees {
                    let directories = tree.root.iter().chain(&tree.children);
                    self.reached
                        .extend(directories.map(|d| Digest::of(function, &d.encode_to_vec())));
                }
                Ok(true)
            }
            Err(CacheError::Corrupt(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The blob a generic entry's record names; false if it names none.
    fn entry(&mut self, record: &[u8]) -> bool {
        let blob = crate::entries::parse_record(record);
        self.reached.extend(blob);
        blob.is_some()
    }

    /// The content and references of the asset record stored at `key`; false if it is not a
    /// readable record.
    async fn asset(&mut self, key: &str, bytes: &[u8]) -> Result<bool> {
        let Some(needs) = record_needs(key, bytes) else {
            return Ok(false);
        };
        self.reached.extend(needs.blobs);
        for root in needs.directories {
            self.tree(&root).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;
    use casket_model::{Directory, EntryName, FileNode, Node, RefName};
    use casket_store::fault::{Fault, FaultyStore};
    use casket_store::{
        ActionId, BlobStore, BlobStoreExt, ExistenceCacheOptions, ObjectRecords, ObjectRefs, ObjectStoreBlobs,
    };

    const DAY: Duration = Duration::from_secs(86400);

    fn ok<T, E: std::fmt::Display>(result: std::result::Result<T, E>) -> T {
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A bucket in a local directory, its blobs behind a fault injector, with no existence cache.
    struct Bucket {
        dir: tempfile::TempDir,
        blobs: Arc<FaultyStore<ObjectStoreBlobs>>,
        namespace: Namespace,
    }

    impl Bucket {
        fn new() -> Self {
            let dir = ok(tempfile::tempdir());
            let local = ok(object_store::local::LocalFileSystem::new_with_prefix(dir.path()));
            let store: Arc<dyn object_store::ObjectStore> = Arc::new(local);
            let no_cache = ExistenceCacheOptions {
                entries: 0,
                ttl: Duration::ZERO,
            };
            let blobs = Arc::new(FaultyStore::new(ObjectStoreBlobs::with_existence_cache(
                store.clone(),
                "",
                no_cache,
            )));
            let namespace = Namespace {
                blobs: blobs.clone(),
                refs: Arc::new(ObjectRefs::new(store.clone(), "")),
                action_cache: Arc::new(ObjectRecords::new(store.clone(), "", "ac")),
                assets: Arc::new(ObjectRecords::new(store.clone(), "", "assets")),
                entries: Arc::new(ObjectRecords::new(store, "", "entries")),
                quota: None,
                description: "test bucket".to_owned(),
            };
            Bucket {
                dir,
                blobs,
                namespace,
            }
        }

        async fn put(&self, data: &[u8]) -> Digest {
            ok(self
                .blobs
                .put_bytes(DigestFunction::Sha256, Bytes::copy_from_slice(data))
                .await)
        }

        /// A directory of `entries` (files and subdirectories by name), stored.
        async fn directory(&self, entries: &[(&str, Node)]) -> Digest {
            let mut directory = Directory::default();
            for (name, node) in entries {
                directory.insert(ok(EntryName::new(*name)), node.clone());
            }
            self.put(&directory.encode()).await
        }

        /// Makes the object at `key` (relative to the bucket root) look written `age` ago.
        fn age(&self, key: &str, age: Duration) {
            let file = std::fs::File::options()
                .write(true)
                .open(self.dir.path().join(key))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            let when = SystemTime::now() - age;
            ok(file.set_times(std::fs::FileTimes::new().set_modified(when).set_accessed(when)));
        }

        fn age_blobs(&self, digests: &[Digest], age: Duration) {
            for digest in digests {
                self.age(&format!("cas/sha256/{}", digest.hash_hex()), age);
            }
        }

        async fn missing(&self, digests: &[Digest]) -> Vec<Digest> {
            ok(self.blobs.inner().find_missing(digests).await)
        }

        /// Stores `result` as the result of an action.
        async fn put_result(&self, result: &reapi::ActionResult) {
            let action = Digest::of(DigestFunction::Sha256, b"action");
            let record = Bytes::from(result.encode_to_vec());
            ok(self
                .namespace
                .action_cache
                .put(&ActionId::from(&action).key(), record)
                .await);
        }

        async fn set_ref(&self, name: &str, root: &Digest) {
            ok(self.namespace.refs.set(&ok(RefName::new(name)), root).await);
        }
    }

    fn file(digest: Digest) -> Node {
        Node::File(FileNode {
            digest,
            executable: false,
            properties: Default::default(),
        })
    }

    const OPTIONS: RetentionOptions = RetentionOptions {
        retention: DAY,
        grace: DAY,
        dry_run: false,
    };

    #[tokio::test]
    async fn expired_roots_go_and_so_do_the_blobs_only_they_reached() {
        let bucket = Bucket::new();
        // A fresh ref and an old one, each naming a tree of one file.
        let (fresh_file, old_file) = (bucket.put(b"fresh file").await, bucket.put(b"old file").await);
        let fresh_tree = bucket.directory(&[("f", file(fresh_file))]).await;
        let old_tree = bucket.directory(&[("f", file(old_file))]).await;
        bucket.set_ref("p/fresh", &fresh_tree).await;
        bucket.set_ref("p/old", &old_tree).await;
        // A fresh action result with an output file and stdout.
        let (output, stdout) = (bucket.put(b"output").await, bucket.put(b"stdout").await);
        let result = reapi::ActionResult {
            output_files: vec![reapi::OutputFile {
                path: "out".into(),
                digest: Some(output.to_proto()),
                ..Default::default()
            }],
            stdout_digest: Some(stdout.to_proto()),
            ..Default::default()
        };
        bucket.put_result(&result).await;
        // Unreachable: one old blob, one just written.
        let (orphan, newborn) = (bucket.put(b"orphan").await, bucket.put(b"newborn").await);
        bucket.age_blobs(
            &[fresh_file, old_file, fresh_tree, old_tree, output, stdout, orphan],
            3 * DAY,
        );
        bucket.age("refs/p/old", 3 * DAY);

        let dry_run = RetentionOptions {
            dry_run: true,
            ..OPTIONS
        };
        let dry = ok(expire(&bucket.namespace, dry_run).await);
        assert_eq!(bucket.missing(&[old_file, orphan]).await, vec![]);
        let report = ok(expire(&bucket.namespace, OPTIONS).await);
        assert_eq!(dry, report, "a dry run reports what a real one does");
        assert_eq!(report.roots_removed, 1);
        assert_eq!(report.roots_kept, 2);
        assert_eq!(report.blobs_removed, 3, "{report:?}");
        assert_eq!(report.blobs_recent, 1);
        let all = [
            fresh_file, fresh_tree, output, stdout, newborn, old_file, old_tree, orphan,
        ];
        assert_eq!(bucket.missing(&all).await, vec![old_file, old_tree, orphan]);
        let refs = &bucket.namespace.refs;
        assert_eq!(ok(refs.get(&ok(RefName::new("p/old"))).await), None);
        assert!(ok(refs.get(&ok(RefName::new("p/fresh"))).await).is_some());
    }

    /// A generic entry keeps its value while the entry is used; an expired entry goes, and
    /// its value with it.
    #[tokio::test]
    async fn generic_entries_keep_their_values_until_they_expire() {
        let bucket = Bucket::new();
        let (kept, dropped) = (
            bucket.put(b"kept value").await,
            bucket.put(b"dropped value").await,
        );
        let namespace = &bucket.namespace;
        let (fresh, old) = (
            ok(crate::entries::entry_key("ccache/fresh")),
            ok(crate::entries::entry_key("ccache/old")),
        );
        ok(crate::entries::put_entry(namespace, &fresh, &kept).await);
        ok(crate::entries::put_entry(namespace, &old, &dropped).await);
        bucket.age_blobs(&[kept, dropped], 3 * DAY);
        bucket.age("entries/ccache/old", 3 * DAY);

        let report = ok(expire(namespace, OPTIONS).await);
        assert_eq!(
            (report.roots_kept, report.roots_removed, report.blobs_removed),
            (1, 1, 1),
            "{report:?}"
        );
        assert_eq!(bucket.missing(&[kept, dropped]).await, vec![dropped]);
        assert_eq!(ok(crate::entries::get_entry(namespace, &fresh).await), kept);
        assert!(crate::entries::get_entry(namespace, &old).await.is_err());
    }

    /// A kept ref whose tree lost one subdirectory: everything else it reaches stays.
    #[tokio::test]
    async fn a_missing_subdirectory_does_not_stop_the_marking_of_the_rest() {
        let bucket = Bucket::new();
        let (kept_file, lost_file, deep_file) = (
            bucket.put(b"kept file").await,
            bucket.put(b"file in the lost directory").await,
            bucket.put(b"file further down").await,
        );
        let deep = bucket.directory(&[("d", file(deep_file))]).await;
        let lost = bucket.directory(&[("l", file(lost_file))]).await;
        let kept = bucket
            .directory(&[("k", file(kept_file)), ("deeper", Node::Directory(deep))])
            .await;
        let root = bucket
            .directory(&[
                ("a-lost", Node::Directory(lost)),
                ("b-kept", Node::Directory(kept)),
            ])
            .await;
        bucket.set_ref("p/e/k", &root).await;
        let everything = [kept_file, lost_file, deep_file, deep, lost, kept, root];
        bucket.age_blobs(&everything, 3 * DAY);
        ok(bucket.blobs.inner().delete_many(&[lost]).await);

        let report = ok(expire(&bucket.namespace, OPTIONS).await);
        // The lost directory's file is unreachable now; everything else is kept.
        assert_eq!(
            bucket.missing(&everything).await,
            vec![lost_file, lost],
            "{report:?}"
        );
        assert_eq!(report.blobs_removed, 1);
    }

    /// A store failure while marking aborts the whole run before anything is deleted.
    #[tokio::test]
    async fn a_store_error_while_marking_deletes_nothing() {
        let bucket = Bucket::new();
        let (inner_file, orphan) = (bucket.put(b"inner file").await, bucket.put(b"orphan").await);
        let inner = bucket.directory(&[("f", file(inner_file))]).await;
        let root = bucket.directory(&[("d", Node::Directory(inner))]).await;
        bucket.set_ref("p/e/k", &root).await;
        let everything = [inner_file, inner, root, orphan];
        bucket.age_blobs(&everything, 3 * DAY);

        bucket.blobs.inject(inner, Fault::Fail);
        assert!(expire(&bucket.namespace, OPTIONS).await.is_err());
        assert_eq!(bucket.missing(&everything).await, vec![], "nothing deleted");
        bucket.blobs.clear();
        let report = ok(expire(&bucket.namespace, OPTIONS).await);
        assert_eq!(bucket.missing(&everything).await, vec![orphan], "{report:?}");
    }

    /// The blobs of an action result's output Tree and of an output directory given by its
    /// root are kept; a failure reading the Tree aborts.
    #[tokio::test]
    async fn action_results_keep_their_trees_and_a_store_error_reading_one_aborts() {
        let bucket = Bucket::new();
        let (in_tree, under_root, orphan) = (
            bucket.put(b"file in the Tree").await,
            bucket.put(b"file under the root").await,
            bucket.put(b"orphan").await,
        );
        let tree = reapi::Tree {
            root: Some(reapi::Directory {
                files: vec![reapi::FileNode {
                    name: "f".into(),
                    digest: Some(in_tree.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            children: vec![],
        };
        let tree_blob = bucket.put(&tree.encode_to_vec()).await;
        let root = bucket.directory(&[("g", file(under_root))]).await;
        let result = reapi::ActionResult {
            output_directories: vec![
                reapi::OutputDirectory {
                    path: "out".into(),
                    tree_digest: Some(tree_blob.to_proto()),
                    ..Default::default()
                },
                reapi::OutputDirectory {
                    path: "dir".into(),
                    root_directory_digest: Some(root.to_proto()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        bucket.put_result(&result).await;
        let everything = [in_tree, under_root, tree_blob, root, orphan];
        bucket.age_blobs(&everything, 3 * DAY);

        bucket.blobs.inject(tree_blob, Fault::Fail);
        assert!(expire(&bucket.namespace, OPTIONS).await.is_err());
        assert_eq!(bucket.missing(&everything).await, vec![]);
        bucket.blobs.clear();
        ok(expire(&bucket.namespace, OPTIONS).await);
        assert_eq!(bucket.missing(&everything).await, vec![orphan]);
    }

    #[tokio::test]
    async fn a_store_that_cannot_list_is_refused_before_anything_is_deleted() {
        let store = casket_store::MemoryStore::new();
        let data = Bytes::from_static(b"blob");
        let digest = ok(store.put_bytes(DigestFunction::Sha256, data).await);
        let bucket = Bucket::new();
        let namespace = Namespace {
            blobs: Arc::new(store.clone()),
            ..bucket.namespace.clone()
        };
        assert!(matches!(
            expire(&namespace, OPTIONS).await,
            Err(CacheError::Store(casket_store::StoreError::Unsupported(_)))
        ));
        assert!(ok(store.contains(&digest).await));
    }
}
