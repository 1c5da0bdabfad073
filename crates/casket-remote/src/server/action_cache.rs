//! `ActionCache`: action results, served only when everything they reference is present.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use casket_store::{BlobStoreExt, action_key};
use prost::Message;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::metrics::Lookup;
use super::{Namespace, Shared, digest, digest_function};
use crate::status::from_store;

/// The ActionCache service.
pub(crate) struct ActionCache {
    shared: Arc<Shared>,
}

impl ActionCache {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ActionCache { shared }
    }

    /// The stored result for the requested action, if it and everything it references are
    /// present (which the existence check also marks as used).
    async fn complete_result(
        &self,
        request: &reapi::GetActionResultRequest,
    ) -> Result<reapi::ActionResult, Status> {
        let namespace = self.shared.namespace(&request.instance_name);
        let function = digest_function(request.digest_function)?;
        let action = digest(function, request.action_digest.as_ref())?;
        let bytes = namespace
            .action_cache
            .get(&action_key(&action))
            .await
            .map_err(from_store)?
            .ok_or_else(|| Status::not_found(format!("no result for action {action}")))?;
        let result = reapi::ActionResult::decode(bytes.as_ref())
            .map_err(|e| Status::data_loss(format!("stored result for {action} is corrupt: {e}")))?;
        let referenced = Self::referenced_blobs(namespace, function, &result).await?;
        // Asked of the store of record, past any existence cache: a hit whose outputs were
        // removed (by expiry in a shared bucket) must be a miss.
        let missing = namespace
            .blobs
            .find_missing_uncached(&referenced)
            .await
            .map_err(from_store)?;
        if let Some(first) = missing.first() {
            return Err(Status::not_found(format!(
                "result for action {action} references {} missing blobs, such as {first}",
                missing.len()
            )));
        }
        Ok(result)
    }

    /// Every blob `result` references: output files, stdout/stderr, output-directory Trees and
    /// the files inside them. Missing Trees are reported in the list too.
    async fn referenced_blobs(
        namespace: &Namespace,
        function: DigestFunction,
        result: &reapi::ActionResult,
    ) -> Result<Vec<Digest>, Status> {
        let mut blobs = Vec::new();
        for file in &result.output_files {
            blobs.push(digest(function, file.digest.as_ref())?);
        }
        for d in [&result.stdout_digest, &result.stderr_digest]
            .into_iter()
            .flatten()
        {
            blobs.push(digest(function, Some(d))?);
        }
        for dir in &result.output_directories {
            let tree_digest = digest(function, dir.tree_digest.as_ref())?;
            blobs.push(tree_digest);
            let Some(bytes) = namespace
                .blobs
                .get_bytes(&tree_digest)
                .await
                .map_err(from_store)?
            else {
                continue;
            };
            let tree = reapi::Tree::decode(bytes.as_ref())
                .map_err(|e| Status::data_loss(format!("output tree {tree_digest} is not a Tree: {e}")))?;
            for directory in tree.root.iter().chain(&tree.children) {
                for file in &directory.files {
                    blobs.push(digest(function, file.digest.as_ref())?);
                }
            }
        }
        Ok(blobs)
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
        let request = request.into_inner();
        let found = self.complete_result(&request).await;
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
        let function = digest_function(request.digest_function)?;
        let action = digest(function, request.action_digest.as_ref())?;
        let result = request
            .action_result
            .ok_or_else(|| Status::invalid_argument("an action result is required"))?;
        self.shared
            .namespace(&request.instance_name)
            .action_cache
            .put(&action_key(&action), Bytes::from(result.encode_to_vec()))
            .await
            .map_err(from_store)?;
        Ok(Response::new(result))
    }
}
