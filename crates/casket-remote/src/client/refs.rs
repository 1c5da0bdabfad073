//! Named trees on a server, the way BuildStream names its artifacts: through the Remote Asset
//! API (`urn:fdc:buildstream.build:2020:v1:NAME`, what BuildStream 1.6.8 uses when the server
//! offers it) or else through BuildStream's ReferenceStorage.

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use casket_model::{Digest, DigestFunction, RefName};
use casket_store::StoreError;
use tonic::{Code, Status};

use super::RemoteCas;
use super::errors::remote_error;
use crate::proto::buildstream::{GetReferenceRequest, UpdateReferenceRequest, reference_storage_client};

/// BuildStream's URI for a ref in the Remote Asset API.
fn ref_uri(name: &RefName) -> String {
    format!("urn:fdc:buildstream.build:2020:v1:{name}")
}

/// How a server keeps refs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefService {
    /// The Remote Asset API (directories by URI).
    RemoteAsset,
    /// BuildStream's `buildstream.v2.ReferenceStorage`.
    ReferenceStorage,
}

impl RemoteCas {
    /// Which ref service the server offers: Remote Asset if it answers an empty
    /// FetchDirectory with anything but UNIMPLEMENTED (BuildStream's own probe).
    pub async fn ref_service(&self) -> RefService {
        let instance = self.instance.clone();
        let probe = self
            .call("FetchDirectory", |t| {
                let request = asset::FetchDirectoryRequest {
                    instance_name: instance.clone(),
                    ..Default::default()
                };
                async move {
                    asset::fetch_client::FetchClient::new(t)
                        .fetch_directory(request)
                        .await
                }
            })
            .await;
        match probe {
            Err(status) if status.code() == Code::Unimplemented => RefService::ReferenceStorage,
            _ => RefService::RemoteAsset,
        }
    }

    /// The tree `name` points at on the server, if it has a complete one.
    pub async fn get_ref(&self, name: &RefName) -> Result<Option<Digest>, StoreError> {
        let (operation, answer) = match self.ref_service().await {
            RefService::RemoteAsset => {
                let request = asset::FetchDirectoryRequest {
                    instance_name: self.instance.clone(),
                    uris: vec![ref_uri(name)],
                    ..Default::default()
                };
                let answer = self
                    .call("FetchDirectory", |t| {
                        let request = request.clone();
                        async move {
                            asset::fetch_client::FetchClient::new(t)
                                .fetch_directory(request)
                                .await
                        }
                    })
                    .await;
                (
                    "FetchDirectory",
                    answer.map(|r| r.into_inner().root_directory_digest),
                )
            }
            RefService::ReferenceStorage => {
                let request = GetReferenceRequest {
                    instance_name: self.instance.clone(),
                    key: name.to_string(),
                };
                let answer = self
                    .call("GetReference", |t| {
                        let request = request.clone();
                        async move {
                            reference_storage_client::ReferenceStorageClient::new(t)
                                .get_reference(request)
                                .await
                        }
                    })
                    .await;
                ("GetReference", answer.map(|r| r.into_inner().digest))
            }
        };
        let digest = match answer {
            Ok(Some(digest)) => Digest::from_proto(DigestFunction::Sha256, &digest)
                .map(Some)
                .map_err(|e| Status::internal(format!("the server named an invalid tree: {e}"))),
            Ok(None) => Err(Status::internal("the server answered without a digest")),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        };
        digest.map_err(|status| remote_error(operation, &status))
    }

    /// Points `name` at `root` on the server (whose tree must already be there).
    pub async fn set_ref(&self, name: &RefName, root: &Digest) -> Result<(), StoreError> {
        match self.ref_service().await {
            RefService::RemoteAsset => {
                let request = asset::PushDirectoryRequest {
                    instance_name: self.instance.clone(),
                    uris: vec![ref_uri(name)],
                    root_directory_digest: Some(root.to_proto()),
                    digest_function: root.function().to_proto() as i32,
                    ..Default::default()
                };
                self.call("PushDirectory", |t| {
                    let request = request.clone();
                    async move {
                        asset::push_client::PushClient::new(t)
                            .push_directory(request)
                            .await
                    }
                })
                .await
                .map_err(|status| remote_error("PushDirectory", &status))?;
            }
            RefService::ReferenceStorage => {
                let request = UpdateReferenceRequest {
                    instance_name: self.instance.clone(),
                    keys: vec![name.to_string()],
                    digest: Some(root.to_proto()),
                };
                self.call("UpdateReference", |t| {
                    let request = request.clone();
                    async move {
                        reference_storage_client::ReferenceStorageClient::new(t)
                            .update_reference(request)
                            .await
                    }
                })
                .await
                .map_err(|status| remote_error("UpdateReference", &status))?;
            }
        }
        Ok(())
    }
}
