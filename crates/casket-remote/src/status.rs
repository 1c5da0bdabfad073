//! Cache, store and tree errors as gRPC statuses: the only place that maps one to the other.

use casket_cache::CacheError;
use casket_store::StoreError;
use casket_tree::TreeError;

use crate::client::transfer::TransferError;
use tonic::{Code, Status};

/// The gRPC code for a store error.
pub(crate) fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::NotFound(_) | StoreError::SizeMismatch { .. } => Code::NotFound,
        StoreError::DigestMismatch { .. } | StoreError::TooLong(_) | StoreError::UnsupportedFunction(_) => {
            Code::InvalidArgument
        }
        StoreError::OffsetOutOfRange { .. } => Code::OutOfRange,
        StoreError::TooLarge { .. } => Code::ResourceExhausted,
        StoreError::RefConflict(_) | StoreError::RecordConflict(_) => Code::FailedPrecondition,
        StoreError::Corrupt { .. } | StoreError::CorruptRef { .. } => Code::DataLoss,
        StoreError::Io { source, .. } if source.raw_os_error() == Some(28) => Code::ResourceExhausted,
        StoreError::Remote { code, .. } => Code::from_i32(*code),
        StoreError::Unsupported(_) => Code::Unimplemented,
        StoreError::NoRoom(_) => Code::ResourceExhausted,
        // Over max_cas_blob_size_bytes, which Capabilities advertises as the quota.
        StoreError::ExceedsCapacity { .. } => Code::InvalidArgument,
        // The object store's own retries are spent: the client may try again later.
        StoreError::ObjectStore(_) => Code::Unavailable,
        StoreError::Io { .. } | StoreError::Task(_) => Code::Internal,
    }
}

/// A store error as a status.
pub fn from_store(e: StoreError) -> Status {
    Status::new(store_code(&e), e.to_string())
}

/// The gRPC code for a tree error.
fn tree_code(e: &TreeError) -> Code {
    match e {
        TreeError::MissingDirectory { .. } | TreeError::MissingFile { .. } => Code::NotFound,
        TreeError::InvalidDirectory { .. } => Code::InvalidArgument,
        TreeError::Store { source, .. } => store_code(source),
        _ => Code::Internal,
    }
}

/// A tree error as a status.
pub fn from_tree(e: TreeError) -> Status {
    Status::new(tree_code(&e), e.to_string())
}

/// A failed LocalCAS capture as a status: out of room is RESOURCE_EXHAUSTED (BuildStream's
/// "Cache too full"), even for one file larger than the whole quota, where REAPI's own
/// services say INVALID_ARGUMENT.
pub fn from_capture(e: TreeError) -> Status {
    match &e {
        TreeError::Store { source, .. }
            if matches!(
                **source,
                StoreError::ExceedsCapacity { .. } | StoreError::NoRoom(_)
            ) =>
        {
            Status::resource_exhausted(e.to_string())
        }
        _ => from_tree(e),
    }
}

/// A failed LocalCAS StageTree as a status, with buildbox-casd's codes: an incomplete tree is
/// FAILED_PRECONDITION, a target that is not empty INVALID_ARGUMENT.
pub fn from_staging(e: TreeError) -> Status {
    match e {
        e if e.is_gap() => Status::failed_precondition(e.to_string()),
        e @ TreeError::Target { .. } => Status::invalid_argument(e.to_string()),
        e => from_tree(e),
    }
}

/// A failed transfer as a status: the remote's own code when an RPC failed.
pub fn from_transfer(e: TransferError) -> Status {
    let code = match &e {
        TransferError::Remote { status, .. } => status.code(),
        TransferError::Missing(_) => Code::NotFound,
        TransferError::Corrupt { .. } => Code::DataLoss,
        TransferError::Store(e) => store_code(e),
        TransferError::Tree(e) => tree_code(e),
    };
    Status::new(code, e.to_string())
}

/// A cache error as a status.
pub fn from_cache(e: CacheError) -> Status {
    let code = match &e {
        CacheError::Invalid(_) => Code::InvalidArgument,
        CacheError::NotFound(_) => Code::NotFound,
        CacheError::Precondition(_) => Code::FailedPrecondition,
        CacheError::Corrupt(_) => Code::DataLoss,
        CacheError::Store(e) => store_code(e),
        CacheError::Tree(e) => tree_code(e),
    };
    Status::new(code, e.to_string())
}
