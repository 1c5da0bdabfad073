//! Remote Asset API v1: `Fetch` and `Push` of blobs and directories by URI and qualifiers.
//!
//! An asset is stored once per URI under the hash of (URI, sorted qualifiers), as the Push
//! request that created it, so its references and expiry travel with it. A fetch is a hit only
//! if the content is still complete; BuildStream stores artifacts (blobs) and sources
//! (directories) this way, and its start-up probes (empty requests) get INVALID_ARGUMENT.

use std::time::SystemTime;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use bazel_remote_apis::google::rpc;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{ServerState, digest, digest_function};
use crate::status::{from_store, from_tree};

/// Record namespaces for the two kinds of asset.
const BLOB: &str = "blob";
const DIRECTORY: &str = "directory";

/// The Fetch service.
pub(crate) struct Fetch {
    state: ServerState,
}

/// The Push service.
pub(crate) struct Push {
    state: ServerState,
}

impl Fetch {
    pub(crate) fn new(state: ServerState) -> Self {
        Fetch { state }
    }
}

impl Push {
    pub(crate) fn new(state: ServerState) -> Self {
        Push { state }
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

impl Fetch {
    /// The first URI whose record exists, has not expired, and passes `complete`.
    async fn find<R: Message + Default>(
        &self,
        kind: &str,
        uris: &[String],
        qualifiers: &[asset::Qualifier],
    ) -> Result<Option<(String, R)>, Status> {
        for uri in uris {
            let Some(bytes) = self
                .state
                .assets
                .get(&key(kind, uri, qualifiers)?)
                .await
                .map_err(from_store)?
            else {
                continue;
            };
            let record =
                R::decode(bytes.as_ref()).map_err(|e| Status::data_loss(format!("asset {uri}: {e}")))?;
            return Ok(Some((uri.clone(), record)));
        }
        Ok(None)
    }

    /// Whether the blob and the asset's references are present (checking extends their lives).
    async fn complete(&self, blobs: Vec<Digest>, directories: &[Digest]) -> Result<bool, Status> {
        if !self
            .state
            .blobs
            .find_missing(&blobs)
            .await
            .map_err(from_store)?
            .is_empty()
        {
            return Ok(false);
        }
        for root in directories {
            match casket_tree::Tree::load(
                self.state.blobs.as_ref(),
                root,
                casket_tree::default_concurrency(),
            )
            .await
            {
                Ok(tree) => {
                    if tree
                        .first_missing_file(self.state.blobs.as_ref())
                        .await
                        .map_err(from_tree)?
                        .is_some()
                    {
                        return Ok(false);
                    }
                }
                Err(casket_tree::TreeError::MissingDirectory { .. }) => return Ok(false),
                Err(e) => return Err(from_tree(e)),
            }
        }
        Ok(true)
    }
}

fn digests(function: DigestFunction, list: &[reapi::Digest]) -> Result<Vec<Digest>, Status> {
    list.iter().map(|d| digest(function, Some(d))).collect()
}

#[tonic::async_trait]
impl asset::fetch_server::Fetch for Fetch {
    async fn fetch_blob(
        &self,
        request: Request<asset::FetchBlobRequest>,
    ) -> Result<Response<asset::FetchBlobResponse>, Status> {
        let request = request.into_inner();
        require_uris(&request.uris)?;
        let function = digest_function(request.digest_function)?;
        let found = self
            .find::<asset::PushBlobRequest>(BLOB, &request.uris, &request.qualifiers)
            .await?;
        if let Some((uri, record)) = found.filter(|(_, r)| !expired(r.expire_at.as_ref())) {
            let blob = digest(function, record.blob_digest.as_ref())?;
            let mut blobs = digests(function, &record.references_blobs)?;
            blobs.push(blob);
            if self
                .complete(blobs, &digests(function, &record.references_directories)?)
                .await?
            {
                return Ok(Response::new(asset::FetchBlobResponse {
                    status: ok_status(),
                    uri,
                    qualifiers: request.qualifiers,
                    expires_at: record.expire_at,
                    blob_digest: Some(blob.to_proto()),
                    digest_function: request.digest_function,
                }));
            }
        }
        Err(Status::not_found(
            "no complete asset for these URIs and qualifiers",
        ))
    }

    async fn fetch_directory(
        &self,
        request: Request<asset::FetchDirectoryRequest>,
    ) -> Result<Response<asset::FetchDirectoryResponse>, Status> {
        let request = request.into_inner();
        require_uris(&request.uris)?;
        let function = digest_function(request.digest_function)?;
        let found = self
            .find::<asset::PushDirectoryRequest>(DIRECTORY, &request.uris, &request.qualifiers)
            .await?;
        if let Some((uri, record)) = found.filter(|(_, r)| !expired(r.expire_at.as_ref())) {
            let root = digest(function, record.root_directory_digest.as_ref())?;
            let mut directories = digests(function, &record.references_directories)?;
            directories.push(root);
            if self
                .complete(digests(function, &record.references_blobs)?, &directories)
                .await?
            {
                return Ok(Response::new(asset::FetchDirectoryResponse {
                    status: ok_status(),
                    uri,
                    qualifiers: request.qualifiers,
                    expires_at: record.expire_at,
                    root_directory_digest: Some(root.to_proto()),
                    digest_function: request.digest_function,
                }));
            }
        }
        Err(Status::not_found(
            "no complete asset for these URIs and qualifiers",
        ))
    }
}

impl Push {
    /// Refuses an asset whose content is not in the CAS: clients upload content first.
    async fn require_present(&self, blobs: &[Digest]) -> Result<(), Status> {
        let missing = self.state.blobs.find_missing(blobs).await.map_err(from_store)?;
        match missing.first() {
            Some(first) => Err(Status::failed_precondition(format!(
                "{first} is not in the CAS: upload it first"
            ))),
            None => Ok(()),
        }
    }

    async fn store(
        &self,
        kind: &str,
        uris: &[String],
        qualifiers: &[asset::Qualifier],
        record: Bytes,
    ) -> Result<(), Status> {
        for uri in uris {
            self.state
                .assets
                .put(&key(kind, uri, qualifiers)?, record.clone())
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
        let request = request.into_inner();
        require_uris(&request.uris)?;
        let function = digest_function(request.digest_function)?;
        let blob = digest(function, request.blob_digest.as_ref())?;
        self.state.require_push()?;
        let mut blobs = digests(function, &request.references_blobs)?;
        blobs.push(blob);
        blobs.extend(digests(function, &request.references_directories)?);
        self.require_present(&blobs).await?;
        let record = Bytes::from(request.encode_to_vec());
        self.store(BLOB, &request.uris, &request.qualifiers, record)
            .await?;
        Ok(Response::new(asset::PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<asset::PushDirectoryRequest>,
    ) -> Result<Response<asset::PushDirectoryResponse>, Status> {
        let request = request.into_inner();
        require_uris(&request.uris)?;
        let function = digest_function(request.digest_function)?;
        let root = digest(function, request.root_directory_digest.as_ref())?;
        self.state.require_push()?;
        let mut blobs = digests(function, &request.references_blobs)?;
        blobs.push(root);
        blobs.extend(digests(function, &request.references_directories)?);
        self.require_present(&blobs).await?;
        let record = Bytes::from(request.encode_to_vec());
        self.store(DIRECTORY, &request.uris, &request.qualifiers, record)
            .await?;
        Ok(Response::new(asset::PushDirectoryResponse {}))
    }
}
