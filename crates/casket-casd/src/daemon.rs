//! The daemon: opens the cache root in buildbox-casd's layout, puts it under the quota,
//! mounts every service, and only then binds the socket (BuildStream treats the socket's
//! existence as "ready"). On shutdown it stops within a fixed deadline, whatever is running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::FetchServer;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::PushServer;
use casket_cache::{EvictionListener, Namespace, Namespaces, Quota, QuotaOptions, QuotaStore};
use casket_remote::client::{ClientTls, LazyRemote, RemoteOptions};
use casket_remote::server::{Metrics, asset_handlers, cache_routes};
use casket_store::{BlobStore, DiskOptions, DiskStore, Layout, SpaceBudget, StoreError, TieredStore};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::local_cas::LocalCas;
use crate::proto::local_content_addressable_storage_server::LocalContentAddressableStorageServer;
use crate::remotes::{FetchProxy, PushProxy, Remotes};

/// How long in-flight requests may run on after shutdown is asked for. BuildStream waits
/// 0.5 s after SIGTERM before it reports a slow exit.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(250);

/// casd's default `--quota-low`.
const DEFAULT_LOW_WATER: f64 = 0.65;

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// A UNIX socket (`unix:PATH`), BuildStream's way.
    Unix(PathBuf),
    /// A TCP address (`HOST:PORT`).
    Tcp(SocketAddr),
}

impl Bind {
    /// Parses casd's `--bind` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("expected a socket path after unix:".into());
            }
            return Ok(Bind::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(Bind::Tcp)
            .map_err(|_| "expected unix:PATH or HOST:PORT".into())
    }
}

/// `--quota-low`: how far expiry frees.
#[derive(Clone, Copy, Debug)]
pub enum LowWater {
    /// A fraction of the quota.
    Fraction(f64),
    /// A size in bytes.
    Bytes(u64),
}

/// A remote CAS, as casd's `--cas-*` flags or a LocalCAS `Remote` message describe it.
#[derive(Clone, Debug, Default)]
pub struct RemoteSpec {
    /// `http://HOST:PORT`, `https://…`, `grpc://…` or `grpcs://…`.
    pub url: String,
    /// The remote's instance name.
    pub instance: String,
    /// A CA certificate (PEM file) to verify the server with.
    pub server_cert: Option<PathBuf>,
    /// A client key (PEM file), with `client_cert`.
    pub client_key: Option<PathBuf>,
    /// A client certificate (PEM file), with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// A file holding a bearer token.
    pub access_token: Option<PathBuf>,
    /// Retries of a failed request.
    pub retry_limit: Option<u32>,
    /// The first wait before a retry.
    pub retry_delay: Option<Duration>,
    /// A deadline per request.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keepalive interval.
    pub keepalive: Option<Duration>,
    /// Never write to the remote.
    pub read_only: bool,
}

impl RemoteSpec {
    /// The client options for this remote, reading the certificate and token files.
    pub fn client_options(&self) -> Result<RemoteOptions, DaemonError> {
        let read = |path: &Option<PathBuf>| {
            path.as_ref()
                .map(|p| std::fs::read(p).map_err(|e| DaemonError::Remote(format!("{}: {e}", p.display()))))
                .transpose()
        };
        let identity = match (read(&self.client_cert)?, read(&self.client_key)?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(DaemonError::Remote(
                    "a client key needs a client certificate".into(),
                ));
            }
        };
        let token = read(&self.access_token)?.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
        Ok(remote_options(
            &self.url,
            &self.instance,
            ClientTls {
                ca: read(&self.server_cert)?,
                identity,
            },
            token,
            self,
        ))
    }
}

/// Client options from a remote's settings.
pub(crate) fn remote_options(
    url: &str,
    instance: &str,
    tls: ClientTls,
    token: Option<String>,
    settings: &RemoteSpec,
) -> RemoteOptions {
    let mut options = RemoteOptions::new(remote_url(url));
    options.instance = instance.to_owned();
    options.tls = tls;
    options.token = token;
    if let Some(retries) = settings.retry_limit {
        options.retries = retries;
    }
    if let Some(delay) = settings.retry_delay {
        options.retry_delay = delay;
    }
    options.request_timeout = settings.request_timeout;
    options.keepalive = settings.keepalive;
    options
}

/// BuildStream writes `HOST:PORT` without a scheme for plain gRPC; casket's client wants one.
fn remote_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// Everything the daemon is started with (casd's command line, see [`crate::flags`]).
#[derive(Debug)]
pub struct DaemonOptions {
    /// The cache root (BuildStream's `cachedir`).
    pub root: PathBuf,
    /// Where to listen.
    pub binds: Vec<Bind>,
    /// The mode of UNIX sockets, if set.
    pub socket_mode: Option<u32>,
    /// A `tracing` level: trace, debug, info, warn or error.
    pub log_level: String,
    /// The most the cache may use.
    pub quota_high: Option<u64>,
    /// How far expiry frees.
    pub quota_low: Option<LowWater>,
    /// When background expiry starts, as a fraction of the quota.
    pub cleanup_threshold: Option<f64>,
    /// Disk space left free for everything else.
    pub reserved: Option<u64>,
    /// Never expire blobs used since the daemon started.
    pub protect_session_blobs: bool,
    /// The remote cache behind the local one (`--cas-remote`, BuildStream's storage-service).
    pub storage_service: Option<RemoteSpec>,
    /// Extra instance names served by the local cache.
    pub local_instances: Vec<String>,
    /// Flags accepted and ignored, with why (logged at start).
    pub ignored: Vec<String>,
}

impl DaemonOptions {
    /// Defaults for a cache at `root`: casd's log level and low-water mark, no quota.
    pub fn new(root: PathBuf) -> Self {
        DaemonOptions {
            root,
            binds: Vec::new(),
            socket_mode: None,
            log_level: "error".to_owned(),
            quota_high: None,
            quota_low: None,
            cleanup_threshold: None,
            reserved: None,
            protect_session_blobs: false,
            storage_service: None,
            local_instances: Vec::new(),
            ignored: Vec::new(),
        }
    }
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The cache could not be opened.
    #[error("cache {}: {source}", root.display())]
    Store {
        /// The cache root.
        root: PathBuf,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// A socket could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No `--bind` was given.
    #[error("no --bind address given")]
    NoBind,
    /// A remote's settings are unusable.
    #[error("remote: {0}")]
    Remote(String),
    /// The gRPC server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// What the services share: the local cache and the remotes.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// The local store (objects in `cas/objects`), without the quota.
    pub(crate) store: DiskStore,
    /// The local store under the quota: what LocalCAS captures into, stages from, and
    /// transfers to and from remotes.
    pub(crate) disk: Arc<dyn BlobStore>,
    /// Every instance name the socket serves.
    pub(crate) namespaces: Arc<Namespaces>,
    /// The local cache's remote, if any.
    pub(crate) storage_service: Option<Arc<LazyRemote>>,
    /// Whether the storage service takes no writes (`--read-only-remote`).
    pub(crate) storage_service_read_only: bool,
    /// The proxy instances made by GetInstanceNameForRemotes.
    pub(crate) remotes: Remotes,
    /// Where StageTree stages.
    pub(crate) staging: PathBuf,
    /// The quota, for GetLocalDiskUsage.
    pub(crate) quota: Arc<Quota>,
    /// The quota BuildStream asked for, for GetLocalDiskUsage (0: none).
    pub(crate) quota_high: u64,
}

/// Runs the daemon until `shutdown` completes; then returns within a quarter second and
/// removes its sockets.
pub async fn run(
    options: DaemonOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), DaemonError> {
    if options.binds.is_empty() {
        return Err(DaemonError::NoBind);
    }
    for ignored in &options.ignored {
        tracing::info!("ignoring {ignored}");
    }
    let mut shutdown = std::pin::pin!(shutdown);
    // Asked to stop while the cache is still being opened (a long first scan): stop at once.
    let daemon = tokio::select! {
        opened = open(&options) => Arc::new(opened?),
        () = &mut shutdown => return Ok(()),
    };
    // The handlers count requests; nothing reads the counts (casd has no /metrics either).
    let metrics = Arc::new(Metrics::new());
    let mut routes = cache_routes(daemon.namespaces.clone(), metrics.clone());
    let (fetch, push) = asset_handlers(daemon.namespaces.clone(), metrics);
    routes
        .add_service(FetchServer::new(FetchProxy::new(daemon.clone(), fetch)))
        .add_service(PushServer::new(PushProxy::new(daemon.clone(), push)))
        .add_service(
            LocalContentAddressableStorageServer::new(LocalCas::new(daemon.clone()))
                .max_decoding_message_size(casket_remote::server::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(casket_remote::server::MAX_MESSAGE_BYTES),
        );
    let routes = routes.routes();

    // Everything is ready: only now may the sockets appear.
    let (stop, stopped) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut sockets = Vec::new();
    for bind in &options.binds {
        let until_stopped = {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let server = tonic::transport::Server::builder().add_routes(routes.clone());
        match bind {
            Bind::Unix(path) => {
                let listener = bind_unix(path, options.socket_mode)?;
                sockets.push(path.clone());
                let incoming = UnixListenerStream::new(listener);
                servers
                    .spawn(async move { server.serve_with_incoming_shutdown(incoming, until_stopped).await });
            }
            Bind::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Bind {
                        what: addr.to_string(),
                        source,
                    })?;
                let incoming = TcpListenerStream::new(listener);
                servers
                    .spawn(async move { server.serve_with_incoming_shutdown(incoming, until_stopped).await });
            }
        }
    }
    tracing::info!(root = %options.root.display(), "casket casd ready");

    let failed = tokio::select! {
        () = &mut shutdown => None,
        done = servers.join_next() => done,
    };
    let _ = stop.send(true);
    // Requests in flight (a StageTree waiting for its second message, a long fetch) get a
    // moment to finish; the daemon does not wait for them longer.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    for socket in sockets {
        let _ = std::fs::remove_file(socket);
    }
    match failed {
        Some(Ok(Err(e))) => Err(e.into()),
        _ => Ok(()),
    }
}

/// Opens the cache, its quota, the storage service and the staging area.
async fn open(options: &DaemonOptions) -> Result<Daemon, DaemonError> {
    let started = SystemTime::now();
    let store_error = |source| DaemonError::Store {
        root: options.root.clone(),
        source: Box::new(source),
    };
    let store = DiskStore::open(
        &options.root,
        DiskOptions {
            fsync: false,
            layout: Layout::Casd,
            // With protected sessions, every object this session uses must show it.
            touched_since: options.protect_session_blobs.then_some(started),
        },
    )
    .map_err(store_error)?;
    let staging = options.root.join("cas/staging");
    crate::stage::prepare_staging_area(&staging).map_err(store_error)?;

    // casd's `--quota-low` is a percentage of `--quota-high` or a size.
    let low_water = match (options.quota_low, options.quota_high) {
        (Some(LowWater::Fraction(f)), _) => f,
        (Some(LowWater::Bytes(b)), Some(high)) => (b as f64 / high.max(1) as f64).min(1.0),
        _ => DEFAULT_LOW_WATER,
    };
    let quota = Quota::new(
        &store,
        QuotaOptions {
            limit: options.quota_high,
            low_water,
            // casd's default: 65% of the way from the low-water mark to the quota.
            cleanup_at: Some(
                options
                    .cleanup_threshold
                    .unwrap_or(low_water + 0.65 * (1.0 - low_water)),
            ),
            session_start: options.protect_session_blobs.then_some(started),
            keep_free: options.reserved,
            // A protected session covers what was just written; without one, anything not
            // used in the last minute may go.
            grace: if options.protect_session_blobs {
                Duration::ZERO
            } else {
                Duration::from_secs(60)
            },
        },
        Arc::new(()) as Arc<dyn EvictionListener>,
    )
    .await
    .map_err(store_error)?;
    let quota = Arc::new(quota);
    let mut local = Namespace::on_disk(&store).with_quota(quota.clone());
    let storage_service = match &options.storage_service {
        Some(spec) => {
            let remote = Arc::new(LazyRemote::new(spec.client_options()?));
            if !spec.read_only {
                // Captures and uploads go to the storage service as well, reads come from it
                // when the local cache lacks a blob: casd's proxy mode.
                let budget: Arc<dyn SpaceBudget> = quota.clone();
                local.blobs = Arc::new(TieredStore::new(
                    Arc::new(store.clone()),
                    remote.clone() as Arc<dyn BlobStore>,
                    Some(budget),
                ));
            }
            local.description = format!("{} in front of {}", local.description, remote.url());
            Some(remote)
        }
        None => None,
    };
    let namespaces = Arc::new(Namespaces::strict(local));
    for instance in &options.local_instances {
        namespaces.insert(instance.clone(), (**namespaces.default_namespace()).clone());
    }
    // BuildStream's quota, as lowered to leave the reserved space free.
    let quota_high = options.quota_high.and(quota.limit()).unwrap_or(0);
    Ok(Daemon {
        store,
        disk: Arc::new(QuotaStore::new(quota.clone())),
        namespaces,
        storage_service_read_only: options.storage_service.as_ref().is_some_and(|s| s.read_only),
        storage_service,
        remotes: Remotes::default(),
        staging,
        quota,
        quota_high,
    })
}

/// Binds a UNIX socket at `path`, replacing a stale one.
fn bind_unix(path: &Path, mode: Option<u32>) -> Result<UnixListener, DaemonError> {
    let bind_error = |source| DaemonError::Bind {
        what: format!("unix:{}", path.display()),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    }
    Ok(listener)
}

/// SIGTERM or SIGINT, whichever comes first. The handlers are installed when this is called
/// (inside the runtime), so a signal that comes while the daemon starts is not lost.
pub fn termination() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let signals =
        signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    async move {
        match signals {
            Ok((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            Err(e) => {
                tracing::error!("cannot handle SIGTERM: {e}");
                std::future::pending().await
            }
        }
    }
}
