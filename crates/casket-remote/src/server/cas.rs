//! `ContentAddressableStorage`: existence checks, batches, and GetTree.
//!
//! Batches answer per blob: one bad blob never fails the batch, and an empty batch is OK.

use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::rpc;
use bytes::Bytes;
use casket_cache::{digest, digest_function};
use casket_model::Digest;
use casket_store::NewBlob;
use casket_tree::{Gaps, TreeError};
use futures::Stream;
use prost::Message;
use tonic::{Code, Request, Response, Status};

use super::find_missing::{FindMissingRequest, FindMissingResponse, WireDigest};
use super::metrics::Lookup;
use super::{MAX_MESSAGE_BYTES, Shared};
use crate::status::{from_cache, from_store, store_code};

/// Directories read at once for one GetTree.
const TREE_CONCURRENCY: usize = 16;

/// Directories per GetTree response when the client sets no page size.
const TREE_PAGE: usize = 4096;

/// The ContentAddressableStorage service.
pub(crate) struct Cas {
    shared: Arc<Shared>,
}

impl Cas {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Cas { shared }
    }

    /// FindMissingBlobs on the messages that skip a `String` per digest (what casket serves).
    pub(crate) async fn find_missing(
        &self,
        request: FindMissingRequest,
    ) -> Result<FindMissingResponse, Status> {
        let function = digest_function(request.digest_function).map_err(from_cache)?;
        let digests = request
            .blob_digests
            .iter()
            .map(|d| d.to_digest(function))
            .collect::<Result<Vec<_>, _>>()
            .map_err(from_cache)?;
        let missing = self.missing(&request.instance_name, &digests).await?;
        Ok(FindMissingResponse {
            missing_blob_digests: missing.iter().map(WireDigest::from).collect(),
        })
    }

    /// Which of `digests` the instance lacks, counted as lookups.
    async fn missing(&self, instance_name: &str, digests: &[Digest]) -> Result<Vec<Digest>, Status> {
        let missing = self
            .shared
            .namespace(instance_name)?
            .blobs
            .find_missing(digests)
            .await
            .map_err(from_store)?;
        self.shared.metrics.lookups(
            Lookup::Blob,
            (digests.len() - missing.len()) as u64,
            missing.len() as u64,
        );
        Ok(missing)
    }
}

fn rpc_status(code: Code, message: impl Into<String>) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    })
}

fn ok_status() -> Option<rpc::Status> {
    rpc_status(Code::Ok, "")
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<reapi::GetTreeResponse, Status>> + Send>>;
type ChunkMappingStream = Pin<Box<dyn Stream<Item = Result<reapi::GetChunkMappingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl reapi::content_addressable_storage_server::ContentAddressableStorage for Cas {
    /// The generated messages' FindMissingBlobs; `CasService` routes the method to
    /// [`Cas::find_missing`] instead, which answers the same.
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        let function = digest_function(request.digest_function).map_err(from_cache)?;
        let digests = request
            .blob_digests
            .iter()
            .map(|d| digest(function, Some(d)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(from_cache)?;
        let missing = self.missing(&request.instance_name, &digests).await?;
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        if request.requests.is_empty() {
            return Ok(Response::new(reapi::BatchUpdateBlobsResponse::default()));
        }
        let function = digest_function(request.digest_function).map_err(from_cache)?;
        let total: u64 = request.requests.iter().map(|r| r.data.len() as u64).sum();
        let limit = self.shared.max_batch_bytes;
        if total > limit {
            return Err(Status::invalid_argument(format!(
                "batch of {total} bytes exceeds max_batch_total_size_bytes {limit}"
            )));
        }
        let namespace = self.shared.namespace(&request.instance_name)?;
        let mut responses = Vec::with_capacity(request.requests.len());
        let mut accepted = Vec::new();
        for blob in request.requests {
            let response = |status| reapi::batch_update_blobs_response::Response {
                digest: blob.digest.clone(),
                status,
            };
            let declared = match digest(function, blob.digest.as_ref()) {
                Ok(d) => d,
                Err(e) => {
                    responses.push(response(rpc_status(Code::InvalidArgument, e.to_string())));
                    continue;
                }
            };
            if blob.compressor != reapi::compressor::Value::Identity as i32 {
                responses.push(response(rpc_status(
                    Code::InvalidArgument,
                    "compressed batch uploads are not supported",
                )));
                continue;
            }
            accepted.push((
                responses.len(),
                NewBlob {
                    data: Bytes::from(blob.data),
                    expected: Some(declared),
                },
            ));
            responses.push(response(ok_status()));
        }
        // The store hashes each blob once and refuses those that do not match their digest; a
        // store under a quota refuses the whole batch (every blob RESOURCE_EXHAUSTED, as the
        // spec asks, none stored) when its new blobs do not fit.
        let (indices, blobs): (Vec<usize>, Vec<NewBlob>) = accepted.into_iter().unzip();
        match namespace.blobs.put_many(function, blobs).await {
            Ok(results) => {
                for (i, result) in indices.into_iter().zip(results) {
                    if let Err(e) = result {
                        responses[i].status = rpc_status(store_code(&e), e.to_string());
                    }
                }
            }
            Err(e) => {
                for i in indices {
                    responses[i].status = rpc_status(store_code(&e), e.to_string());
                }
            }
        }
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        let request = request.into_inner();
        let function = digest_function(request.digest_function).map_err(from_cache)?;
        let total: u64 = request
            .digests
            .iter()
            .map(|d| d.size_bytes.max(0).unsigned_abs())
            .sum();
        let limit = self.shared.max_batch_bytes;
        if total > limit {
            return Err(Status::invalid_argument(format!(
                "batch of {total} bytes exceeds max_batch_total_size_bytes {limit}"
            )));
        }
        let blobs = &self.shared.namespace(&request.instance_name)?.blobs;
        let parsed: Vec<Result<Digest, Status>> = request
            .digests
            .iter()
            .map(|d| digest(function, Some(d)).map_err(from_cache))
            .collect();
        let valid: Vec<Digest> = parsed.iter().filter_map(|d| d.as_ref().ok().copied()).collect();
        // The whole batch is read in one blocking task.
        let mut contents = blobs.get_many(&valid).await.map_err(from_store)?.into_iter();
        let responses: Vec<reapi::batch_read_blobs_response::Response> = request
            .digests
            .into_iter()
            .zip(parsed)
            .map(|(wire, parsed)| {
                let mut response = reapi::batch_read_blobs_response::Response {
                    digest: Some(wire),
                    ..Default::default()
                };
                response.status = match parsed.map(|_| contents.next().flatten()) {
                    Ok(Some(data)) => {
                        response.data = data.to_vec();
                        ok_status()
                    }
                    Ok(None) => rpc_status(Code::NotFound, "blob not found"),
                    Err(e) => rpc_status(e.code(), e.message()),
                };
                response
            })
            .collect();
        let found = responses
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.code == 0))
            .count();
        self.shared
            .metrics
            .lookups(Lookup::Blob, found as u64, (responses.len() - found) as u64);
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<TreeStream>, Status> {
        let request = request.into_inner();
        let function = digest_function(request.digest_function).map_err(from_cache)?;
        let root = digest(function, request.root_digest.as_ref()).map_err(from_cache)?;
        let start: usize = match request.page_token.as_str() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| Status::invalid_argument(format!("invalid page token {token:?}")))?,
        };
        let page_size = usize::try_from(request.page_size).unwrap_or(0);
        let directories = tree_breadth_first(&*self.shared.namespace(&request.instance_name)?, &root).await?;
        let end = match page_size {
            0 => directories.len(),
            n => directories.len().min(start.saturating_add(n)),
        };
        let next_page_token = if end < directories.len() {
            end.to_string()
        } else {
            String::new()
        };
        // One response per page of whole directories, each within the message limit.
        let mut responses = Vec::new();
        let mut current = reapi::GetTreeResponse::default();
        let mut bytes = 0;
        for directory in directories.into_iter().take(end).skip(start) {
            let len = directory.encoded_len();
            if !current.directories.is_empty()
                && (current.directories.len() >= TREE_PAGE || bytes + len > MAX_MESSAGE_BYTES / 2)
            {
                responses.push(Ok(std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += len;
            current.directories.push(directory);
        }
        current.next_page_token = next_page_token;
        responses.push(Ok(current));
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }

    async fn split_blob(
        &self,
        _request: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("blob splitting is not supported"))
    }

    type GetChunkMappingStream = ChunkMappingStream;

    async fn get_chunk_mapping(
        &self,
        _request: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<ChunkMappingStream>, Status> {
        Err(Status::unimplemented("chunk mappings are not supported"))
    }

    async fn splice_blob(
        &self,
        _request: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("blob splicing is not supported"))
    }

    async fn register_chunk_mapping(
        &self,
        _request: Request<tonic::Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("chunk mappings are not supported"))
    }
}

/// Every directory of the tree under `root` that the store has, breadth first, each once:
/// parts of a partial tree are returned, a missing or invalid root is an error, and so is any
/// store failure.
async fn tree_breadth_first(
    namespace: &casket_cache::Namespace,
    root: &Digest,
) -> Result<Vec<reapi::Directory>, Status> {
    let walk = casket_tree::walk(namespace.blobs.as_ref(), root, TREE_CONCURRENCY, Gaps::Skip)
        .await
        .map_err(|e| from_cache(e.into()))?;
    if let Some(gap) = walk.gaps().iter().find(|gap| gap_path(gap) == Some(".")) {
        let code = match gap {
            TreeError::InvalidDirectory { .. } => Code::InvalidArgument,
            _ => Code::NotFound,
        };
        return Err(Status::new(code, format!("root directory: {gap}")));
    }
    Ok(walk
        .directories()
        .map(|(_, directory)| directory.to_proto())
        .collect())
}

/// Where in the tree a walk's gap is.
fn gap_path(gap: &TreeError) -> Option<&str> {
    match gap {
        TreeError::MissingDirectory { path, .. }
        | TreeError::InvalidDirectory { path, .. }
        | TreeError::Store { path, .. } => Some(path),
        _ => None,
    }
}
