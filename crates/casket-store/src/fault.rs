//! Fault injection for tests: [`FaultyStore`] wraps any store and fails or hides chosen blobs,
//! so that callers can be shown to surface store errors and to cope with missing blobs.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use futures::stream::BoxStream;

use crate::blob_store::{BlobStore, BlobStream, BlobWriter, ListedBlob, NewBlob, ReadRange, Usage};
use crate::error::{Result, StoreError};

/// What happens to a chosen blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every read or existence check of it fails with an I/O error.
    Fail,
    /// It looks absent to reads and existence checks (it is still listed and can be deleted).
    Hide,
}

/// A store whose chosen blobs fail or look absent. Writes, deletes, listing and usage go to
/// the wrapped store untouched.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<HashMap<Digest, Fault>>,
}

impl<S: BlobStore> FaultyStore<S> {
    /// Wraps `inner`, with no faults yet.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Mutex::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// From now on, `digest` behaves as `fault` says.
    pub fn inject(&self, digest: Digest, fault: Fault) {
        self.lock().insert(digest, fault);
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Fault>> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fault(&self, digest: &Digest) -> Option<Fault> {
        self.lock().get(digest).copied()
    }

    /// Fails if any of `digests` is set to fail; else the ones set to hide.
    fn check(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let faults = self.lock();
        let mut hidden = Vec::new();
        for digest in digests {
            match faults.get(digest) {
                Some(Fault::Fail) => return Err(injected(digest)),
                Some(Fault::Hide) => hidden.push(*digest),
                None => {}
            }
        }
        Ok(hidden)
    }

    /// `missing` from the wrapped store, plus the hidden digests, in the order asked.
    fn with_hidden(digests: &[Digest], missing: Vec<Digest>, hidden: &[Digest]) -> Vec<Digest> {
        if hidden.is_empty() {
            return missing;
        }
        digests
            .iter()
            .filter(|d| hidden.contains(d) || missing.contains(d))
            .copied()
            .collect()
    }
}

fn injected(digest: &Digest) -> StoreError {
    StoreError::Io {
        op: "read (injected fault)",
        path: PathBuf::from(digest.to_string()),
        source: io::Error::other("injected fault"),
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for FaultyStore<S> {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let hidden = self.check(digests)?;
        let missing = self.inner.find_missing(digests).await?;
        Ok(Self::with_hidden(digests, missing, &hidden))
    }

    async fn find_missing_uncached(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let hidden = self.check(digests)?;
        let missing = self.inner.find_missing_uncached(digests).await?;
        Ok(Self::with_hidden(digests, missing, &hidden))
    }

    async fn stored_digest(&self, function: DigestFunction, hash: &[u8; 32]) -> Result<Option<Digest>> {
        let Some(digest) = self.inner.stored_digest(function, hash).await? else {
            return Ok(None);
        };
        match self.fault(&digest) {
            Some(Fault::Fail) => Err(injected(&digest)),
            Some(Fault::Hide) => Ok(None),
            None => Ok(Some(digest)),
        }
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        match self.fault(digest) {
            Some(Fault::Fail) => Err(injected(digest)),
            Some(Fault::Hide) => Ok(None),
            None => self.inner.read(digest, range).await,
        }
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.inner.begin_write(digest).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.inner.delete(digest).await
    }

    async fn usage(&self) -> Result<Usage> {
        self.inner.usage().await
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        self.inner.put_many(function, blobs).await
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<Bytes>>> {
        let hidden = self.check(digests)?;
        let mut found = self.inner.get_many(digests).await?;
        for (digest, slot) in digests.iter().zip(&mut found) {
            if hidden.contains(digest) {
                *slot = None;
            }
        }
        Ok(found)
    }

    fn local_file(&self, digest: &Digest, executable: bool) -> Result<Option<PathBuf>> {
        match self.fault(digest) {
            Some(Fault::Fail) => Err(injected(digest)),
            Some(Fault::Hide) => Ok(None),
            None => self.inner.local_file(digest, executable),
        }
    }

    fn list_blobs(&self) -> BoxStream<'_, Result<ListedBlob>> {
        self.inner.list_blobs()
    }

    async fn delete_many(&self, digests: &[Digest]) -> Result<()> {
        self.inner.delete_many(digests).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobStoreExt, MemoryStore};

    #[tokio::test]
    async fn chosen_blobs_fail_or_hide_and_the_rest_pass_through() {
        let store = FaultyStore::new(MemoryStore::new());
        let put = |data: &'static [u8]| store.put_bytes(DigestFunction::Sha256, Bytes::from_static(data));
        let (a, b, c) = (put(b"a").await, put(b"b").await, put(b"c").await);
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        store.inject(a, Fault::Fail);
        store.inject(b, Fault::Hide);
        assert!(store.get_bytes(&a).await.is_err());
        assert!(store.find_missing(&[a, c]).await.is_err());
        assert_eq!(store.get_bytes(&b).await.expect("hidden"), None);
        assert_eq!(store.find_missing(&[c, b]).await.expect("find"), vec![b]);
        assert_eq!(
            store.get_many(&[b, c]).await.expect("get_many"),
            vec![None, Some(Bytes::from_static(b"c"))]
        );
        store.clear();
        assert_eq!(store.find_missing(&[a, b, c]).await.expect("find"), vec![]);
    }
}
