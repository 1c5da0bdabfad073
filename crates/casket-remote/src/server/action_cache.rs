//! `ActionCache` over [`casket_cache::action`]: results are served only when everything they
//! reference is present, and stored only when their digests and output paths are valid.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use casket_cache::action::{get_action_result, put_action_result};
use casket_cache::{digest, digest_function};
use tonic::{Request, Response, Status};

use super::Shared;
use super::metrics::{Lookup, Tally};
use crate::status::from_cache;

/// The ActionCache service.
pub(crate) struct ActionCache {
    shared: Arc<Shared>,
}

impl ActionCache {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ActionCache { shared }
    }
}

#[tonic::async_trait]
impl reapi::action_cache_server::ActionCache for ActionCache {
    /// NOT_FOUND unless the result and every blob it references are present; a hit extends
    /// the lifetime of all of them.
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let tally = Tally::of(&request);
        let request = request.into_inner();
        let namespace = self.shared.namespace(&request.instance_name)?;
        let action = digest_function(request.digest_function)
            .and_then(|function| digest(function, request.action_digest.as_ref()))
            .map_err(from_cache)?;
        let found = get_action_result(&namespace, (&action).into())
            .await
            .map_err(from_cache);
        tally.lookup(found.is_ok());
        self.shared.metrics.lookups(
            Lookup::ActionResult,
            u64::from(found.is_ok()),
            u64::from(found.is_err()),
        );
        found.map(Response::new)
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let request = request.into_inner();
        let action = digest_function(request.digest_function)
            .and_then(|function| digest(function, request.action_digest.as_ref()))
            .map_err(from_cache)?;
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("an action result is required"))?;
        put_action_result(
            &*self.shared.namespace(&request.instance_name)?,
            (&action).into(),
            &result,
        )
        .await
        .map_err(from_cache)?;
        Ok(Response::new(result))
    }
}
