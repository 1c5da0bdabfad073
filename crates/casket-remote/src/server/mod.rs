//! `casket serve`: the gRPC services over one shared [`ServerState`].
//!
//! Each service module only translates between the protocol and the store: decode, validate,
//! call the store, encode. Limits are constants here, so that Capabilities advertises exactly
//! what the server enforces.

mod action_cache;
mod asset;
mod bytestream;
mod capabilities;
mod cas;
mod reference;

use std::net::SocketAddr;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::FetchServer;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::PushServer;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, DiskRecords, DiskRefs, DiskStore};
use reapi::action_cache_server::ActionCacheServer;
use reapi::capabilities_server::CapabilitiesServer;
use reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio::net::TcpListener;
use tonic::Status;

use crate::proto::buildstream::reference_storage_server::ReferenceStorageServer;

/// The largest gRPC message the server accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The most blob data in one BatchUpdateBlobs or BatchReadBlobs, advertised in Capabilities.
/// Half the message limit leaves room for per-blob framing and digests.
pub const MAX_BATCH_BYTES: u64 = (MAX_MESSAGE_BYTES / 2) as u64;

/// Bytes per ByteStream ReadResponse.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// What every service shares.
#[derive(Clone, Debug)]
pub struct ServerState {
    /// The content-addressable store.
    pub blobs: Arc<dyn BlobStore>,
    /// BuildStream refs.
    pub refs: DiskRefs,
    /// REAPI action results, keyed by [`DiskRecords::action_key`].
    pub action_cache: DiskRecords,
    /// Remote Asset entries.
    pub assets: DiskRecords,
    /// Whether clients may write (blobs, action results, refs, assets).
    pub allow_push: bool,
    /// Whether to offer the Remote Asset API. BuildStream 1 uses it instead of ReferenceStorage
    /// when it is there; BuildStream 2 needs it.
    pub remote_asset: bool,
}

impl ServerState {
    /// Serves `store`, with its refs, action results and assets beside it.
    pub fn on_disk(store: &DiskStore, allow_push: bool) -> Self {
        ServerState {
            blobs: Arc::new(store.clone()),
            refs: DiskRefs::new(store),
            action_cache: DiskRecords::new(store, "ac"),
            assets: DiskRecords::new(store, "assets"),
            allow_push,
            remote_asset: true,
        }
    }

    /// Refuses a write when pushing is not allowed. Nothing is stored after a refusal.
    pub(crate) fn require_push(&self) -> Result<(), Status> {
        if self.allow_push {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this server is read-only for this client (start it with --allow-push)",
            ))
        }
    }
}

/// The digest function a request names (`UNKNOWN` means SHA-256).
pub(crate) fn digest_function(value: i32) -> Result<DigestFunction, Status> {
    DigestFunction::from_proto(value)
        .ok_or_else(|| Status::invalid_argument(format!("unsupported digest function {value}")))
}

/// A wire digest, validated.
pub(crate) fn digest(function: DigestFunction, d: Option<&reapi::Digest>) -> Result<Digest, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument("a digest is required"))?;
    Digest::from_proto(function, d).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Serves every service on `listener` until `shutdown` completes.
pub async fn serve(
    state: ServerState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (_health_reporter, health) = tonic_health::server::health_reporter();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(CapabilitiesServer::new(capabilities::Capabilities::new(
            state.clone(),
        )))
        .add_service(
            ContentAddressableStorageServer::new(cas::Cas::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ByteStreamServer::new(bytestream::ByteStream::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ActionCacheServer::new(action_cache::ActionCache::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_optional_service(
            state
                .remote_asset
                .then(|| FetchServer::new(asset::Fetch::new(state.clone()))),
        )
        .add_optional_service(
            state
                .remote_asset
                .then(|| PushServer::new(asset::Push::new(state.clone()))),
        )
        .add_service(ReferenceStorageServer::new(reference::ReferenceStorage::new(
            state,
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Binds `addr` (port 0 picks a free port) without `SO_REUSEPORT`, so two servers can never
/// silently share a port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
