//! Reaching an S3-compatible bucket: endpoint, region and credentials from the configuration,
//! else from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, ...), else from the rest of the AWS chain that
//! `object_store` implements (web identity, ECS and EKS task roles, EC2 instance metadata).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};

use crate::error::Result;

/// Where a bucket is and how to sign for it. Unset fields come from the environment and the
/// AWS credential chain.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// The endpoint of an S3-compatible store (`http://127.0.0.1:3900`); AWS when absent.
    pub endpoint: Option<String>,
    /// The region to sign for (Garage's is `garage`).
    pub region: Option<String>,
    /// The access key id.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint.
    pub allow_http: bool,
    /// Address the bucket as `BUCKET.ENDPOINT` instead of `ENDPOINT/BUCKET`.
    pub virtual_hosted_style: bool,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .finish()
    }
}

impl S3Options {
    /// A client for the bucket. Nothing is sent until the first request.
    pub fn connect(&self) -> Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(self.virtual_hosted_style)
            // casket never relies on conditional writes (Garage, for one, ignores them):
            // refuse them loudly rather than have them silently overwrite.
            .with_conditional_put(S3ConditionalPut::Disabled);
        if self.allow_http {
            builder = builder.with_allow_http(true);
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &self.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &self.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        Ok(Arc::new(builder.build()?))
    }
}
