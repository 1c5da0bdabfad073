//! `Capabilities`: what this server supports and enforces.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::semver::SemVer;
use casket_model::DigestFunction;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::Shared;
use super::access::{Access, caller_access};

/// The Capabilities service.
pub(crate) struct Capabilities {
    shared: Arc<Shared>,
}

impl Capabilities {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Capabilities { shared }
    }
}

fn version(minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major: 2,
        minor,
        patch: 0,
        prerelease: String::new(),
    })
}

#[tonic::async_trait]
impl reapi::capabilities_server::Capabilities for Capabilities {
    async fn get_capabilities(
        &self,
        request: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        let namespace = self.shared.namespace(&request.get_ref().instance_name)?;
        // 0: no limit.
        let max_blob = namespace.max_blob_size().unwrap_or(0);
        let cache = reapi::CacheCapabilities {
            digest_functions: DigestFunction::ALL.iter().map(|f| f.to_proto() as i32).collect(),
            // Per caller: a read-only caller is told it may not update.
            action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                update_enabled: caller_access(&request) == Access::Write,
            }),
            max_batch_total_size_bytes: self.shared.max_batch_bytes as i64,
            // ByteStream reads and writes in zstd; batches stay uncompressed.
            supported_compressors: vec![reapi::compressor::Value::Zstd as i32],
            max_cas_blob_size_bytes: i64::try_from(max_blob).unwrap_or(i64::MAX),
            symlink_absolute_path_strategy: reapi::symlink_absolute_path_strategy::Value::Allowed as i32,
            ..Default::default()
        };
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(cache),
            execution_capabilities: None,
            // Bazel 4 speaks 2.0; buildbox-casd wants at least 2.1.
            deprecated_api_version: version(0),
            low_api_version: version(0),
            high_api_version: version(3),
        }))
    }
}
