//! The behaviour every [`BlobStore`] must show. Each backend's tests call [`run_all`]; a new
//! backend (including remote clients in other crates) enables the `conformance` feature and
//! does the same. [`run_refs`] and [`run_records`] do the same for every
//! [`RefStore`](crate::RefStore) and [`RecordStore`](crate::RecordStore).
//!
//! The functions panic with a message naming the broken rule, as tests do.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod records;
pub mod refs;

pub use records::run_records;
pub use refs::run_refs;

use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use futures::TryStreamExt;

use crate::{BlobStore, BlobStoreExt, NewBlob, ReadRange, StoreError};

/// Runs every check against `store`, which should start empty.
pub async fn run_all(store: &dyn BlobStore) {
    run_remote(store).await;
    wrong_size_reads_name_the_stored_size(store).await;
    blobs_are_found_by_hash_alone(store).await;
    rewrites_leave_usage_unchanged(store).await;
    delete_removes(store).await;
    usage_is_exact(store).await;
}

/// The checks a remote cache (REAPI, which has no delete, no usage, and answers a read of a
/// wrongly sized digest with NOT_FOUND) must pass; `store` should start empty.
pub async fn run_remote(store: &dyn BlobStore) {
    empty_blob_is_always_present(store).await;
    put_then_read_back(store).await;
    put_many_returns_digests_in_order(store).await;
    find_missing_keeps_order_and_duplicates(store).await;
    get_many_reads_in_order(store).await;
    mismatched_writes_store_nothing(store).await;
    abandoned_writes_store_nothing(store).await;
    reads_honour_offset_and_limit(store).await;
    wrong_size_is_missing(store).await;
    writes_are_idempotent(store).await;
}

fn blob(tag: &str, len: usize) -> Bytes {
    let seed = tag
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..len)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Rounds of the checks that a write survives a concurrent delete emptying its directory, and
/// directories raced over in each round: enough to meet the moment a directory is empty.
const BESIDE_ROUNDS: usize = 100;
const BESIDE_PAIRS: usize = 8;

/// Whether `check` holds within five seconds (object stores may list a deleted object for a
/// moment: Garage does, for well under a second).
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn read_all(store: &dyn BlobStore, digest: &Digest, range: ReadRange) -> Option<Vec<u8>> {
    let stream = store.read(digest, range).await.unwrap()?;
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    Some(chunks.concat())
}

/// The empty blob is present without ever being written, in every function.
pub async fn empty_blob_is_always_present(store: &dyn BlobStore) {
    for function in DigestFunction::ALL {
        let empty = function.empty_digest();
        assert!(
            store.find_missing(&[empty]).await.unwrap().is_empty(),
            "empty blob missing"
        );
        assert_eq!(read_all(store, &empty, ReadRange::ALL).await, Some(vec![]));
    }
}

/// Blobs of every size class come back byte for byte, in both functions.
pub async fn put_then_read_back(store: &dyn BlobStore) {
    for function in DigestFunction::ALL {
        for len in [1, 1000, 3 * crate::CHUNK_SIZE + 5] {
            let data = blob(&format!("round-trip-{len}"), len);
            let digest = store.put_bytes(function, data.clone()).await.unwrap();
            assert_eq!(digest, Digest::of(function, &data));
            let back = read_all(store, &digest, ReadRange::ALL).await;
            assert_eq!(
                back.as_deref(),
                Some(data.as_ref()),
                "{function} blob of {len} bytes"
            );
        }
    }
}

/// `put_many` stores every blob, answers in input order, and refuses a blob that does not match
/// its declared digest without failing the others.
pub async fn put_many_returns_digests_in_order(store: &dyn BlobStore) {
    let blobs: Vec<Bytes> = (0..20)
        .map(|i| blob(&format!("many-{}", i % 15), i * 100))
        .collect();
    let mut batch: Vec<NewBlob> = blobs.iter().cloned().map(NewBlob::new).collect();
    let declared = Digest::of(DigestFunction::Sha256, b"declared but not sent");
    let liar = Digest::new(DigestFunction::Sha256, *declared.hash(), blobs[3].len() as u64).unwrap();
    batch[3].expected = Some(liar);
    batch[4].expected = Some(Digest::of(DigestFunction::Sha256, &blobs[4]));
    let results = store.put_many(DigestFunction::Sha256, batch).await.unwrap();
    assert!(
        matches!(results[3], Err(StoreError::DigestMismatch { .. })),
        "a lying blob is refused"
    );
    let true_digest = Digest::of(DigestFunction::Sha256, &blobs[3]);
    assert_eq!(
        store.find_missing(&[true_digest, liar]).await.unwrap().len(),
        2,
        "a refused blob is stored under no name"
    );
    for (i, (data, result)) in blobs.iter().zip(&results).enumerate() {
        if i == 3 {
            continue;
        }
        let digest = result.as_ref().unwrap();
        assert_eq!(*digest, Digest::of(DigestFunction::Sha256, data));
        assert_eq!(
            read_all(store, digest, ReadRange::ALL).await.as_deref(),
            Some(data.as_ref())
        );
    }
}

/// `find_missing` answers in input order and keeps duplicates.
pub async fn find_missing_keeps_order_and_duplicates(store: &dyn BlobStore) {
    let present = store
        .put_bytes(DigestFunction::Sha256, blob("present", 10))
        .await
        .unwrap();
    let a = Digest::of(DigestFunction::Sha256, &blob("absent-a", 10));
    let b = Digest::of(DigestFunction::Blake3, &blob("absent-b", 10));
    let missing = store.find_missing(&[a, present, b, a]).await.unwrap();
    assert_eq!(missing, vec![a, b, a]);
    assert!(store.find_missing(&[]).await.unwrap().is_empty());
}

/// Wrong content, short content and long content are all refused and leave nothing behind.
pub async fn mismatched_writes_store_nothing(store: &dyn BlobStore) {
    let data = blob("mismatch", 5000);
    let digest = Digest::of(DigestFunction::Sha256, &data);

    let mut other = data.to_vec();
    other[17] ^= 1;
    let err = store.put_verified(&digest, Bytes::from(other)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { .. }),
        "wrong content: {err}"
    );

    let err = store.put_verified(&digest, data.slice(..4999)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { .. }),
        "short content: {err}"
    );

    let mut writer = store.begin_write(&digest).await.unwrap();
    writer.write(data.clone()).await.unwrap();
    let err = writer.write(Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLong(_)), "long content: {err}");
    drop(writer);

    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
    assert_eq!(read_all(store, &digest, ReadRange::ALL).await, None);
}

/// `get_many` answers in order, `None` for absent and wrongly sized digests.
pub async fn get_many_reads_in_order(store: &dyn BlobStore) {
    let a = blob("many-a", 300);
    let b = blob("many-b", 70_000);
    let da = store.put_bytes(DigestFunction::Sha256, a.clone()).await.unwrap();
    let db = store.put_bytes(DigestFunction::Sha256, b.clone()).await.unwrap();
    let absent = Digest::of(DigestFunction::Sha256, b"never stored");
    let wrong = Digest::new(da.function(), *da.hash(), 299).unwrap();
    let empty = DigestFunction::Sha256.empty_digest();
    let got = store.get_many(&[db, absent, da, wrong, empty]).await.unwrap();
    assert_eq!(got, vec![Some(b), None, Some(a), None, Some(Bytes::new())]);
}

/// A writer dropped before `commit` stores nothing.
pub async fn abandoned_writes_store_nothing(store: &dyn BlobStore) {
    let data = blob("abandoned", 2000);
    let digest = Digest::of(DigestFunction::Sha256, &data);
    let mut writer = store.begin_write(&digest).await.unwrap();
    writer.write(data).await.unwrap();
    assert_eq!(writer.written(), 2000);
    drop(writer);
    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
}

/// Offsets and limits select exactly the bytes asked for; an offset past the end is an error.
pub async fn reads_honour_offset_and_limit(store: &dyn BlobStore) {
    let data = blob("ranges", 10_000);
    let digest = store
        .put_bytes(DigestFunction::Sha256, data.clone())
        .await
        .unwrap();
    let cases = [
        (0, None),
        (1, None),
        (9_999, None),
        (10_000, None),
        (100, Some(0)),
        (100, Some(50)),
        (9_990, Some(50)),
    ];
    for (offset, limit) in cases {
        let got = read_all(store, &digest, ReadRange { offset, limit })
            .await
            .unwrap();
        let start = offset as usize;
        let end = limit.map_or(data.len(), |l| (start + l as usize).min(data.len()));
        assert_eq!(got, &data[start..end], "offset {offset} limit {limit:?}");
    }
    let err = store
        .read(
            &digest,
            ReadRange {
                offset: 10_001,
                limit: None,
            },
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::OffsetOutOfRange { .. }), "{err}");
}

/// A stored hash asked for with another size is missing, and cannot be read.
pub async fn wrong_size_is_missing(store: &dyn BlobStore) {
    let data = blob("sized", 100);
    let digest = store.put_bytes(DigestFunction::Sha256, data).await.unwrap();
    let wrong = Digest::new(digest.function(), *digest.hash(), 99).unwrap();
    assert_eq!(store.find_missing(&[wrong]).await.unwrap(), vec![wrong]);
    let read = store.read(&wrong, ReadRange::ALL).await;
    assert!(
        matches!(read, Ok(None) | Err(StoreError::SizeMismatch { .. })),
        "a wrongly sized digest was readable"
    );
}

/// Reading a stored hash with another size is an error naming the stored size.
pub async fn wrong_size_reads_name_the_stored_size(store: &dyn BlobStore) {
    let data = blob("sized", 100);
    let digest = store.put_bytes(DigestFunction::Sha256, data).await.unwrap();
    let wrong = Digest::new(digest.function(), *digest.hash(), 99).unwrap();
    let err = store.read(&wrong, ReadRange::ALL).await.err().unwrap();
    assert!(
        matches!(err, StoreError::SizeMismatch { actual: 100, .. }),
        "{err}"
    );
}

/// A blob's hash alone finds its digest, small or large and for every function; the empty blob
/// is found without being stored; a hash never stored is absent.
pub async fn blobs_are_found_by_hash_alone(store: &dyn BlobStore) {
    for function in DigestFunction::ALL {
        for len in [100, 2 << 20] {
            let digest = store.put_bytes(function, blob("by hash", len)).await.unwrap();
            assert_eq!(
                store.stored_digest(function, digest.hash()).await.unwrap(),
                Some(digest)
            );
        }
        let empty = function.empty_digest();
        assert_eq!(
            store.stored_digest(function, empty.hash()).await.unwrap(),
            Some(empty)
        );
        let never = Digest::of(function, b"never stored by hash");
        assert_eq!(store.stored_digest(function, never.hash()).await.unwrap(), None);
    }
}

/// Writing a blob that is already there succeeds and changes nothing.
pub async fn writes_are_idempotent(store: &dyn BlobStore) {
    let data = blob("twice", 3000);
    let first = store
        .put_bytes(DigestFunction::Sha256, data.clone())
        .await
        .unwrap();
    let second = store
        .put_bytes(DigestFunction::Sha256, data.clone())
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        read_all(store, &first, ReadRange::ALL).await.as_deref(),
        Some(data.as_ref())
    );
}

/// Writing a blob again does not change usage.
pub async fn rewrites_leave_usage_unchanged(store: &dyn BlobStore) {
    let data = blob("twice", 3000);
    store
        .put_bytes(DigestFunction::Sha256, data.clone())
        .await
        .unwrap();
    let before = store.usage().await.unwrap();
    store.put_bytes(DigestFunction::Sha256, data).await.unwrap();
    assert_eq!(store.usage().await.unwrap(), before);
}

/// `delete` removes a blob and reports whether it was there.
pub async fn delete_removes(store: &dyn BlobStore) {
    let digest = store
        .put_bytes(DigestFunction::Sha256, blob("deleted", 10))
        .await
        .unwrap();
    assert!(store.delete(&digest).await.unwrap());
    assert!(!store.delete(&digest).await.unwrap());
    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
}

/// `usage` changes by exactly the blobs written and deleted. Object stores may list a deleted
/// object for a moment (Garage does, for well under a second), so the final count may take up
/// to five seconds to converge.
pub async fn usage_is_exact(store: &dyn BlobStore) {
    let before = store.usage().await.unwrap();
    let a = store
        .put_bytes(DigestFunction::Sha256, blob("usage-a", 123))
        .await
        .unwrap();
    let b = store
        .put_bytes(DigestFunction::Blake3, blob("usage-b", 4567))
        .await
        .unwrap();
    let after = store.usage().await.unwrap();
    assert_eq!(after.blobs, before.blobs + 2);
    assert_eq!(after.bytes, before.bytes + 123 + 4567);
    store.delete(&a).await.unwrap();
    store.delete(&b).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let end = store.usage().await.unwrap();
        if (end.blobs, end.bytes) == (before.blobs, before.bytes) || std::time::Instant::now() > deadline {
            assert_eq!((end.blobs, end.bytes), (before.blobs, before.bytes));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
