//! Proxy instances: GetInstanceNameForRemotes names a remote (its CAS and Remote Asset
//! services, with TLS, a token and connection settings) by a stable 64-hex instance name;
//! requests carrying that name then go to the remote through casket's client. Remote Asset
//! requests on the socket are forwarded here (instance name rewritten to the remote's);
//! any other instance name is served by the local cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::google::protobuf::Duration as ProtoDuration;
use casket_cache::Namespace;
use casket_remote::client::{ClientTls, RemoteCas, Transport};
use casket_remote::server::{AssetFetch, AssetPush};
use prost::Message;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

use crate::daemon::{Daemon, RemoteSpec, remote_options};
use crate::proto::{GetInstanceNameForRemotesRequest, Remote};

/// One proxy instance.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// The remote CAS, when the instance has one.
    pub(crate) cas: Option<RemoteCas>,
    /// The remote's Remote Asset service and its instance name.
    assets: Option<(Transport, String)>,
    /// Never write to the remote.
    pub(crate) read_only: bool,
}

/// The proxy instances made so far. Names are stable: the same remotes give the same name in
/// every run, as with casd.
#[derive(Debug, Default)]
pub(crate) struct Remotes {
    by_name: RwLock<HashMap<String, Arc<Proxy>>>,
    /// One registration at a time, so a remote is connected to once.
    registering: tokio::sync::Mutex<()>,
}

impl Remotes {
    /// The proxy instance named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Proxy>> {
        self.by_name
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The proxy instance for the remotes `request` names, connected now (an unreachable
    /// remote is UNAVAILABLE, as with casd), and its name.
    pub(crate) async fn register(
        &self,
        daemon: &Daemon,
        request: &GetInstanceNameForRemotesRequest,
    ) -> Result<String, Status> {
        if request.execution.is_some() || request.action_cache.is_some() {
            return Err(Status::invalid_argument(
                "casket casd does not proxy remote execution or a remote ActionCache",
            ));
        }
        if request.content_addressable_storage.is_none() && request.remote_asset.is_none() {
            return Err(Status::invalid_argument("no remote given"));
        }
        let name = hex::encode(Sha256::digest(request.encode_to_vec()));
        let _one_at_a_time = self.registering.lock().await;
        if self.get(&name).is_some() {
            return Ok(name);
        }
        let cas = match &request.content_addressable_storage {
            Some(remote) => Some(
                RemoteCas::connect(client_options(remote)?)
                    .await
                    .map_err(|e| Status::unavailable(format!("{}: {e}", remote.url)))?,
            ),
            None => None,
        };
        let assets = match (&request.remote_asset, &cas) {
            (Some(remote), Some(cas))
                if same_server(remote, request.content_addressable_storage.as_ref()) =>
            {
                Some((cas.transport(), remote.instance_name.clone()))
            }
            // Connected on first use, as casd does: BuildStream checks the service itself.
            (Some(remote), _) => {
                let transport = casket_remote::client::lazy_transport(&client_options(remote)?)
                    .map_err(|e| Status::invalid_argument(format!("{}: {e}", remote.url)))?;
                Some((transport, remote.instance_name.clone()))
            }
            (None, _) => None,
        };
        let read_only = [&request.content_addressable_storage, &request.remote_asset]
            .into_iter()
            .flatten()
            .any(|r| r.read_only);
        let local = daemon.namespaces.default_namespace();
        let namespace = Namespace {
            blobs: match &cas {
                Some(cas) => Arc::new(cas.clone()),
                None => local.blobs.clone(),
            },
            quota: None,
            description: [&request.content_addressable_storage, &request.remote_asset]
                .into_iter()
                .flatten()
                .map(|r| r.url.clone())
                .collect::<Vec<_>>()
                .join(", "),
            ..(**local).clone()
        };
        tracing::info!(instance = %name, remote = %namespace.description, "proxy instance");
        daemon.namespaces.insert(name.clone(), namespace);
        let proxy = Arc::new(Proxy {
            cas,
            assets,
            read_only,
        });
        self.by_name
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone(), proxy);
        Ok(name)
    }
}

/// Whether two remotes are the same server with the same credentials.
fn same_server(a: &Remote, b: Option<&Remote>) -> bool {
    b.is_some_and(|b| {
        a.url == b.url
            && a.server_cert == b.server_cert
            && a.client_key == b.client_key
            && a.client_cert == b.client_cert
            && a.access_token_path == b.access_token_path
    })
}

/// Client options from a LocalCAS `Remote` (certificates as PEM bytes, a token file).
fn client_options(remote: &Remote) -> Result<casket_remote::client::RemoteOptions, Status> {
    let pem = |bytes: &Vec<u8>| (!bytes.is_empty()).then(|| bytes.clone());
    let identity = match (pem(&remote.client_cert), pem(&remote.client_key)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(Status::invalid_argument(
                "a client key needs a client certificate",
            ));
        }
    };
    let token = match remote.access_token_path.as_str() {
        "" => None,
        path => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Status::invalid_argument(format!("access token {path}: {e}")))?
                .trim()
                .to_owned(),
        ),
    };
    let settings = RemoteSpec {
        retry_limit: u32::try_from(remote.retry_limit).ok().filter(|n| *n > 0),
        retry_delay: duration(remote.retry_delay.as_ref()),
        request_timeout: duration(remote.request_timeout.as_ref()),
        keepalive: duration(remote.keepalive_time.as_ref()),
        ..RemoteSpec::default()
    };
    Ok(remote_options(
        &remote.url,
        &remote.instance_name,
        ClientTls {
            ca: pem(&remote.server_cert),
            identity,
        },
        token,
        &settings,
    ))
}

/// A positive protobuf duration.
fn duration(d: Option<&ProtoDuration>) -> Option<Duration> {
    let d = d?;
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(seconds, nanos)).filter(|d| !d.is_zero())
}

/// Remote Asset Fetch on the socket: proxy instances forward, the rest is the local cache's.
pub(crate) struct FetchProxy {
    daemon: Arc<Daemon>,
    local: AssetFetch,
}

/// Remote Asset Push on the socket: proxy instances forward, the rest is the local cache's.
pub(crate) struct PushProxy {
    daemon: Arc<Daemon>,
    local: AssetPush,
}

impl FetchProxy {
    pub(crate) fn new(daemon: Arc<Daemon>, local: AssetFetch) -> Self {
        FetchProxy { daemon, local }
    }
}

impl PushProxy {
    pub(crate) fn new(daemon: Arc<Daemon>, local: AssetPush) -> Self {
        PushProxy { daemon, local }
    }
}

/// The remote Remote Asset service of proxy instance `instance`, with the remote's instance
/// name, if `instance` is a proxy with one.
fn asset_remote(daemon: &Daemon, instance: &str, write: bool) -> Result<Option<(Transport, String)>, Status> {
    let Some(proxy) = daemon.remotes.get(instance) else {
        return Ok(None);
    };
    if write && proxy.read_only {
        return Err(Status::permission_denied("the remote is read-only"));
    }
    Ok(proxy.assets.clone())
}

#[tonic::async_trait]
impl asset::fetch_server::Fetch for FetchProxy {
    async fn fetch_blob(
        &self,
        request: Request<asset::FetchBlobRequest>,
    ) -> Result<Response<asset::FetchBlobResponse>, Status> {
        let mut request = request.into_inner();
        match asset_remote(&self.daemon, &request.instance_name, false)? {
            Some((transport, instance)) => {
                request.instance_name = instance;
                asset::fetch_client::FetchClient::new(transport)
                    .fetch_blob(request)
                    .await
            }
            None => self.local.fetch_blob(Request::new(request)).await,
        }
    }

    async fn fetch_directory(
        &self,
        request: Request<asset::FetchDirectoryRequest>,
    ) -> Result<Response<asset::FetchDirectoryResponse>, Status> {
        let mut request = request.into_inner();
        match asset_remote(&self.daemon, &request.instance_name, false)? {
            Some((transport, instance)) => {
                request.instance_name = instance;
                asset::fetch_client::FetchClient::new(transport)
                    .fetch_directory(request)
                    .await
            }
            None => self.local.fetch_directory(Request::new(request)).await,
        }
    }
}

#[tonic::async_trait]
impl asset::push_server::Push for PushProxy {
    async fn push_blob(
        &self,
        request: Request<asset::PushBlobRequest>,
    ) -> Result<Response<asset::PushBlobResponse>, Status> {
        let mut request = request.into_inner();
        match asset_remote(&self.daemon, &request.instance_name, true)? {
            Some((transport, instance)) => {
                request.instance_name = instance;
                asset::push_client::PushClient::new(transport)
                    .push_blob(request)
                    .await
            }
            None => self.local.push_blob(Request::new(request)).await,
        }
    }

    async fn push_directory(
        &self,
        request: Request<asset::PushDirectoryRequest>,
    ) -> Result<Response<asset::PushDirectoryResponse>, Status> {
        let mut request = request.into_inner();
        match asset_remote(&self.daemon, &request.instance_name, true)? {
            Some((transport, instance)) => {
                request.instance_name = instance;
                asset::push_client::PushClient::new(transport)
                    .push_directory(request)
                    .await
            }
            None => self.local.push_directory(Request::new(request)).await,
        }
    }
}
