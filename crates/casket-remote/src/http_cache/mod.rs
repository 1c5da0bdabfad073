//! The HTTP cache protocol (bazel-remote's paths, Bazel's `--remote_cache=http://…`, ccache's
//! `remote_storage = http://…`, Gradle's HttpBuildCache): one more thin frontend over the cache
//! layer, on its own listener, with the gRPC server's access policy, namespaces and metrics.
//!
//! `path.rs` says what a path names, `auth.rs` who is asking, `handlers.rs` answers (through
//! `casket_cache` and the namespace's store, as the gRPC services do), `body.rs` moves bodies:
//! uploads streamed into verified writes, spooled only when their size or hash is not known up
//! front; ranged and zstd-compressed downloads. This module serves connections: HTTP/1.1, with
//! TLS when configured, a bound on header size and time, and an idle limit on bodies.

mod auth;
mod body;
mod handlers;
mod path;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use casket_cache::Namespaces;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::server::{AccessPolicy, Metrics, TlsOptions};

/// Most bytes of a request's head (request line and headers); a larger one is answered 431.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// How long clients may be slow.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// How long a client may take to send a request's head, or a TLS handshake.
    pub header_timeout: Duration,
    /// How long an upload may go without a byte before it is abandoned (nothing is stored).
    pub body_idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// How long in-flight requests get to finish once the server is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the HTTP cache server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpServeError {
    /// The TLS certificate, key or client CA cannot be used.
    #[error("TLS configuration for HTTP: {0}")]
    Tls(String),
}

/// What every request shares.
pub(crate) struct State {
    namespaces: Arc<Namespaces>,
    access: AccessPolicy,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
}

/// What is known of a request's connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Connection {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// Whether TLS verified a client certificate.
    pub(crate) verified_certificate: bool,
}

/// The HTTP cache server, configured and ready to serve.
pub struct HttpCacheServer {
    app: Router,
    acceptor: Option<TlsAcceptor>,
    limits: HttpLimits,
}

impl HttpCacheServer {
    /// A server over `namespaces`, with `tls` when given; fails if the TLS material cannot be used.
    pub fn new(
        namespaces: Arc<Namespaces>,
        access: AccessPolicy,
        tls: Option<&TlsOptions>,
        metrics: Arc<Metrics>,
        limits: HttpLimits,
    ) -> Result<Self, HttpServeError> {
        let state = State {
            namespaces,
            access,
            metrics,
            limits,
        };
        Ok(HttpCacheServer {
            acceptor: tls.map(tls_acceptor).transpose()?,
            app: Router::new()
                .fallback(handlers::handle)
                .with_state(Arc::new(state)),
            limits,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then gives requests in flight a few
    /// seconds. Failed accepts are logged and retried.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
        serve(self, listener, shutdown).await;
    }
}

async fn serve(
    HttpCacheServer {
        app,
        acceptor,
        limits,
    }: HttpCacheServer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors, or a connection reset before it was accepted: go on.
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                let connection = Connection {
                    peer,
                    verified_certificate: false,
                };
                serve_connection(stream, app, connection, limits, watcher).await;
                return;
            };
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let verified_certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let connection = Connection {
                        peer,
                        verified_certificate,
                    };
                    serve_connection(stream, app, connection, limits, watcher).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    connection: Connection,
    limits: HttpLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(connection);
        app.clone().oneshot(request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(served).await {
        tracing::debug!(peer = %connection.peer, error = %e, "HTTP connection ended");
    }
}

/// The TLS acceptor of `tls`: the server's certificate, and client certificates verified
/// against the client CA where one is given (required if the options say so).
fn tls_acceptor(tls: &TlsOptions) -> Result<TlsAcceptor, HttpServeError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| HttpServeError::Tls(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certificates = CertificateDer::pem_slice_iter(&tls.certificate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key).map_err(|e| bad("the key", &e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(ca) {
                let certificate = certificate.map_err(|e| bad("the client CA", &e))?;
                roots.add(certificate).map_err(|e| bad("the client CA", &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| bad("the client CA", &e))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|e| bad("the certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
