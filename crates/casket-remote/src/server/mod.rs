//! `casket serve`: the gRPC services over shared [`Namespaces`], behind access and metrics layers.
//!
//! Each service module only translates between the protocol and the cache layer
//! (`casket_cache`): decode, call, encode, map errors. Cache policy (what a hit is, the quota,
//! expiry) lives in the cache layer. Limits are constants here, so that Capabilities advertises
//! exactly what the server enforces, and `limits.rs` answers over-size messages as REAPI says.

pub(crate) mod access;
mod action_cache;
mod asset;
mod bytestream;
mod capabilities;
mod cas;
mod find_missing;
mod history;
mod limits;
pub(crate) mod metrics;
mod monitoring;
mod reference;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::FetchServer;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::PushServer;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer;
use casket_cache::{Namespace, Namespaces};
use reapi::action_cache_server::ActionCacheServer;
use reapi::capabilities_server::CapabilitiesServer;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::service::RoutesBuilder;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use access::{Access, AccessPolicy, TokenFileError};
pub use asset::{Fetch as AssetFetch, Push as AssetPush};
pub use metrics::Metrics;
pub use monitoring::serve_monitoring;

use access::AccessLayer;
use limits::LimitsLayer;
use metrics::MetricsLayer;

use crate::proto::buildstream::reference_storage_server::ReferenceStorageServer;

/// The largest gRPC message the server accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The most blob data in one BatchUpdateBlobs or BatchReadBlobs, advertised in Capabilities.
/// Half the message limit leaves room for per-blob framing and digests.
pub const MAX_BATCH_BYTES: u64 = (MAX_MESSAGE_BYTES / 2) as u64;

/// HTTP/2 flow-control window per stream.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;

/// Bytes per ByteStream ReadResponse.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// Server certificate and, optionally, client-certificate verification (mTLS).
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// The server's certificate chain, PEM.
    pub certificate: Vec<u8>,
    /// The server's private key, PEM.
    pub key: Vec<u8>,
    /// CA certificates (PEM) that client certificates are verified against; a verified
    /// client certificate grants [`AccessPolicy::client_certificate`] rights.
    pub client_ca: Option<Vec<u8>>,
    /// Refuse connections without a verified client certificate.
    pub require_client_certificate: bool,
}

/// How the server behaves, beyond what it serves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Who may read and write.
    pub access: AccessPolicy,
    /// TLS; plain HTTP/2 when absent.
    pub tls: Option<TlsOptions>,
    /// Whether to offer the Remote Asset API. BuildStream 1 uses it instead of
    /// ReferenceStorage when it is there; BuildStream 2 needs it.
    pub remote_asset: bool,
    /// The most blob data in one batch request or response, advertised in Capabilities (at
    /// most [`MAX_BATCH_BYTES`], which the message limit allows).
    pub max_batch_bytes: u64,
    /// Methods answered with UNIMPLEMENTED, as `Service/Method` (for example
    /// `ContentAddressableStorage/GetTree`): to switch off an expensive method, or to stand in
    /// for an older server.
    pub disabled_methods: Vec<String>,
    /// How long an interrupted ByteStream upload is kept for resumption without being resumed.
    pub upload_lifetime: Duration,
}

/// How long interrupted uploads are kept by default.
pub const UPLOAD_LIFETIME: Duration = Duration::from_secs(600);

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            access: AccessPolicy::default(),
            tls: None,
            remote_asset: true,
            max_batch_bytes: MAX_BATCH_BYTES,
            disabled_methods: Vec::new(),
            upload_lifetime: UPLOAD_LIFETIME,
        }
    }
}

/// What every service shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) namespaces: Arc<Namespaces>,
    pub(crate) metrics: Arc<Metrics>,
    /// The batch limit in force.
    pub(crate) max_batch_bytes: u64,
    /// How long interrupted uploads are kept.
    pub(crate) upload_lifetime: Duration,
}

impl Shared {
    /// The namespace serving `instance`: INVALID_ARGUMENT for a name nothing serves (as
    /// buildbox-casd answers).
    pub(crate) fn namespace(&self, instance: &str) -> Result<Arc<Namespace>, Status> {
        self.namespaces
            .get(instance)
            .ok_or_else(|| Status::invalid_argument(format!("Invalid instance name {instance:?}")))
    }
}

/// A TLS configuration error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Serves every service on `listener` until `shutdown` completes, with `metrics` counting
/// every request.
pub async fn serve(
    namespaces: Arc<Namespaces>,
    options: ServerOptions,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let max_batch_bytes = options.max_batch_bytes.min(MAX_BATCH_BYTES);
    let shared = Arc::new(Shared {
        namespaces,
        metrics: metrics.clone(),
        max_batch_bytes,
        upload_lifetime: options.upload_lifetime,
    });
    let (_health_reporter, health) = tonic_health::server::health_reporter();
    // Nagle's algorithm with delayed ACKs stalls each small response by about 40 ms; the
    // builder's tcp_nodelay does not apply to a listener passed in, so set it here.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Large windows keep a single ByteStream at loopback or LAN speed; keepalives drop dead
    // clients (and their parked uploads' connections).
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(4 * STREAM_WINDOW_BYTES))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls_config(tls)).map_err(ServeError::Tls)?;
    }
    let mut routes = cache_routes_of(&shared);
    if options.remote_asset {
        routes
            .add_service(FetchServer::new(asset::Fetch::new(shared.clone())))
            .add_service(PushServer::new(asset::Push::new(shared.clone())));
    }
    routes
        .add_service(health)
        .add_service(ReferenceStorageServer::new(reference::ReferenceStorage::new(
            shared,
        )));
    builder
        .layer(MetricsLayer::new(metrics))
        .layer(AccessLayer::new(options.access, options.disabled_methods))
        .layer(LimitsLayer::new(max_batch_bytes))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// The REAPI cache services (Capabilities, ContentAddressableStorage, ByteStream, ActionCache)
/// over `namespaces`, for a server that adds its own services and transport (the local CAS
/// daemon): the same handlers `serve` mounts, without its access policy.
pub fn cache_routes(namespaces: Arc<Namespaces>, metrics: Arc<Metrics>) -> RoutesBuilder {
    cache_routes_of(&Arc::new(Shared {
        namespaces,
        metrics,
        max_batch_bytes: MAX_BATCH_BYTES,
        upload_lifetime: UPLOAD_LIFETIME,
    }))
}

/// The Remote Asset handlers over `namespaces`, for a server that wraps them (the local CAS
/// daemon forwards its proxy instances' requests and hands the rest to these).
pub fn asset_handlers(namespaces: Arc<Namespaces>, metrics: Arc<Metrics>) -> (AssetFetch, AssetPush) {
    let shared = Arc::new(Shared {
        namespaces,
        metrics,
        max_batch_bytes: MAX_BATCH_BYTES,
        upload_lifetime: UPLOAD_LIFETIME,
    });
    (asset::Fetch::new(shared.clone()), asset::Push::new(shared))
}

fn cache_routes_of(shared: &Arc<Shared>) -> RoutesBuilder {
    let mut routes = RoutesBuilder::default();
    routes
        .add_service(CapabilitiesServer::new(capabilities::Capabilities::new(
            shared.clone(),
        )))
        .add_service(find_missing::CasService::new(cas::Cas::new(shared.clone())))
        .add_service(
            ByteStreamServer::new(bytestream::ByteStream::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ActionCacheServer::new(action_cache::ActionCache::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    routes
}

fn tls_config(tls: &TlsOptions) -> ServerTlsConfig {
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.certificate, &tls.key));
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(!tls.require_client_certificate);
    }
    config
}

/// Binds `addr` (port 0 picks a free port) without `SO_REUSEPORT`, so two servers can never
/// silently share a port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
