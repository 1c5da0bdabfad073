//! Remote Asset API v1: `Fetch` and `Push` of blobs and directories by URI and qualifiers.
//!
//! An asset is stored once per URI under the hash of (URI, sorted qualifiers), as the Push
//! request that created it, so its references and expiry travel with it. A fetch is a hit only
//! if the content is still complete; BuildStream stores artifacts (blobs) and sources
//! (directories) this way, and its start-up probes (empty requests) get INVALID_ARGUMENT.

use std::sync::Arc;
use std::time::SystemTime;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use bazel_remote_apis::google::rpc;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use prost::Message;
use tonic::{Request, Response, Status};

use super::metrics::Lookup;
use super::{Namespace, Shared, digest, digest_function};
use crate::status::{from_store, from_tree};

/// The Fetch service.
pub(crate) struct Fetch {
    shared: Arc<Shared>,
}

/// The Push service.
pub(crate) struct Push {
    shared: Arc<Shared>,
}

impl Fetch {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Fetch { shared }
    }
}

impl Push {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Push { shared }
    }
}

/// The record key of `uri` with `qualifiers` (order-insensitive; a repeated name is refused).
fn key(kind: &str, uri: &str, qualifiers: &[asset::Qualifier]) -> Result<String, Status> {
    let mut sorted: Vec<(&str, &str)> = qualifiers
        .iter()
        .map(|q| (q.name.as_str(), q.value.as_str()))
        .collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Status::invalid_argument("a qualifier name appears twice"));
    }
    let mut text = uri.to_owned();
    for (name, value) in sorted {
        text.push('\0');
        text.push_str(name);
        text.push('=');
        text.push_str(value);
    }
    Ok(format!(
        "{kind}/{}",
        Digest::of(DigestFunction::Sha256, text.as_bytes()).hash_hex()
    ))
}

fn require_uris(uris: &[String]) -> Result<(), Status> {
    if uris.is_empty() {
        return Err(Status::invalid_argument("at least one URI is required"));
    }
    Ok(())
}

fn expired(expire_at: Option<&Timestamp>) -> bool {
    let Some(t) = expire_at else { return false };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    t.seconds < now
}

fn ok_status() -> Option<rpc::Status> {
    Some(rpc::Status::default())
}

/// The two kinds of asset. Each is stored as the Push request that made it.
trait AssetRecord: Message + Default {
    /// The record namespace.
    const KIND: &'static str;
    /// Whether the content is a directory tree (else a blob).
    const DIRECTORY: bool;
    fn instance_name(&self) -> &str;
    fn uris(&self) -> &[String];
    fn qualifiers(&self) -> &[asset::Qualifier];
    fn digest_function(&self) -> i32;
    fn content(&self) -> Option<&reapi::Digest>;
    fn references_blobs(&self) -> &[reapi::Digest];
    fn references_directories(&self) -> &[reapi::Digest];
    fn expire_at(&self) -> Option<&Timestamp>;
}

macro_rules! asset_record {
    ($type:ty, $kind:literal, $directory:literal, $content:ident) => {
        impl AssetRecord for $type {
            const KIND: &'static str = $kind;
            const DIRECTORY: bool = $directory;
            fn instance_name(&self) -> &str {
                &self.instance_name
            }
            fn uris(&self) -> &[String] {
                &self.uris
            }
            fn qualifiers(&self) -> &[asset::Qualifier] {
                &self.qualifiers
            }
            fn digest_function(&self) -> i32 {
                self.digest_function
            }
            fn content(&self) -> Option<&reapi::Digest> {
                self.$content.as_ref()
            }
            fn references_blobs(&self) -> &[reapi::Digest] {
                &self.references_blobs
            }
            fn references_directories(&self) -> &[reapi::Digest] {
                &self.references_directories
            }
            fn expire_at(&self) -> Option<&Timestamp> {
                self.expire_at.as_ref()
            }
        }
    };
}

asset_record!(asset::PushBlobRequest, "blob", false, blob_digest);
asset_record!(
    asset::PushDirectoryRequest,
    "directory",
    true,
    root_directory_digest
);

fn digests(function: DigestFunction, list: &[reapi::Digest]) -> Result<Vec<Digest>, Status> {
    list.iter().map(|d| digest(function, Some(d))).collect()
}

/// A record's content digest, and every blob and directory it needs (the content included).
fn needs<R: AssetRecord>(
    record: &R,
    function: DigestFunction,
) -> Result<(Digest, Vec<Digest>, Vec<Digest>), Status> {
    let content = digest(function, record.content())?;
    let mut blobs = digests(function, record.references_blobs())?;
    let mut directories = digests(function, record.references_directories())?;
    if R::DIRECTORY {
        directories.push(content);
    } else {
        blobs.push(content);
    }
    Ok((content, blobs, directories))
}

/// The blobs and directory trees the asset record stored at `key` keeps alive, or `None` if
/// it cannot be read as one (for `casket gc`).
pub(crate) fn record_roots(key: &str, bytes: &[u8]) -> Option<(Vec<Digest>, Vec<Digest>)> {
    fn roots<R: AssetRecord>(bytes: &[u8]) -> Option<(Vec<Digest>, Vec<Digest>)> {
        let record = R::decode(bytes).ok()?;
        let function = digest_function(record.digest_function()).ok()?;
        let (_, blobs, directories) = needs(&record, function).ok()?;
        Some((blobs, directories))
    }
    match key.split('/').next()? {
        kind if kind == asset::PushBlobRequest::KIND => roots::<asset::PushBlobRequest>(bytes),
        kind if kind == asset::PushDirectoryRequest::KIND => roots::<asset::PushDirectoryRequest>(bytes),
        _ => None,
    }
}

impl Fetch {
    /// The first of `uris` with an unexpired record of kind `R` whose content and references
    /// are all complete (checking them extends their lives), with its content digest.
    async fn find<R: AssetRecord>(
        &self,
        instance: &str,
        uris: &[String],
        qualifiers: &[asset::Qualifier],
        function: DigestFunction,
    ) -> Result<(String, R, Digest), Status> {
        require_uris(uris)?;
        let namespace = self.shared.namespace(instance);
        let found = self.find_in::<R>(namespace, uris, qualifiers, function).await;
        let metrics = &self.shared.metrics;
        metrics.lookups(Lookup::Asset, u64::from(found.is_ok()), u64::from(found.is_err()));
        found
    }

    async fn find_in<R: AssetRecord>(
        &self,
        namespace: &Namespace,
        uris: &[String],
        qualifiers: &[asset::Qualifier],
        function: DigestFunction,
    ) -> Result<(String, R, Digest), Status> {
        for uri in uris {
            let Some(bytes) = namespace
                .assets
                .get(&key(R::KIND, uri, qualifiers)?)
                .await
                .map_err(from_store)?
            else {
                continue;
            };
            let record =
                R::decode(bytes.as_ref()).map_err(|e| Status::data_loss(format!("asset {uri}: {e}")))?;
            if expired(record.expire_at()) {
                continue;
            }
            let (content, blobs, directories) = needs(&record, function)?;
            if complete(namespace, &blobs, &directories).await? {
                return Ok((uri.clone(), record, content));
            }
        }
        Err(Status::not_found(
            "no complete asset for these URIs and qualifiers",
        ))
    }
}

/// Whether every blob and every tree is complete in `namespace` (checking extends their lives).
async fn complete(namespace: &Namespace, blobs: &[Digest], directories: &[Digest]) -> Result<bool, Status> {
    if !namespace
        .blobs
        .find_missing_uncached(blobs)
        .await
        .map_err(from_store)?
        .is_empty()
    {
        return Ok(false);
    }
    for root in directories {
        if casket_tree::Tree::problem(namespace.blobs.as_ref(), root)
            .await
            .map_err(from_tree)?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

#[tonic::async_trait]
impl asset::fetch_server::Fetch for Fetch {
    async fn fetch_blob(
        &self,
        request: Request<asset::FetchBlobRequest>,
    ) -> Result<Response<asset::FetchBlobResponse>, Status> {
        let request = request.into_inner();
        let function = digest_function(request.digest_function)?;
        let (uri, record, blob) = self
            .find::<asset::PushBlobRequest>(
                &request.instance_name,
                &request.uris,
                &request.qualifiers,
                function,
            )
            .await?;
        Ok(Response::new(asset::FetchBlobResponse {
            status: ok_status(),
            uri,
            qualifiers: request.qualifiers,
            expires_at: record.expire_at,
            blob_digest: Some(blob.to_proto()),
            digest_function: request.digest_function,
        }))
    }

    async fn fetch_directory(
        &self,
        request: Request<asset::FetchDirectoryRequest>,
    ) -> Result<Response<asset::FetchDirectoryResponse>, Status> {
        let request = request.into_inner();
        let function = digest_function(request.digest_function)?;
        let (uri, record, root) = self
            .find::<asset::PushDirectoryRequest>(
                &request.instance_name,
                &request.uris,
                &request.qualifiers,
                function,
            )
            .await?;
        Ok(Response::new(asset::FetchDirectoryResponse {
            status: ok_status(),
            uri,
            qualifiers: request.qualifiers,
            expires_at: record.expire_at,
            root_directory_digest: Some(root.to_proto()),
            digest_function: request.digest_function,
        }))
    }
}

impl Push {
    /// Stores `record` under each of its URIs, once everything it names is in the CAS (clients
    /// upload content first).
    async fn accept<R: AssetRecord>(&self, record: R) -> Result<(), Status> {
        require_uris(record.uris())?;
        let function = digest_function(record.digest_function())?;
        let (_, mut needed, directories) = needs(&record, function)?;
        needed.extend(directories);
        let namespace = self.shared.namespace(record.instance_name());
        let missing = namespace
            .blobs
            .find_missing_uncached(&needed)
            .await
            .map_err(from_store)?;
        if let Some(first) = missing.first() {
            return Err(Status::failed_precondition(format!(
                "{first} is not in the CAS: upload it first"
            )));
        }
        let bytes = Bytes::from(record.encode_to_vec());
        for uri in record.uris() {
            namespace
                .assets
                .put(&key(R::KIND, uri, record.qualifiers())?, bytes.clone())
                .await
                .map_err(from_store)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl asset::push_server::Push for Push {
    async fn push_blob(
        &self,
        request: Request<asset::PushBlobRequest>,
    ) -> Result<Response<asset::PushBlobResponse>, Status> {
        self.accept(request.into_inner()).await?;
        Ok(Response::new(asset::PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<asset::PushDirectoryRequest>,
    ) -> Result<Response<asset::PushDirectoryResponse>, Status> {
        self.accept(request.into_inner()).await?;
        Ok(Response::new(asset::PushDirectoryResponse {}))
    }
}
