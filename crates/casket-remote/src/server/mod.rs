//! `casket serve`: the gRPC services over shared [`Namespaces`], behind access and metrics layers.
//!
//! Each service module only translates between the protocol and the store: decode, validate,
//! call the store, encode. Limits are constants here, so that Capabilities advertises exactly
//! what the server enforces.

mod access;
mod action_cache;
mod asset;
mod bytestream;
mod capabilities;
mod cas;
mod metrics;
mod monitoring;
mod quota;
mod reference;
mod retention;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::FetchServer;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::PushServer;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::byte_stream_server::ByteStreamServer;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStore, DiskRecords, DiskRefs, DiskStore, RecordStore, RefStore};
use reapi::action_cache_server::ActionCacheServer;
use reapi::capabilities_server::CapabilitiesServer;
use reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tokio::net::TcpListener;
use tonic::Status;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use access::{Access, AccessPolicy, TokenFileError};
pub use metrics::Metrics;
pub use monitoring::serve_monitoring;
pub use quota::{Quota, QuotaOptions, Reservation};
pub use retention::{Bucket, RetentionOptions, RetentionReport, expire};

use access::AccessLayer;
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

/// The stores behind one namespace. Instance names map to namespaces (see [`Namespaces`]).
#[derive(Clone, Debug)]
pub struct Namespace {
    /// The content-addressable store.
    pub blobs: Arc<dyn BlobStore>,
    /// BuildStream refs.
    pub refs: Arc<dyn RefStore>,
    /// REAPI action results, keyed by [`casket_store::action_key`].
    pub action_cache: Arc<dyn RecordStore>,
    /// Remote Asset entries.
    pub assets: Arc<dyn RecordStore>,
    /// The store's quota and exact usage, for disk stores: every write reserves its space
    /// here first.
    pub quota: Option<Arc<Quota>>,
    /// What the store is, for `/status` (its directory, for a disk store).
    pub description: String,
}

impl Namespace {
    /// Serves `store`, with its refs, action results and assets beside it, and no quota.
    pub fn on_disk(store: &DiskStore) -> Self {
        Namespace {
            blobs: Arc::new(store.clone()),
            refs: Arc::new(DiskRefs::new(store)),
            action_cache: Arc::new(DiskRecords::new(store, "ac")),
            assets: Arc::new(DiskRecords::new(store, "assets")),
            quota: None,
            description: store.root().display().to_string(),
        }
    }

    /// Reserves room for `bytes` of new blob data, evicting if the quota needs it; the
    /// reservation lasts until the returned guard is dropped (after the write).
    pub(crate) async fn reserve(&self, bytes: u64) -> Result<Option<Reservation>, Status> {
        match &self.quota {
            Some(quota) => quota.reserve(bytes).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Which namespace serves each instance name: the named ones from the configuration, and the
/// default one for every other instance name (including the empty one).
#[derive(Clone, Debug)]
pub struct Namespaces {
    default: Namespace,
    by_instance: HashMap<String, Namespace>,
}

impl Namespaces {
    /// Every instance name served by `default`.
    pub fn new(default: Namespace) -> Self {
        Namespaces {
            default,
            by_instance: HashMap::new(),
        }
    }

    /// Serves `instance` from `namespace` instead of the default one.
    pub fn insert(&mut self, instance: impl Into<String>, namespace: Namespace) {
        self.by_instance.insert(instance.into(), namespace);
    }

    /// The namespace serving `instance`.
    pub(crate) fn get(&self, instance: &str) -> &Namespace {
        self.by_instance.get(instance).unwrap_or(&self.default)
    }

    /// Every namespace, the default one first, with the instance name it serves (`None` for
    /// the default).
    pub(crate) fn all(&self) -> impl Iterator<Item = (Option<&str>, &Namespace)> {
        std::iter::once((None, &self.default))
            .chain(self.by_instance.iter().map(|(k, v)| (Some(k.as_str()), v)))
    }
}

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
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            access: AccessPolicy::default(),
            tls: None,
            remote_asset: true,
            max_batch_bytes: MAX_BATCH_BYTES,
            disabled_methods: Vec::new(),
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
}

impl Shared {
    /// The namespace serving `instance`.
    pub(crate) fn namespace(&self, instance: &str) -> &Namespace {
        self.namespaces.get(instance)
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
    let shared = Arc::new(Shared {
        namespaces,
        metrics: metrics.clone(),
        max_batch_bytes: options.max_batch_bytes.min(MAX_BATCH_BYTES),
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
    builder
        .layer(MetricsLayer::new(metrics))
        .layer(AccessLayer::new(options.access, options.disabled_methods))
        .add_service(health)
        .add_service(CapabilitiesServer::new(capabilities::Capabilities::new(
            shared.clone(),
        )))
        .add_service(
            ContentAddressableStorageServer::new(cas::Cas::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ByteStreamServer::new(bytestream::ByteStream::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ActionCacheServer::new(action_cache::ActionCache::new(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_optional_service(
            options
                .remote_asset
                .then(|| FetchServer::new(asset::Fetch::new(shared.clone()))),
        )
        .add_optional_service(
            options
                .remote_asset
                .then(|| PushServer::new(asset::Push::new(shared.clone()))),
        )
        .add_service(ReferenceStorageServer::new(reference::ReferenceStorage::new(
            shared,
        )))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
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
