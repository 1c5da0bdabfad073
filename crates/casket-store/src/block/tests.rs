#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use casket_model::{Digest, DigestFunction};

use super::*;
use crate::BlobStoreExt;

const SHA: DigestFunction = DigestFunction::Sha256;

/// Distinct content for each `n`, `len` bytes long (at least 4).
fn blob(n: u32, len: usize) -> Bytes {
    let mut data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    data[..4].copy_from_slice(&n.to_le_bytes());
    Bytes::from(data)
}

fn options() -> BlockOptions {
    BlockOptions {
        small_blob_limit: 64 << 10,
        block_size: Some(256 << 10),
        ..BlockOptions::default()
    }
}

fn open(dir: &Path, options: BlockOptions) -> BlockStore {
    BlockStore::open(dir, options).unwrap()
}

async fn put_all(store: &BlockStore, blobs: &[Bytes]) -> Vec<Digest> {
    let batch = blobs.iter().cloned().map(NewBlob::new).collect();
    store
        .put_many(SHA, batch)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(BLOCKS_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "blk"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn conforms() {
    let dir = tempfile::tempdir().unwrap();
    crate::conformance::run_all(&open(dir.path(), options())).await;
}

#[tokio::test]
async fn conforms_with_every_blob_in_blocks_and_with_none() {
    for small_blob_limit in [MAX_SMALL_BLOB_LIMIT, 0] {
        let dir = tempfile::tempdir().unwrap();
        let options = BlockOptions {
            small_blob_limit,
            ..options()
        };
        crate::conformance::run_all(&open(dir.path(), options)).await;
    }
}

#[tokio::test]
async fn small_blobs_cost_no_file_each() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), options());
    let blobs: Vec<_> = (0..1000).map(|n| blob(n, 1000)).collect();
    put_all(&store, &blobs).await;
    let files = block_files(dir.path());
    assert!(files.len() < 10, "{} block files for 1000 blobs", files.len());
    let usage = store.usage().await.unwrap();
    assert_eq!((usage.blobs, usage.bytes), (1000, 1_000_000));
    assert_eq!(usage.stored_bytes, 1000 * (1000 + record::HEADER_LEN as u64));
}

#[tokio::test]
async fn reopening_keeps_everything_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..600).map(|n| blob(n, 1000)).collect();
    let big = blob(9, 200 << 10);
    let (digests, big_digest) = {
        let store = open(dir.path(), options());
        let digests = put_all(&store, &blobs).await;
        let big_digest = store.put_bytes(SHA, big.clone()).await.unwrap();
        assert!(store.delete(&digests[0]).await.unwrap());
        (digests, big_digest)
    };
    assert!(block_files(dir.path()).len() > 1, "sealed blocks and an open one");
    let store = open(dir.path(), options());
    assert_eq!(store.find_missing(&digests).await.unwrap(), vec![digests[0]]);
    for (digest, data) in digests.iter().zip(&blobs).skip(1) {
        assert_eq!(store.get_bytes(digest).await.unwrap().as_ref(), Some(data));
    }
    assert_eq!(store.get_bytes(&big_digest).await.unwrap(), Some(big));
    assert_eq!(store.usage().await.unwrap().blobs, 600);
}

#[tokio::test]
async fn a_torn_write_at_the_end_is_cut_off_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..10).map(|n| blob(n, 100)).collect();
    let digests = put_all(&open(dir.path(), options()), &blobs).await;
    let open_block = block_files(dir.path()).pop().unwrap();
    let intact_len = std::fs::metadata(&open_block).unwrap().len();
    // Half a record: a header whose blob never arrived.
    let torn = Header {
        kind: Kind::Blob,
        digest: Digest::of(SHA, b"never written"),
        written: 1,
    };
    let mut bytes = Vec::new();
    torn.encode(&mut bytes);
    bytes.extend_from_slice(b"never");
    OpenOptions::new()
        .append(true)
        .open(&open_block)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let store = open(dir.path(), options());
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
    assert_eq!(
        store.find_missing(&[torn.digest]).await.unwrap(),
        vec![torn.digest]
    );
    assert_eq!(std::fs::metadata(&open_block).unwrap().len(), intact_len);
    // Writing on after the cut works and survives another restart.
    let more = put_all(&store, &[blob(99, 100)]).await;
    drop(store);
    let store = open(dir.path(), options());
    assert!(store.find_missing(&more).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_damaged_index_file_is_rebuilt_from_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..600).map(|n| blob(n, 1000)).collect();
    let digests = put_all(&open(dir.path(), options()), &blobs).await;
    let first = block_files(dir.path()).remove(0).with_extension("idx");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[30] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let store = open(dir.path(), options());
    assert!(store.find_missing(&digests).await.unwrap().is_empty());
    drop(store);
    let rebuilt = std::fs::read(&first).unwrap();
    let seq = 1;
    let len = std::fs::metadata(first.with_extension("blk")).unwrap().len();
    assert!(
        record::decode_index(&rebuilt, seq, len).is_some(),
        "the index was rewritten"
    );
}

#[tokio::test]
async fn corrupt_bytes_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), options());
    let data = blob(1, 5000);
    let digest = store.put_bytes(SHA, data).await.unwrap();
    let block = block_files(dir.path()).pop().unwrap();
    let file = OpenOptions::new().write(true).open(&block).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"X", 100).unwrap();
    assert_eq!(store.get_bytes(&digest).await.unwrap(), None);
    assert_eq!(
        store.find_missing(&[digest]).await.unwrap(),
        vec![digest],
        "dropped, so it can be stored again"
    );
    let again = store.put_bytes(SHA, blob(1, 5000)).await.unwrap();
    assert_eq!(store.get_bytes(&again).await.unwrap(), Some(blob(1, 5000)));
}

#[tokio::test]
async fn verify_reports_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), options());
    let digests = put_all(&store, &(0..20).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    let block = block_files(dir.path()).pop().unwrap();
    let file = OpenOptions::new().write(true).open(&block).unwrap();
    // Inside the 11th record's content: it and every later record of the block are lost.
    std::os::unix::fs::FileExt::write_all_at(&file, b"X", 10 * 1048 + 60).unwrap();
    let verification = store.verify().unwrap();
    assert_eq!(verification.intact, 10);
    assert_eq!(verification.corrupt.len(), 10);
    assert_eq!(verification.damaged_blocks.len(), 1);
    assert_eq!(
        store.find_missing(&digests).await.unwrap(),
        digests[10..].to_vec()
    );
}

#[tokio::test]
async fn expiry_drops_whole_blocks_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = 1 << 20;
    let store = open(
        dir.path(),
        BlockOptions {
            capacity: Some(capacity),
            grace: Duration::ZERO,
            ..options()
        },
    );
    let first = put_all(&store, &(0..200).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    let later = put_all(&store, &(1000..2000).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    let usage = store.usage().await.unwrap();
    assert!(usage.stored_bytes <= capacity, "{usage:?}");
    assert_eq!(
        store.find_missing(&first).await.unwrap(),
        first,
        "the oldest went first"
    );
    assert!(
        store
            .find_missing(&later[later.len() - 100..])
            .await
            .unwrap()
            .is_empty()
    );
    let missing =
        store.find_missing(&first).await.unwrap().len() + store.find_missing(&later).await.unwrap().len();
    assert_eq!(usage.blobs, 1200 - missing as u64, "exact counts");
}

#[tokio::test]
async fn expiry_copies_recently_used_blobs_forward() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = 1 << 20;
    let store = open(
        dir.path(),
        BlockOptions {
            capacity: Some(capacity),
            grace: Duration::from_secs(3600),
            ..options()
        },
    );
    let kept = put_all(&store, &(0..100).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    // Everything is within the grace period: the store fills, then refuses.
    let mut n = 1000;
    let refused = loop {
        match store.put_many(SHA, vec![NewBlob::new(blob(n, 1000))]).await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(refused, StoreError::NoRoom(_)), "{refused}");
    assert!(
        store.find_missing(&kept).await.unwrap().is_empty(),
        "nothing used within the grace period is lost"
    );
    assert!(store.usage().await.unwrap().stored_bytes <= capacity);
}

#[tokio::test]
async fn expire_keeps_what_was_used_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        BlockOptions {
            grace: Duration::from_secs(2),
            ..options()
        },
    );
    let old = put_all(&store, &(0..300).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let used = &old[..10];
    assert!(store.find_missing(used).await.unwrap().is_empty());
    put_all(&store, &(1000..1300).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    let before = store.usage().await.unwrap().stored_bytes;
    // The target cannot be reached: the 300 new blobs are within the grace period too.
    let expiry = store.expire(before / 2, Duration::from_secs(2)).unwrap();
    assert_eq!(expiry.removed_blobs, 290, "{expiry:?}");
    assert!(
        expiry.copied_forward >= 10 && expiry.after < expiry.before,
        "{expiry:?}"
    );
    assert!(
        store.find_missing(used).await.unwrap().is_empty(),
        "used ones were copied forward"
    );
    assert!(!store.find_missing(&old[10..]).await.unwrap().is_empty());
    // The copies carry their last use across a restart.
    drop(store);
    let store = open(dir.path(), options());
    assert!(store.find_missing(used).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_reader_finishes_a_blob_whose_block_is_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        BlockOptions {
            grace: Duration::ZERO,
            ..options()
        },
    );
    let data = blob(1, 60 << 10);
    let digest = store.put_bytes(SHA, data.clone()).await.unwrap();
    put_all(&store, &(10..20).map(|n| blob(n, 60 << 10)).collect::<Vec<_>>()).await;
    let stream = store.read(&digest, ReadRange::ALL).await.unwrap().unwrap();
    store.expire(0, Duration::ZERO).unwrap();
    let read: Vec<Bytes> = futures::TryStreamExt::try_collect(stream).await.unwrap();
    assert_eq!(read.concat(), data.to_vec());
    assert_eq!(store.find_missing(&[digest]).await.unwrap(), vec![digest]);
}

#[tokio::test]
async fn large_blobs_are_files_and_expire_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        BlockOptions {
            capacity: Some(1 << 20),
            grace: Duration::ZERO,
            ..options()
        },
    );
    let big = blob(1, 300 << 10);
    let digest = store.put_bytes(SHA, big.clone()).await.unwrap();
    assert!(store.disk().object_path(&digest).exists());
    assert_eq!(store.get_bytes(&digest).await.unwrap(), Some(big));
    let mut digests = vec![digest];
    for n in 2..6 {
        digests.push(store.put_bytes(SHA, blob(n, 300 << 10)).await.unwrap());
    }
    // Last use is kept to the second: which of these went is not defined, only how many.
    let gone = store.find_missing(&digests).await.unwrap();
    assert_eq!(gone.len(), 2, "{gone:?}");
    assert!(gone.iter().all(|d| !store.disk().object_path(d).exists()));
    assert!(store.usage().await.unwrap().stored_bytes <= 1 << 20);
}

#[tokio::test]
async fn a_blob_larger_than_the_capacity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        BlockOptions {
            capacity: Some(100 << 10),
            ..options()
        },
    );
    let err = store.put_bytes(SHA, blob(1, 200 << 10)).await.unwrap_err();
    assert!(matches!(err, StoreError::ExceedsCapacity { .. }), "{err}");
}

#[tokio::test]
async fn fsync_mode_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        BlockOptions {
            fsync: true,
            ..options()
        },
    );
    let digests = put_all(&store, &(0..300).map(|n| blob(n, 1000)).collect::<Vec<_>>()).await;
    drop(store);
    assert!(
        open(dir.path(), options())
            .find_missing(&digests)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_sync_epoch_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        BlockOptions {
            sync_interval: Duration::from_millis(10),
            ..options()
        },
    );
    put_all(&store, &[blob(1, 10)]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.sync().unwrap();
}
