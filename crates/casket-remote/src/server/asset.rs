//! Remote Asset API v1 (`Fetch` and `Push` of blobs and directories by URI and qualifiers)
//! over [`casket_cache::asset`]. BuildStream stores artifacts (blobs) and sources
//! (directories) this way; its start-up probes (empty requests) get INVALID_ARGUMENT.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::google::rpc;
use casket_cache::asset::{AssetRecord, fetch_asset, push_asset};
use casket_cache::digest_function;
use casket_model::Digest;
use tonic::{Request, Response, Status};

use super::Shared;
use super::metrics::{Lookup, Tally};
use crate::status::from_cache;

/// The Fetch service.
pub struct Fetch {
    shared: Arc<Shared>,
}

/// The Push service.
pub struct Push {
    shared: Arc<Shared>,
}

impl Fetch {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Fetch { shared }
    }

    /// The first complete record of kind `R` for `uris` and `qualifiers`, counted as a lookup.
    async fn find<R: AssetRecord>(
        &self,
        tally: &Tally,
        instance: &str,
        function: i32,
        uris: &[String],
        qualifiers: &[asset::Qualifier],
    ) -> Result<(String, R, Digest), Status> {
        digest_function(function).map_err(from_cache)?;
        let found = fetch_asset::<R>(&*self.shared.namespace(instance)?, uris, qualifiers).await;
        let metrics = &self.shared.metrics;
        metrics.lookups(Lookup::Asset, u64::from(found.is_ok()), u64::from(found.is_err()));
        tally.lookup(found.is_ok());
        found.map_err(from_cache)
    }
}

impl Push {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Push { shared }
    }
}

fn ok_status() -> Option<rpc::Status> {
    Some(rpc::Status::default())
}

#[tonic::async_trait]
impl asset::fetch_server::Fetch for Fetch {
    async fn fetch_blob(
        &self,
        request: Request<asset::FetchBlobRequest>,
    ) -> Result<Response<asset::FetchBlobResponse>, Status> {
        let tally = Tally::of(&request);
        let request = request.into_inner();
        let (uri, record, blob) = self
            .find::<asset::PushBlobRequest>(
                &tally,
                &request.instance_name,
                request.digest_function,
                &request.uris,
                &request.qualifiers,
            )
            .await?;
        Ok(Response::new(asset::FetchBlobResponse {
            status: ok_status(),
            uri,
            qualifiers: request.qualifiers,
            expires_at: record.expire_at,
            blob_digest: Some(blob.to_proto()),
            digest_function: request.digest_function,
        }))
    }

    async fn fetch_directory(
        &self,
        request: Request<asset::FetchDirectoryRequest>,
    ) -> Result<Response<asset::FetchDirectoryResponse>, Status> {
        let tally = Tally::of(&request);
        let request = request.into_inner();
        let (uri, record, root) = self
            .find::<asset::PushDirectoryRequest>(
                &tally,
                &request.instance_name,
                request.digest_function,
                &request.uris,
                &request.qualifiers,
            )
            .await?;
        Ok(Response::new(asset::FetchDirectoryResponse {
            status: ok_status(),
            uri,
            qualifiers: request.qualifiers,
            expires_at: record.expire_at,
            root_directory_digest: Some(root.to_proto()),
            digest_function: request.digest_function,
        }))
    }
}

#[tonic::async_trait]
impl asset::push_server::Push for Push {
    async fn push_blob(
        &self,
        request: Request<asset::PushBlobRequest>,
    ) -> Result<Response<asset::PushBlobResponse>, Status> {
        let request = request.into_inner();
        let namespace = self.shared.namespace(&request.instance_name)?;
        push_asset(&namespace, &request).await.map_err(from_cache)?;
        Ok(Response::new(asset::PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<asset::PushDirectoryRequest>,
    ) -> Result<Response<asset::PushDirectoryResponse>, Status> {
        let request = request.into_inner();
        let namespace = self.shared.namespace(&request.instance_name)?;
        push_asset(&namespace, &request).await.map_err(from_cache)?;
        Ok(Response::new(asset::PushDirectoryResponse {}))
    }
}
