//! `LimitsLayer`: over-size requests answered as REAPI says.
//!
//! tonic refuses a message over the decoding limit with OUT_OF_RANGE "decoded message length
//! too large" before any handler runs. REAPI asks for INVALID_ARGUMENT when a batch exceeds
//! `max_batch_total_size_bytes` and RESOURCE_EXHAUSTED for any other message too large to
//! handle; this layer rewrites tonic's answer into those, naming the limit.

use std::task::{Context, Poll};

use futures::future::BoxFuture;

use tonic::{Code, Status};
use tower::{Layer, Service};

use super::MAX_MESSAGE_BYTES;

/// Rewrites tonic's over-size refusals; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LimitsLayer {
    max_batch_bytes: u64,
}

impl LimitsLayer {
    /// `max_batch_bytes` is the batch limit advertised in Capabilities.
    pub(crate) fn new(max_batch_bytes: u64) -> Self {
        LimitsLayer { max_batch_bytes }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            max_batch_bytes: self.max_batch_bytes,
        }
    }
}

/// The service [`LimitsLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub(crate) struct LimitsService<S> {
    inner: S,
    max_batch_bytes: u64,
}

impl<S, B, R> Service<http::Request<B>> for LimitsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let batch = request.uri().path().ends_with("/BatchUpdateBlobs");
        let max_batch_bytes = self.max_batch_bytes;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(status) = Status::from_header_map(response.headers())
                .and_then(|status| answer(&status, batch, max_batch_bytes))
            {
                // Only fails for a message that cannot be a header value, and ours can.
                let _ = status.add_header(response.headers_mut());
            }
            Ok(response)
        })
    }
}

/// The status to send instead of `status`, if it is tonic's over-size refusal.
fn answer(status: &Status, batch: bool, max_batch_bytes: u64) -> Option<Status> {
    const TOO_LARGE: &str = "decoded message length too large: found ";
    if status.code() != Code::OutOfRange {
        return None;
    }
    let (_, rest) = status.message().split_once(TOO_LARGE)?;
    let found = rest.split(' ').next().unwrap_or("?");
    Some(if batch {
        Status::invalid_argument(format!(
            "a batch of {found} bytes exceeds max_batch_total_size_bytes ({max_batch_bytes} bytes): \
             send fewer blobs per request"
        ))
    } else {
        Status::resource_exhausted(format!(
            "a message of {found} bytes exceeds the server's limit of {MAX_MESSAGE_BYTES} bytes"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_refusal_becomes_the_status_reapi_asks_for() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 17000000 bytes, the limit is: 16777216 bytes",
        );
        let batch = answer(&tonic, true, 8 << 20).unwrap_or_else(|| Status::ok("none"));
        assert_eq!(batch.code(), Code::InvalidArgument);
        assert!(batch.message().contains("17000000") && batch.message().contains("8388608"));
        let other = answer(&tonic, false, 8 << 20).unwrap_or_else(|| Status::ok("none"));
        assert_eq!(other.code(), Code::ResourceExhausted);
        assert!(other.message().contains("16777216"), "{}", other.message());
        assert!(answer(&Status::out_of_range("read offset past the end"), false, 1).is_none());
        assert!(answer(&Status::not_found("x"), true, 1).is_none());
    }
}
