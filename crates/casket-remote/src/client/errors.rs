//! How a failed RPC reads in the client's errors: `RESOURCE_EXHAUSTED: message`, the code's
//! canonical name as gRPC documents it, then what the server (or the transport) said.

use std::error::Error;

use casket_store::StoreError;
use tonic::{Code, Status};

/// The canonical upper-case name of `code`, as in the gRPC status code documentation.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The status's message, then each error behind it (a transport failure) that adds something.
fn detail(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut next = status.source();
    while let Some(error) = next {
        let line = error.to_string();
        if !text.ends_with(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        next = error.source();
    }
    text
}

/// `CODE: message`: a status as every client error shows it.
pub(crate) fn describe(status: &Status) -> String {
    let (name, detail) = (code_name(status.code()), detail(status));
    if detail.is_empty() {
        name.to_owned()
    } else {
        format!("{name}: {detail}")
    }
}

/// A failed RPC as a store error.
pub(crate) fn remote_error(operation: &'static str, status: &Status) -> StoreError {
    StoreError::Remote {
        operation,
        code: status.code() as i32,
        code_name: code_name(status.code()).to_owned(),
        message: detail(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_canonical_code_and_message() {
        assert_eq!(
            describe(&Status::resource_exhausted("the cache is full")),
            "RESOURCE_EXHAUSTED: the cache is full"
        );
        assert_eq!(describe(&Status::not_found("")), "NOT_FOUND");
    }

    #[test]
    fn transport_failures_show_their_causes_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Transport(#[source] std::io::Error);
        let refused = Transport(std::io::Error::other("connection refused"));
        assert_eq!(
            describe(&Status::from_error(Box::new(refused))),
            "UNKNOWN: transport error: connection refused"
        );
    }

    #[test]
    fn store_errors_from_statuses_read_the_same_way() {
        let error = remote_error("BatchUpdateBlobs", &Status::permission_denied("read-only"));
        assert_eq!(
            error.to_string(),
            "remote BatchUpdateBlobs failed: PERMISSION_DENIED: read-only"
        );
    }

    #[test]
    fn every_code_has_its_canonical_name() {
        for number in 0..=16 {
            let code = Code::from_i32(number);
            let name = code_name(code);
            assert_eq!(name, name.to_uppercase());
            assert_eq!(
                name.replace('_', ""),
                format!("{code:?}").to_uppercase(),
                "{code:?}"
            );
        }
    }
}
