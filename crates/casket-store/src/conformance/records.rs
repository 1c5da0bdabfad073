//! The behaviour every [`RecordStore`] must show; its backends' tests call [`run_records`].
//!
//! Each check works under its own first key component, so the checks do not see each other's
//! records.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{BESIDE_PAIRS, BESIDE_ROUNDS, blob, eventually};
use crate::{RecordStore, StoreError};

/// Runs every check against `store`, which should start empty. `touch_interval` is how old a
/// record must be before a read counts as use (`Duration::ZERO` when every read counts).
pub async fn run_records(store: &dyn RecordStore, touch_interval: Duration) {
    run_records_without_delete_races(store, touch_interval).await;
    puts_survive_deletes_beside_them(store).await;
}

/// Every check but [`puts_survive_deletes_beside_them`], for a store that loses that race for
/// reasons outside this crate: object_store's `LocalFileSystem` with automatic cleanup, whose
/// `create_dir_all` on a put races the `remove_dir` of its cleanup after a delete.
pub async fn run_records_without_delete_races(store: &dyn RecordStore, touch_interval: Duration) {
    put_get_replace(store).await;
    odd_keys_round_trip(store).await;
    empty_and_large_records_round_trip(store).await;
    absent_keys_hold_nothing(store).await;
    delete_removes(store).await;
    invalid_keys_are_refused(store).await;
    nested_keys_conflict(store).await;
    concurrent_puts_keep_one(store).await;
    if touch_interval.is_zero() {
        get_counts_as_use(store).await;
    } else {
        reads_within_the_touch_interval_write_nothing(store).await;
    }
}

async fn listed(store: &dyn RecordStore, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.key)
        .filter(|key| key.starts_with(prefix))
        .collect();
    keys.sort();
    keys
}

async fn touched(store: &dyn RecordStore, key: &str) -> SystemTime {
    let entries = store.list().await.unwrap();
    let entry = entries.iter().find(|entry| entry.key == key);
    entry.unwrap_or_else(|| panic!("{key:?} is not listed")).touched
}

/// A record reads back as stored, through `get` and `peek`, and a put replaces it.
pub async fn put_get_replace(store: &dyn RecordStore) {
    let key = "round/trip";
    store.put(key, Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(store.peek(key).await.unwrap().as_deref(), Some(&b"one"[..]));
    store.put(key, Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(
        store.get(key).await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "a put replaces the record"
    );
    assert_eq!(
        listed(store, "round/").await,
        [key],
        "a replaced record is listed once"
    );
}

/// Keys with spaces, escapes, non-ASCII and control characters are stored and listed as given.
pub async fn odd_keys_round_trip(store: &dyn RecordStore) {
    let mut keys = [
        "odd/a b",
        "odd/100%",
        "odd/%41",
        "odd/{x}[y]#?*",
        "odd/ü/ключ",
        "odd/.../x",
        "odd/tab\there",
    ];
    for key in keys {
        store.put(key, Bytes::from(key)).await.unwrap();
        assert_eq!(
            store.get(key).await.unwrap().as_deref(),
            Some(key.as_bytes()),
            "{key:?}"
        );
    }
    keys.sort_unstable();
    assert_eq!(listed(store, "odd/").await, keys);
}

/// An empty record and a record of a few MiB come back byte for byte.
pub async fn empty_and_large_records_round_trip(store: &dyn RecordStore) {
    store.put("size/empty", Bytes::new()).await.unwrap();
    assert_eq!(store.get("size/empty").await.unwrap(), Some(Bytes::new()));
    let large = blob("large record", 3 * 1024 * 1024 + 7);
    store.put("size/large", large.clone()).await.unwrap();
    assert!(
        store.get("size/large").await.unwrap() == Some(large.clone()),
        "large get"
    );
    assert!(
        store.peek("size/large").await.unwrap() == Some(large),
        "large peek"
    );
}

/// A key never stored reads as `None` and deleting it reports `false`.
pub async fn absent_keys_hold_nothing(store: &dyn RecordStore) {
    assert_eq!(store.get("absent/key").await.unwrap(), None);
    assert_eq!(store.peek("absent/key").await.unwrap(), None);
    assert!(!store.delete("absent/key").await.unwrap());
}

/// `delete` removes a record, reports whether there was one, and leaves its neighbours. Object
/// stores may list a deleted object for a moment, so the listing may take five seconds to agree.
pub async fn delete_removes(store: &dyn RecordStore) {
    store.put("deleted/a", Bytes::from_static(b"a")).await.unwrap();
    store.put("deleted/b", Bytes::from_static(b"b")).await.unwrap();
    assert!(store.delete("deleted/a").await.unwrap());
    assert!(
        !store.delete("deleted/a").await.unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(store.get("deleted/a").await.unwrap(), None);
    assert_eq!(store.peek("deleted/a").await.unwrap(), None);
    let agreed = eventually(|| async move { listed(store, "deleted/").await == ["deleted/b"] }).await;
    assert!(
        agreed,
        "listed after delete: {:?}",
        listed(store, "deleted/").await
    );
    assert_eq!(store.get("deleted/b").await.unwrap().as_deref(), Some(&b"b"[..]));
}

/// Keys that are not relative `/`-separated entry names are refused by every method.
pub async fn invalid_keys_are_refused(store: &dyn RecordStore) {
    let bad = [
        "", "/abs", "../x", "a/../b", "a//b", "a/", ".", "a/./b", "nul\0key",
    ];
    for key in bad {
        assert!(store.put(key, Bytes::new()).await.is_err(), "put {key:?}");
        assert!(store.get(key).await.is_err(), "get {key:?}");
        assert!(store.peek(key).await.is_err(), "peek {key:?}");
        assert!(store.delete(key).await.is_err(), "delete {key:?}");
    }
    let listed = store.list().await.unwrap();
    assert!(
        listed.iter().all(|entry| !bad.contains(&entry.key.as_str())),
        "an invalid key was stored"
    );
}

fn is_conflict(result: &crate::Result<()>) -> bool {
    matches!(result, Err(StoreError::RecordConflict(_)))
}

/// A key never coexists with its ancestors or descendants: putting one is refused with
/// `RecordConflict`, they read as absent, and deleting them leaves the record alone. Keys that
/// only share leading characters do not conflict.
pub async fn nested_keys_conflict(store: &dyn RecordStore) {
    store.put("nest/a/b", Bytes::from_static(b"b")).await.unwrap();
    for key in ["nest/a/b/c", "nest/a/b/c/d", "nest/a", "nest"] {
        let result = store.put(key, Bytes::new()).await;
        assert!(is_conflict(&result), "put {key:?} beside nest/a/b: {result:?}");
        assert_eq!(store.get(key).await.unwrap(), None, "get {key:?}");
        assert_eq!(store.peek(key).await.unwrap(), None, "peek {key:?}");
        assert!(!store.delete(key).await.unwrap(), "delete {key:?}");
    }
    assert_eq!(store.get("nest/a/b").await.unwrap().as_deref(), Some(&b"b"[..]));
    for sibling in ["nest/a/bc", "nest/a/b.c", "nest/ab"] {
        store.put(sibling, Bytes::new()).await.unwrap();
    }
    assert_eq!(
        listed(store, "nest/").await,
        ["nest/a/b", "nest/a/b.c", "nest/a/bc", "nest/ab"]
    );
    for key in ["nest/a/b", "nest/a/b.c", "nest/a/bc"] {
        assert!(store.delete(key).await.unwrap());
    }
    let freed =
        eventually(|| async move { store.put("nest/a", Bytes::from_static(b"a")).await.is_ok() }).await;
    assert!(freed, "a key is free again once the keys below it are deleted");
    let result = store.put("nest/a/b", Bytes::new()).await;
    assert!(is_conflict(&result), "put below a record: {result:?}");
    for key in ["nest/a", "nest/ab"] {
        assert!(store.delete(key).await.unwrap());
    }
}

/// Concurrent puts of one key all succeed and leave one of their records, listed once.
pub async fn concurrent_puts_keep_one(store: &dyn RecordStore) {
    let values: Vec<Bytes> = (0..8).map(|i| Bytes::from(format!("value {i}"))).collect();
    let puts = values.iter().map(|value| store.put("race/key", value.clone()));
    for result in futures::future::join_all(puts).await {
        result.unwrap();
    }
    let kept = store.get("race/key").await.unwrap().unwrap();
    assert!(values.contains(&kept), "kept {kept:?}");
    assert_eq!(listed(store, "race/").await, ["race/key"]);
}

/// A put succeeds while a concurrent delete empties the directory it goes in (in several
/// directories at once, many times over, to meet the moment a directory is empty).
pub async fn puts_survive_deletes_beside_them(store: &dyn RecordStore) {
    for round in 0..BESIDE_ROUNDS {
        let pairs = (0..BESIDE_PAIRS).map(|i| put_beside_a_delete(store, format!("beside/{i}"), round));
        futures::future::join_all(pairs).await;
    }
}

/// Puts a record in `dir` while deleting the only other record there.
async fn put_beside_a_delete(store: &dyn RecordStore, dir: String, round: usize) {
    let (old, new) = (format!("{dir}/old"), format!("{dir}/new-{round}"));
    store.put(&old, Bytes::new()).await.unwrap();
    let (put, deleted) = futures::join!(store.put(&new, Bytes::from_static(b"new")), store.delete(&old));
    put.unwrap_or_else(|e| panic!("put {new:?} beside a delete: {e}"));
    assert!(deleted.unwrap());
    assert_eq!(store.get(&new).await.unwrap().as_deref(), Some(&b"new"[..]));
    assert!(store.delete(&new).await.unwrap());
}

/// `get` counts as use (the record's time moves forward); `peek` and `list` do not.
pub async fn get_counts_as_use(store: &dyn RecordStore) {
    store.put("used/key", Bytes::from_static(b"v")).await.unwrap();
    let written = touched(store, "used/key").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.peek("used/key").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(touched(store, "used/key").await, written, "peek counted as use");
    store.get("used/key").await.unwrap();
    let used = eventually(|| async move { touched(store, "used/key").await > written }).await;
    assert!(used, "get did not count as use");
}

/// Reads of a record written within the touch interval leave its time as it was (an object
/// store writes a record again to record its use, which would be wasted on every read).
pub async fn reads_within_the_touch_interval_write_nothing(store: &dyn RecordStore) {
    store.put("fresh/key", Bytes::from_static(b"v")).await.unwrap();
    let written = touched(store, "fresh/key").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.get("fresh/key").await.unwrap();
    store.peek("fresh/key").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        touched(store, "fresh/key").await,
        written,
        "a read rewrote a fresh record"
    );
}
