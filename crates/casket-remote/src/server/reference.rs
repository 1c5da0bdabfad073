//! BuildStream 1.6.8's `ReferenceStorage`: artifact refs over [`casket_store::DiskRefs`].

use casket_model::{Digest, DigestFunction, RefName};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::{Access, caller_access};
use super::metrics::Lookup;
use super::{Shared, digest};
use crate::proto::buildstream::{
    GetReferenceRequest, GetReferenceResponse, StatusRequest, StatusResponse, UpdateReferenceRequest,
    UpdateReferenceResponse, reference_storage_server,
};
use crate::status::{from_store, from_tree};

/// The ReferenceStorage service.
pub(crate) struct ReferenceStorage {
    shared: Arc<Shared>,
}

impl ReferenceStorage {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ReferenceStorage { shared }
    }
}

impl ReferenceStorage {
    /// The tree the requested ref names, if that tree is complete.
    async fn complete_ref(&self, request: &GetReferenceRequest) -> Result<Digest, Status> {
        let namespace = self.shared.namespace(&request.instance_name);
        let name = ref_name(&request.key)?;
        let root = namespace
            .refs
            .get(&name)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Status::not_found(format!("no ref {name}")))?;
        if let Some(problem) = casket_tree::Tree::problem(namespace.blobs.as_ref(), &root)
            .await
            .map_err(from_tree)?
        {
            return Err(Status::not_found(format!("ref {name} is incomplete: {problem}")));
        }
        Ok(root)
    }
}

fn ref_name(key: &str) -> Result<RefName, Status> {
    RefName::new(key).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl reference_storage_server::ReferenceStorage for ReferenceStorage {
    /// NOT_FOUND when the ref is unknown or its tree is incomplete, so that a client pushes it
    /// again rather than trusting a broken artifact. Reading a ref counts as using it.
    async fn get_reference(
        &self,
        request: Request<GetReferenceRequest>,
    ) -> Result<Response<GetReferenceResponse>, Status> {
        let request = request.into_inner();
        let found = self.complete_ref(&request).await;
        self.shared
            .metrics
            .lookups(Lookup::Ref, u64::from(found.is_ok()), u64::from(found.is_err()));
        found.map(|root| {
            Response::new(GetReferenceResponse {
                digest: Some(root.to_proto()),
            })
        })
    }

    async fn update_reference(
        &self,
        request: Request<UpdateReferenceRequest>,
    ) -> Result<Response<UpdateReferenceResponse>, Status> {
        let request = request.into_inner();
        let refs = &self.shared.namespace(&request.instance_name).refs;
        // BuildStream 1 speaks SHA-256 only.
        let root = digest(DigestFunction::Sha256, request.digest.as_ref())?;
        let names = request
            .keys
            .iter()
            .map(|k| ref_name(k))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &names {
            refs.set(name, &root).await.map_err(from_store)?;
        }
        Ok(Response::new(UpdateReferenceResponse {}))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            allow_updates: caller_access(&request) == Access::Write,
        }))
    }
}
