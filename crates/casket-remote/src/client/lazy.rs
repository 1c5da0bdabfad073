//! [`LazyRemote`]: a remote connected on first use. A daemon whose remote is away still
//! starts; each request that needs the remote tries to connect again and, until it can,
//! fails with the remote's UNAVAILABLE instead of taking the daemon down.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, BlobStream, BlobWriter, NewBlob, ReadRange, Result, StoreError, Usage};
use tokio::sync::OnceCell;

use super::{ConnectError, RemoteCas, RemoteOptions};

/// A [`RemoteCas`] made on first use, as a [`BlobStore`].
#[derive(Debug)]
pub struct LazyRemote {
    options: RemoteOptions,
    remote: OnceCell<RemoteCas>,
}

impl LazyRemote {
    /// A remote that `connect`s with `options` when first needed.
    pub fn new(options: RemoteOptions) -> Self {
        LazyRemote {
            options,
            remote: OnceCell::new(),
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.options.url
    }

    /// The connected remote: connects now if no earlier call could.
    pub async fn get(&self) -> std::result::Result<&RemoteCas, ConnectError> {
        self.remote
            .get_or_try_init(|| RemoteCas::connect(self.options.clone()))
            .await
    }

    async fn store(&self) -> Result<&RemoteCas> {
        self.get().await.map_err(|e| StoreError::Remote {
            operation: "connect",
            code: tonic::Code::Unavailable as i32,
            code_name: "UNAVAILABLE".to_owned(),
            message: format!("{}: {e}", self.options.url),
        })
    }
}

#[async_trait]
impl BlobStore for LazyRemote {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        self.store().await?.find_missing(digests).await
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        self.store().await?.read(digest, range).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.store().await?.begin_write(digest).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        self.store().await?.delete(digest).await
    }

    async fn usage(&self) -> Result<Usage> {
        self.store().await?.usage().await
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        self.store().await?.put_many(function, blobs).await
    }

    async fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<bytes::Bytes>>> {
        self.store().await?.get_many(digests).await
    }

    async fn ingest_file(&self, path: &Path, function: DigestFunction) -> Result<Digest> {
        self.store().await?.ingest_file(path, function).await
    }

    fn local_file(&self, _digest: &Digest, _executable: bool) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}
