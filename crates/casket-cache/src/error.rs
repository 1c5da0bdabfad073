//! The cache layer's error: what a frontend maps to its protocol's status (gRPC codes, HTTP
//! statuses). Every variant carries what it is about.

use casket_store::StoreError;
use casket_tree::TreeError;

/// What can go wrong serving a cache request.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The request is malformed: a bad digest, path, key or record.
    #[error("{0}")]
    Invalid(String),
    /// What was asked for is not there, or not complete (a miss).
    #[error("{0}")]
    NotFound(String),
    /// The request needs something first (for example, content uploaded before its name).
    #[error("{0}")]
    Precondition(String),
    /// Something stored is not what it should be.
    #[error("{0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Walking a tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// A wire digest of `function`, validated (absent is invalid too).
pub fn digest(
    function: casket_model::DigestFunction,
    digest: Option<&casket_model::proto::reapi::Digest>,
) -> Result<casket_model::Digest> {
    let digest = digest.ok_or_else(|| CacheError::Invalid("a digest is required".to_owned()))?;
    casket_model::Digest::from_proto(function, digest).map_err(|e| CacheError::Invalid(e.to_string()))
}

/// The digest function a request names by its REAPI number (`UNKNOWN` means SHA-256).
pub fn digest_function(value: i32) -> Result<casket_model::DigestFunction> {
    casket_model::DigestFunction::from_proto(value)
        .ok_or_else(|| CacheError::Invalid(format!("unsupported digest function {value}")))
}
