//! Reaching a server: URLs, TLS, client certificates and bearer tokens.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::server::MAX_BATCH_BYTES;

/// TLS settings of a client.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// CA certificates (PEM) to verify the server with; the system roots when absent.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and key (PEM), for servers that verify clients (mTLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach and use a server.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// `grpc://HOST:PORT` or `http://...` (plain), `grpcs://` or `https://` (TLS).
    pub url: String,
    /// The REAPI instance name.
    pub instance: String,
    /// A bearer token sent with every request.
    pub token: Option<String>,
    /// TLS settings (used with `grpcs://` and `https://`).
    pub tls: ClientTls,
    /// The most requests in flight at once; the client finds how many the server takes well
    /// up to this.
    pub concurrency: usize,
    /// Our own cap on a batch, below the server's.
    pub max_batch_bytes: u64,
    /// Retries of a failed request before giving up.
    pub retries: u32,
    /// Use zstd for ByteStream transfers when the server offers it.
    pub compression: bool,
    /// The ceiling of the first wait before a retry (it doubles with each retry).
    pub retry_delay: Duration,
    /// A deadline for each request, when set.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keepalive pings at this interval, when set.
    pub keepalive: Option<Duration>,
}

impl RemoteOptions {
    /// Defaults for `url`: 16 requests in flight, 5 retries, no compression.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteOptions {
            url: url.into(),
            instance: String::new(),
            token: None,
            tls: ClientTls::default(),
            concurrency: 16,
            max_batch_bytes: MAX_BATCH_BYTES,
            retries: 5,
            compression: false,
            retry_delay: Duration::from_millis(50),
            request_timeout: None,
            keepalive: None,
        }
    }
}

/// Why a server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not one this client understands.
    #[error("invalid remote URL {0:?}: expected grpc://, grpcs://, http:// or https:// HOST:PORT")]
    Url(String),
    /// The token cannot be sent as a header.
    #[error("the token contains characters that cannot be sent in a header")]
    Token,
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// GetCapabilities failed.
    #[error("the server refused GetCapabilities: {}", super::errors::describe(.0))]
    Capabilities(Status),
}

/// Adds the bearer token, if any, to every request.
#[derive(Clone, Debug)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every client of a [`super::RemoteCas`] shares, with its credentials.
pub type Transport = InterceptedService<Channel, Credentials>;

/// Connects to `options.url`.
pub async fn transport(options: &RemoteOptions) -> Result<Transport, ConnectError> {
    let channel = endpoint(options)?
        .connect()
        .await
        .map_err(|source| ConnectError::Connect {
            url: options.url.clone(),
            source,
        })?;
    with_credentials(channel, options)
}

/// A channel to `options.url` that connects on first use (and again after a failure).
pub fn lazy_transport(options: &RemoteOptions) -> Result<Transport, ConnectError> {
    with_credentials(endpoint(options)?.connect_lazy(), options)
}

/// The endpoint for `options.url`, with TLS and the connection settings.
fn endpoint(options: &RemoteOptions) -> Result<Endpoint, ConnectError> {
    let url = &options.url;
    let (tls, rest) = if let Some(rest) = url
        .strip_prefix("grpcs://")
        .or_else(|| url.strip_prefix("https://"))
    {
        (true, rest)
    } else if let Some(rest) = url
        .strip_prefix("grpc://")
        .or_else(|| url.strip_prefix("http://"))
    {
        (false, rest)
    } else {
        return Err(ConnectError::Url(url.clone()));
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(ConnectError::Url(url.clone()));
    }
    let scheme = if tls { "https" } else { "http" };
    // Servers' logs and status pages name the tool by its user agent.
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
        .and_then(|endpoint| endpoint.user_agent(concat!("casket/", env!("CARGO_PKG_VERSION"))))
        .map_err(|_| ConnectError::Url(url.clone()))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20));
    if let Some(timeout) = options.request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    if let Some(interval) = options.keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_while_idle(true);
    }
    if tls {
        let mut config = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &options.tls.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((certificate, key)) = &options.tls.identity {
            config = config.identity(Identity::from_pem(certificate, key));
        }
        endpoint = endpoint.tls_config(config).map_err(ConnectError::Tls)?;
    }
    Ok(endpoint)
}

/// `channel` with the bearer token of `options`, if any, on every request.
fn with_credentials(channel: Channel, options: &RemoteOptions) -> Result<Transport, ConnectError> {
    let authorization = options
        .token
        .as_ref()
        .map(|token| format!("Bearer {token}").parse().map_err(|_| ConnectError::Token))
        .transpose()?;
    Ok(InterceptedService::new(channel, Credentials { authorization }))
}
