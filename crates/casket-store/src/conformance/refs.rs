//! The behaviour every [`RefStore`] must show; its backends' tests call [`run_refs`].
//!
//! Each check works under its own first name component, so the checks do not see each other's
//! refs.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use casket_model::{Digest, DigestFunction, RefName};

use super::{BESIDE_PAIRS, BESIDE_ROUNDS, eventually};
use crate::{RecordStore, RefStore, StoreError};

/// Runs every check against `refs`, which should start empty. `records` are the records the refs
/// are kept in, if they are kept in a [`RecordStore`] (to check the stored form and the reporting
/// of corrupt refs); `touch_interval` is how old a ref must be before a read counts as use
/// (`Duration::ZERO` when every read counts).
pub async fn run_refs(refs: &dyn RefStore, records: Option<&dyn RecordStore>, touch_interval: Duration) {
    run_refs_without_delete_races(refs, records, touch_interval).await;
    sets_survive_deletes_beside_them(refs).await;
}

/// Every check but [`sets_survive_deletes_beside_them`] (see
/// [`super::records::run_records_without_delete_races`]).
pub async fn run_refs_without_delete_races(
    refs: &dyn RefStore,
    records: Option<&dyn RecordStore>,
    touch_interval: Duration,
) {
    set_get_replace(refs).await;
    delete_removes(refs).await;
    list_is_sorted(refs).await;
    nested_names_conflict(refs).await;
    concurrent_sets_keep_one(refs).await;
    if touch_interval.is_zero() {
        get_counts_as_use(refs).await;
    } else {
        reads_within_the_touch_interval_write_nothing(refs).await;
    }
    if let Some(records) = records {
        refs_are_stored_as_digest_text(refs, records).await;
        corrupt_refs_are_reported(refs, records).await;
    }
}

fn name(name: &str) -> RefName {
    RefName::new(name).unwrap()
}

fn digest(tag: &str) -> Digest {
    Digest::of(DigestFunction::Sha256, tag.as_bytes())
}

async fn listed(refs: &dyn RefStore, prefix: &str) -> Vec<(String, Digest)> {
    let entries = refs.list().await.unwrap();
    entries
        .into_iter()
        .filter(|entry| entry.name.as_str().starts_with(prefix))
        .map(|entry| (entry.name.to_string(), entry.digest))
        .collect()
}

async fn names(refs: &dyn RefStore, prefix: &str) -> Vec<String> {
    listed(refs, prefix).await.into_iter().map(|(n, _)| n).collect()
}

async fn touched(refs: &dyn RefStore, ref_name: &str) -> SystemTime {
    let entries = refs.list().await.unwrap();
    let entry = entries.iter().find(|entry| entry.name.as_str() == ref_name);
    entry
        .unwrap_or_else(|| panic!("{ref_name:?} is not listed"))
        .touched
}

/// A ref reads back as set, in either digest function, and a set replaces it.
pub async fn set_get_replace(refs: &dyn RefStore) {
    let n = name("set/project/element/key");
    assert_eq!(refs.get(&n).await.unwrap(), None);
    refs.set(&n, &digest("a")).await.unwrap();
    assert_eq!(refs.get(&n).await.unwrap(), Some(digest("a")));
    let b = Digest::of(DigestFunction::Blake3, b"b");
    refs.set(&n, &b).await.unwrap();
    assert_eq!(refs.get(&n).await.unwrap(), Some(b), "a set replaces the ref");
    assert_eq!(
        listed(refs, "set/").await,
        [(n.to_string(), b)],
        "a replaced ref is listed once"
    );
}

/// `delete` removes a ref, reports whether there was one, and leaves its neighbours. Object
/// stores may list a deleted object for a moment, so the listing may take five seconds to agree.
pub async fn delete_removes(refs: &dyn RefStore) {
    refs.set(&name("del/a"), &digest("a")).await.unwrap();
    refs.set(&name("del/b"), &digest("b")).await.unwrap();
    assert!(refs.delete(&name("del/a")).await.unwrap());
    assert!(
        !refs.delete(&name("del/a")).await.unwrap(),
        "a second delete finds nothing"
    );
    assert!(!refs.delete(&name("del/never")).await.unwrap());
    assert_eq!(refs.get(&name("del/a")).await.unwrap(), None);
    let agreed = eventually(|| async move { names(refs, "del/").await == ["del/b"] }).await;
    assert!(agreed, "listed after delete: {:?}", names(refs, "del/").await);
    assert_eq!(refs.get(&name("del/b")).await.unwrap(), Some(digest("b")));
}

/// `list` and `scan` return refs sorted by name (byte order), each once.
pub async fn list_is_sorted(refs: &dyn RefStore) {
    let mut sorted = ["sort/b", "sort/a/z", "sort/a-", "sort/B", "sort/ä", "sort/a.b/c"];
    for n in sorted {
        refs.set(&name(n), &digest(n)).await.unwrap();
    }
    sorted.sort_unstable();
    assert_eq!(names(refs, "sort/").await, sorted);
    let all = refs.scan().await.unwrap().refs;
    assert!(
        all.windows(2).all(|pair| pair[0].name < pair[1].name),
        "scan is not sorted"
    );
}

fn is_conflict(result: &crate::Result<()>) -> bool {
    matches!(result, Err(StoreError::RefConflict(_)))
}

/// A ref never coexists with one whose name is its ancestor or descendant: setting it is
/// refused with `RefConflict`, it reads as absent, and deleting it leaves the other alone. Names
/// that only share leading characters do not conflict.
pub async fn nested_names_conflict(refs: &dyn RefStore) {
    let (taken, d) = (name("nest/a/b"), digest("taken"));
    refs.set(&taken, &d).await.unwrap();
    for n in ["nest/a/b/c", "nest/a/b/c/d", "nest/a", "nest"] {
        let result = refs.set(&name(n), &digest(n)).await;
        assert!(is_conflict(&result), "set {n:?} beside nest/a/b: {result:?}");
        assert_eq!(refs.get(&name(n)).await.unwrap(), None, "get {n:?}");
        assert!(!refs.delete(&name(n)).await.unwrap(), "delete {n:?}");
    }
    assert_eq!(refs.get(&taken).await.unwrap(), Some(d));
    for sibling in ["nest/a/bc", "nest/a/b.c", "nest/ab"] {
        refs.set(&name(sibling), &d).await.unwrap();
    }
    assert_eq!(
        names(refs, "nest/").await,
        ["nest/a/b", "nest/a/b.c", "nest/a/bc", "nest/ab"]
    );
    for n in ["nest/a/b", "nest/a/b.c", "nest/a/bc"] {
        assert!(refs.delete(&name(n)).await.unwrap());
    }
    let freed = eventually(|| async move { refs.set(&name("nest/a"), &d).await.is_ok() }).await;
    assert!(freed, "a name is free again once the refs below it are deleted");
    let result = refs.set(&taken, &d).await;
    assert!(is_conflict(&result), "set below a ref: {result:?}");
    for n in ["nest/a", "nest/ab"] {
        assert!(refs.delete(&name(n)).await.unwrap());
    }
}

/// Concurrent sets of one name all succeed and leave one of their digests, listed once.
pub async fn concurrent_sets_keep_one(refs: &dyn RefStore) {
    let n = name("race/key");
    let digests: Vec<Digest> = (0..8).map(|i| digest(&format!("race {i}"))).collect();
    let sets = digests.iter().map(|d| refs.set(&n, d));
    for result in futures::future::join_all(sets).await {
        result.unwrap();
    }
    let kept = refs.get(&n).await.unwrap().unwrap();
    assert!(digests.contains(&kept), "kept {kept}");
    assert_eq!(listed(refs, "race/").await, [(n.to_string(), kept)]);
}

/// A set succeeds while a concurrent delete empties the directory it goes in (in several
/// directories at once, many times over, to meet the moment a directory is empty).
pub async fn sets_survive_deletes_beside_them(refs: &dyn RefStore) {
    for round in 0..BESIDE_ROUNDS {
        let pairs = (0..BESIDE_PAIRS).map(|i| set_beside_a_delete(refs, format!("beside/{i}"), round));
        futures::future::join_all(pairs).await;
    }
}

/// Sets a ref in `dir` while deleting the only other ref there.
async fn set_beside_a_delete(refs: &dyn RefStore, dir: String, round: usize) {
    let (old, new, d) = (
        name(&format!("{dir}/old")),
        name(&format!("{dir}/new-{round}")),
        digest("beside"),
    );
    refs.set(&old, &d).await.unwrap();
    let (set, deleted) = futures::join!(refs.set(&new, &d), refs.delete(&old));
    set.unwrap_or_else(|e| panic!("set {new:?} beside a delete: {e}"));
    assert!(deleted.unwrap());
    assert_eq!(refs.get(&new).await.unwrap(), Some(d));
    assert!(refs.delete(&new).await.unwrap());
}

/// `get` counts as use (the ref's time moves forward); `list` and `scan` do not.
pub async fn get_counts_as_use(refs: &dyn RefStore) {
    let n = name("used/key");
    refs.set(&n, &digest("used")).await.unwrap();
    let written = touched(refs, n.as_str()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    refs.scan().await.unwrap();
    assert_eq!(touched(refs, n.as_str()).await, written, "listing counted as use");
    refs.get(&n).await.unwrap();
    let used = eventually(|| async move { touched(refs, "used/key").await > written }).await;
    assert!(used, "get did not count as use");
}

/// Reads of a ref set within the touch interval leave its time as it was.
pub async fn reads_within_the_touch_interval_write_nothing(refs: &dyn RefStore) {
    let n = name("fresh/key");
    refs.set(&n, &digest("fresh")).await.unwrap();
    let written = touched(refs, n.as_str()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    refs.get(&n).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        touched(refs, n.as_str()).await,
        written,
        "a read rewrote a fresh ref"
    );
}

/// A ref is stored as its digest's text and a newline, the form existing stores hold.
pub async fn refs_are_stored_as_digest_text(refs: &dyn RefStore, records: &dyn RecordStore) {
    let d = digest("stored");
    refs.set(&name("format/set"), &d).await.unwrap();
    let stored = records.peek("format/set").await.unwrap();
    assert_eq!(stored, Some(Bytes::from(format!("{d}\n"))));
    let b = Digest::of(DigestFunction::Blake3, b"stored");
    records
        .put("format/existing", Bytes::from(format!("{b}\n")))
        .await
        .unwrap();
    assert_eq!(refs.get(&name("format/existing")).await.unwrap(), Some(b));
    assert_eq!(
        listed(refs, "format/").await,
        [("format/existing".to_owned(), b), ("format/set".to_owned(), d)]
    );
}

/// Stored entries that are not refs (bad content, a name no ref can have) make `get` fail with
/// `CorruptRef`, are reported by `scan` with their path, and are left out of `list`.
pub async fn corrupt_refs_are_reported(refs: &dyn RefStore, records: &dyn RecordStore) {
    let garbage = "corrupt/garbage";
    let bad_name = "corrupt/tab\tname";
    records
        .put(garbage, Bytes::from_static(b"nonsense"))
        .await
        .unwrap();
    let text = Bytes::from(format!("{}\n", digest("corrupt")));
    records.put(bad_name, text).await.unwrap();
    refs.set(&name("corrupt/fine"), &digest("fine")).await.unwrap();

    let read = refs.get(&name(garbage)).await;
    assert!(matches!(read, Err(StoreError::CorruptRef { .. })), "{read:?}");
    let scan = refs.scan().await.unwrap();
    for key in [garbage, bad_name] {
        let found = scan.corrupt.iter().any(|c| c.path.ends_with(key));
        assert!(found, "{key:?} not reported: {:?}", scan.corrupt);
    }
    assert_eq!(names(refs, "corrupt/").await, ["corrupt/fine"]);
    for key in [garbage, bad_name, "corrupt/fine"] {
        assert!(records.delete(key).await.unwrap());
    }
}
