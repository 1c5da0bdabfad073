//! Generic entries: opaque values that tools which are not REAPI clients (ccache, Gradle,
//! sccache) store under keys of their own. The value is a blob in the namespace's store, so it
//! is under the same quota and expiry as everything else and deduplicated with it; the entry
//! is a record naming that blob. An entry is never read as an action result. An entry whose
//! blob has expired is a miss, and its record is removed.

use bytes::Bytes;
use casket_model::{Digest, RefName};

use crate::error::{CacheError, Result};
use crate::namespace::Namespace;

/// The validated key of an entry: relative, `/`-separated components, each a valid entry name.
pub fn entry_key(key: &str) -> Result<RefName> {
    RefName::new(key).map_err(|e| CacheError::Invalid(format!("entry key {key:?}: {e}")))
}

/// The blob stored under `key`, if the entry and its whole blob are present (asked of the store
/// of record); a miss is `NotFound`. Reading counts as use of both.
pub async fn get_entry(namespace: &Namespace, key: &RefName) -> Result<Digest> {
    let record = namespace
        .entries
        .get(key.as_str())
        .await?
        .ok_or_else(|| CacheError::NotFound(format!("no entry {key}")))?;
    let blob = parse_record(&record)
        .ok_or_else(|| CacheError::Corrupt(format!("the record of entry {key} is not a digest")))?;
    if !namespace.blobs.find_missing_uncached(&[blob]).await?.is_empty() {
        // Its blob expired: the record is of no use any more.
        namespace.entries.delete(key.as_str()).await?;
        return Err(CacheError::NotFound(format!(
            "entry {key}: its value {blob} has expired"
        )));
    }
    Ok(blob)
}

/// Points `key` at `blob`, which must already be stored (`Precondition` otherwise).
pub async fn put_entry(namespace: &Namespace, key: &RefName, blob: &Digest) -> Result<()> {
    if !namespace.blobs.find_missing_uncached(&[*blob]).await?.is_empty() {
        return Err(CacheError::Precondition(format!(
            "the value of entry {key}, {blob}, is not stored"
        )));
    }
    namespace
        .entries
        .put(key.as_str(), Bytes::from(format!("{blob}\n")))
        .await?;
    Ok(())
}

/// Removes the entry at `key` (not its blob, which others may share); `false` if there was none.
pub async fn delete_entry(namespace: &Namespace, key: &RefName) -> Result<bool> {
    Ok(namespace.entries.delete(key.as_str()).await?)
}

/// The blob an entry's record names.
pub fn parse_record(record: &[u8]) -> Option<Digest> {
    std::str::from_utf8(record).ok()?.trim_end().parse().ok()
}

#[cfg(test)]
mod tests {
    use casket_model::DigestFunction;
    use casket_store::{BlobStoreExt, DiskOptions, DiskStore};

    use super::*;

    fn namespace() -> (tempfile::TempDir, Namespace) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = DiskStore::open(dir.path(), DiskOptions::default()).expect("store");
        (dir, Namespace::on_disk(&store))
    }

    #[tokio::test]
    async fn an_entry_is_a_hit_while_its_blob_is_stored() {
        let (_dir, namespace) = namespace();
        let key = entry_key("ccache/ab/cdef").expect("key");
        let blob = namespace
            .blobs
            .put_bytes(DigestFunction::Blake3, Bytes::from_static(b"object file"))
            .await
            .expect("put");
        put_entry(&namespace, &key, &blob).await.expect("put entry");
        assert_eq!(get_entry(&namespace, &key).await.expect("hit"), blob);

        namespace.blobs.delete(&blob).await.expect("delete");
        let miss = get_entry(&namespace, &key).await;
        assert!(matches!(miss, Err(CacheError::NotFound(_))), "{miss:?}");
        assert_eq!(namespace.entries.get(key.as_str()).await.expect("get"), None);
    }

    #[tokio::test]
    async fn an_entry_needs_its_blob_first_and_a_valid_key() {
        let (_dir, namespace) = namespace();
        let key = entry_key("gradle/key").expect("key");
        let absent = Digest::of(DigestFunction::Sha256, b"never stored");
        let refused = put_entry(&namespace, &key, &absent).await;
        assert!(matches!(refused, Err(CacheError::Precondition(_))), "{refused:?}");
        for bad in ["", "/abs", "a/../b", "a//b", "a/./b", "nul\0"] {
            assert!(entry_key(bad).is_err(), "{bad:?}");
        }
    }
}
