//! BuildStream 1.6.8's `ReferenceStorage`: artifact refs over [`casket_store::DiskRefs`].

use casket_model::{DigestFunction, RefName};
use tonic::{Request, Response, Status};

use super::{ServerState, digest};
use crate::proto::buildstream::{
    GetReferenceRequest, GetReferenceResponse, StatusRequest, StatusResponse, UpdateReferenceRequest,
    UpdateReferenceResponse, reference_storage_server,
};
use crate::status::{from_store, from_tree};

/// The ReferenceStorage service.
pub(crate) struct ReferenceStorage {
    state: ServerState,
}

impl ReferenceStorage {
    pub(crate) fn new(state: ServerState) -> Self {
        ReferenceStorage { state }
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
        let name = ref_name(&request.into_inner().key)?;
        let root = self
            .state
            .refs
            .get(&name)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Status::not_found(format!("no ref {name}")))?;
        if let Some(problem) = casket_tree::Tree::problem(self.state.blobs.as_ref(), &root)
            .await
            .map_err(from_tree)?
        {
            return Err(Status::not_found(format!("ref {name} is incomplete: {problem}")));
        }
        Ok(Response::new(GetReferenceResponse {
            digest: Some(root.to_proto()),
        }))
    }

    async fn update_reference(
        &self,
        request: Request<UpdateReferenceRequest>,
    ) -> Result<Response<UpdateReferenceResponse>, Status> {
        self.state.require_push()?;
        let request = request.into_inner();
        // BuildStream 1 speaks SHA-256 only.
        let root = digest(DigestFunction::Sha256, request.digest.as_ref())?;
        let names = request
            .keys
            .iter()
            .map(|k| ref_name(k))
            .collect::<Result<Vec<_>, _>>()?;
        for name in &names {
            self.state.refs.set(name, &root).await.map_err(from_store)?;
        }
        Ok(Response::new(UpdateReferenceResponse {}))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            allow_updates: self.state.allow_push,
        }))
    }
}
