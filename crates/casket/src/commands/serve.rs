//! `serve`: the gRPC cache server, configured by flags, environment and a TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use casket_cache::config::{OpenOptions, StoreConfig, open_namespace};
use casket_cache::{Namespaces, QuotaOptions};
use casket_remote::http_cache::{HttpCacheServer, HttpLimits};
use casket_remote::server::{
    Access, AccessPolicy, MAX_BATCH_BYTES, Metrics, ServerOptions, TlsOptions, UPLOAD_LIFETIME, bind,
    serve as run_server, serve_monitoring,
};
use clap::Args;
use tokio::sync::watch;

use crate::Global;
use crate::config::{ServeConfig, TlsConfig};
use crate::units::{format_size, parse_duration, parse_size};

/// Arguments of `casket serve`. Each overrides the configuration file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML configuration file (see ARCHITECTURE.md or `casket serve --help`).
    #[arg(long, env = "CASKET_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (printed on stderr) [default: 127.0.0.1:50051].
    #[arg(long, env = "CASKET_LISTEN")]
    listen: Option<SocketAddr>,
    /// Let every client write (the same as --anonymous write).
    #[arg(long)]
    allow_push: bool,
    /// What clients without credentials may do: none, read or write [default: read].
    #[arg(long, env = "CASKET_ANONYMOUS", value_name = "ACCESS")]
    anonymous: Option<Access>,
    /// Bearer tokens, one per line: `TOKEN` or `write TOKEN` may write, `read TOKEN` may read.
    #[arg(long, env = "CASKET_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Server certificate chain (PEM); enables TLS.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) to verify client certificates against; a verified client may write (mTLS).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Refuse clients without a verified client certificate.
    #[arg(long, requires = "tls_client_ca")]
    require_client_cert: bool,
    /// Most disk space the store may use; least recently used blobs are evicted beyond it.
    #[arg(long, env = "CASKET_QUOTA", value_parser = parse_size)]
    quota: Option<u64>,
    /// Never evict what was used this recently [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Serve Prometheus `/metrics` and a `/status` page over HTTP on this address.
    #[arg(long, env = "CASKET_MONITORING_LISTEN", value_name = "ADDR")]
    monitoring_listen: Option<SocketAddr>,
    /// Serve the HTTP cache protocol on this address too: `/cas/HASH` and `/ac/HASH` (Bazel's
    /// --remote_cache=http://…), and `/kv/KEY` for ccache, Gradle and other tools' own keys.
    #[arg(long, env = "CASKET_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Do not offer the Remote Asset API (BuildStream 1 then falls back to ReferenceStorage).
    #[arg(long)]
    no_remote_asset: bool,
    /// The most blob data in one batch request, advertised to clients [default: 8M].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_batch_size: Option<u64>,
    /// Answer a method with UNIMPLEMENTED, e.g. ContentAddressableStorage/GetTree (repeatable).
    #[arg(long, value_name = "SERVICE/METHOD")]
    disable_method: Vec<String>,
    /// Drop an interrupted upload (its partial write and the room it holds) after this long
    /// without being resumed [default: 10m].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    upload_lifetime: Option<Duration>,
}

/// Everything `serve` needs, merged from flags, environment, file and defaults.
struct Settings {
    listen: SocketAddr,
    store: StoreConfig,
    options: ServerOptions,
    quota: QuotaOptions,
    monitoring_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    instances: Vec<(String, StoreConfig)>,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl Settings {
    fn merge(global: &Global, args: ServeArgs) -> anyhow::Result<Settings> {
        let config = match &args.config {
            Some(path) => ServeConfig::load(path)?,
            None => ServeConfig::default(),
        };
        let anonymous = if args.allow_push {
            Access::Write
        } else {
            args.anonymous.or(config.anonymous).unwrap_or(Access::Read)
        };
        let mut access = AccessPolicy::new(anonymous);
        if let Some(file) = args.token_file.as_ref().or(config.token_file.as_ref()) {
            access.add_token_file(file)?;
        }
        // Flags, else the file's [tls] table.
        let from_flags = match (args.tls_cert, args.tls_key) {
            (Some(certificate), Some(key)) => Some(TlsConfig {
                certificate,
                key,
                client_ca: args.tls_client_ca,
                require_client_certificate: args.require_client_cert,
            }),
            _ => None,
        };
        let tls = match from_flags.or(config.tls) {
            Some(tls) => Some(TlsOptions {
                certificate: read(&tls.certificate, "TLS certificate")?,
                key: read(&tls.key, "TLS key")?,
                client_ca: tls.client_ca.map(|ca| read(&ca, "client CA")).transpose()?,
                require_client_certificate: tls.require_client_certificate,
            }),
            None => None,
        };
        let store = match (global.store.clone(), config.store) {
            (Some(path), _) => StoreConfig::for_server(path),
            (None, Some(store)) => store,
            (None, None) => StoreConfig::for_server(super::default_store()?),
        };
        Ok(Settings {
            listen: args
                .listen
                .or(config.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051))),
            store,
            options: ServerOptions {
                access,
                tls,
                remote_asset: !args.no_remote_asset && config.remote_asset.unwrap_or(true),
                max_batch_bytes: args
                    .max_batch_size
                    .or(config.max_batch_size)
                    .unwrap_or(MAX_BATCH_BYTES),
                disabled_methods: [args.disable_method, config.disabled_methods].concat(),
                upload_lifetime: args
                    .upload_lifetime
                    .or(config.upload_lifetime)
                    .unwrap_or(UPLOAD_LIFETIME),
            },
            quota: QuotaOptions {
                limit: args.quota.or(config.quota),
                grace: args
                    .grace
                    .or(config.grace)
                    .unwrap_or(QuotaOptions::default().grace),
                ..QuotaOptions::default()
            },
            monitoring_listen: args.monitoring_listen.or(config.monitoring_listen),
            http_listen: args.http_listen.or(config.http_listen),
            instances: config
                .instances
                .into_iter()
                .map(|(name, instance)| (name, instance.store.with_default_quota(instance.quota)))
                .collect(),
        })
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::merge(global, args)?;
    let metrics = Arc::new(Metrics::new());
    let options = OpenOptions {
        quota: settings.quota,
        fsync: global.fsync,
        listener: metrics.clone(),
    };
    let default = open_namespace(&settings.store, &options).await?;
    let serving = default.description.clone();
    let namespaces = Namespaces::new(default);
    for (instance, store) in &settings.instances {
        let options = OpenOptions {
            quota: QuotaOptions {
                limit: None,
                ..settings.quota
            },
            ..options.clone()
        };
        let namespace = open_namespace(store, &options)
            .await
            .with_context(|| format!("instance {instance:?}"))?;
        namespaces.insert(instance.clone(), namespace);
    }
    let namespaces = Arc::new(namespaces);

    let listener = bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let address = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut description = vec![match settings.options.access.anonymous {
        Access::Write => "read-write".to_owned(),
        Access::Read => "read-only without credentials".to_owned(),
        Access::None => "credentials required".to_owned(),
    }];
    if settings.options.tls.is_some() {
        description.push("TLS".to_owned());
    }
    if let Some(limit) = settings.quota.limit {
        description.push(format!("quota {}", format_size(limit)));
    }
    let mut http_address = None;
    let http = match settings.http_listen {
        Some(addr) => {
            let listener = bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            http_address = Some(listener.local_addr()?);
            description.push(format!("HTTP cache on {}", listener.local_addr()?));
            let server = HttpCacheServer::new(
                namespaces.clone(),
                settings.options.access.clone(),
                settings.options.tls.as_ref(),
                metrics.clone(),
                HttpLimits::default(),
            )?;
            Some(tokio::spawn(server.serve(listener, until_stopped())))
        }
        None => None,
    };
    let monitoring = match settings.monitoring_listen {
        Some(addr) => {
            let listener = bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let monitoring_address = listener.local_addr()?;
            description.push(format!("monitoring on {monitoring_address}"));
            let about = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "listen": address.to_string(),
                "tls": settings.options.tls.is_some(),
                "anonymous": format!("{:?}", settings.options.access.anonymous).to_lowercase(),
                "remote_asset": settings.options.remote_asset,
                "http_listen": http_address.map(|a| a.to_string()),
                "grace_seconds": settings.quota.grace.as_secs(),
            });
            Some(tokio::spawn(serve_monitoring(
                listener,
                metrics.clone(),
                namespaces.clone(),
                about,
                until_stopped(),
            )))
        }
        None => None,
    };
    eprintln!(
        "casket: serving {serving} on {address} ({})",
        description.join(", ")
    );
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let served = run_server(namespaces, settings.options, metrics, listener, until_stopped()).await;
    signals.abort();
    if let Some(monitoring) = monitoring {
        monitoring.abort();
    }
    if let Some(http) = http {
        // It stops on the same signal; in-flight requests get a few seconds.
        http.await.context("HTTP cache server failed")?;
    }
    served.context("server failed")?;
    eprintln!("casket: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM (on SIGINT alone if SIGTERM cannot be watched).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
