//! A real server on a free loopback port, for the protocol tests.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::sync::Arc;

use casket_cache::{Namespace, Namespaces, Quota, QuotaOptions};
use casket_remote::server::{Access, AccessPolicy, Metrics, ServerOptions, bind, serve};
use casket_store::{DiskOptions, DiskStore};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::Channel;

/// A running server, stopped when dropped.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub store: DiskStore,
    pub channel: Channel,
    pub address: std::net::SocketAddr,
    pub metrics: Arc<Metrics>,
    pub namespaces: Arc<Namespaces>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A plain-text server on a fresh store; anyone may write when `allow_push`.
pub async fn start(allow_push: bool) -> Server {
    let access = AccessPolicy::new(if allow_push { Access::Write } else { Access::Read });
    start_with(
        ServerOptions {
            access,
            tls: None,
            ..ServerOptions::default()
        },
        None,
    )
    .await
}

/// A server with `options` on a fresh store, with `quota` if given. For TLS servers the
/// returned channel is unusable: connect with your own TLS settings to `address`.
pub async fn start_with(options: ServerOptions, quota: Option<QuotaOptions>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path().join("store"), DiskOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut namespace = Namespace::on_disk(&store);
    if let Some(quota) = quota {
        let quota = Quota::new(&store, quota, metrics.clone()).await.unwrap();
        namespace = namespace.with_quota(Arc::new(quota));
    }
    start_on(dir, store, Namespaces::new(namespace), options, metrics).await
}

/// A server for `namespaces`, whose default store is `store` in `dir`.
pub async fn start_on(
    dir: tempfile::TempDir,
    store: DiskStore,
    namespaces: Namespaces,
    options: ServerOptions,
    metrics: Arc<Metrics>,
) -> Server {
    let namespaces = Arc::new(namespaces);
    let tls = options.tls.is_some();
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        namespaces.clone(),
        options,
        metrics.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{address}")).unwrap();
    let channel = if tls {
        channel.connect_lazy()
    } else {
        channel.connect().await.unwrap()
    };
    Server {
        dir,
        store,
        channel,
        address,
        metrics,
        namespaces,
        stop: Some(stop),
    }
}

/// A CA, a server certificate for `localhost` and a client certificate it signed (PEM; key
/// pairs as (certificate, key)).
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
}

/// A fresh [`Pki`].
pub fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost"),
        client: leaf("build-bot"),
    }
}
