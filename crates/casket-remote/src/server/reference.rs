//! BuildStream 1.6.8's `ReferenceStorage` over [`casket_cache::refs`].

use std::sync::Arc;

use casket_cache::refs::{get_ref, ref_name, set_refs};
use casket_model::DigestFunction;
use tonic::{Request, Response, Status};

use super::Shared;
use super::access::{Access, caller_access};
use super::metrics::{Lookup, Tally};
use crate::proto::buildstream::{
    GetReferenceRequest, GetReferenceResponse, StatusRequest, StatusResponse, UpdateReferenceRequest,
    UpdateReferenceResponse, reference_storage_server,
};
use crate::status::from_cache;

/// The ReferenceStorage service.
pub(crate) struct ReferenceStorage {
    shared: Arc<Shared>,
}

impl ReferenceStorage {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ReferenceStorage { shared }
    }
}

#[tonic::async_trait]
impl reference_storage_server::ReferenceStorage for ReferenceStorage {
    /// NOT_FOUND when the ref is unknown or its tree is incomplete. Reading a ref counts as
    /// using it.
    async fn get_reference(
        &self,
        request: Request<GetReferenceRequest>,
    ) -> Result<Response<GetReferenceResponse>, Status> {
        let tally = Tally::of(&request);
        let request = request.into_inner();
        let namespace = self.shared.namespace(&request.instance_name)?;
        let found = match ref_name(&request.key) {
            Ok(name) => get_ref(&namespace, &name).await,
            Err(e) => Err(e),
        };
        tally.lookup(found.is_ok());
        self.shared
            .metrics
            .lookups(Lookup::Ref, u64::from(found.is_ok()), u64::from(found.is_err()));
        let root = found.map_err(from_cache)?;
        Ok(Response::new(GetReferenceResponse {
            digest: Some(root.to_proto()),
        }))
    }

    async fn update_reference(
        &self,
        request: Request<UpdateReferenceRequest>,
    ) -> Result<Response<UpdateReferenceResponse>, Status> {
        let request = request.into_inner();
        // BuildStream 1 speaks SHA-256 only.
        let root =
            casket_cache::digest(DigestFunction::Sha256, request.digest.as_ref()).map_err(from_cache)?;
        let names = request
            .keys
            .iter()
            .map(|k| ref_name(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(from_cache)?;
        set_refs(&*self.shared.namespace(&request.instance_name)?, &names, &root)
            .await
            .map_err(from_cache)?;
        Ok(Response::new(UpdateReferenceResponse {}))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            allow_updates: caller_access(&request) == Access::Write,
        }))
    }
}
