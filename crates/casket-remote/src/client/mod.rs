//! The REAPI client: [`RemoteCas`] speaks to any REAPI cache (casket serve, BuildStream's
//! artifact server, buildbox-casd, bazel-remote, ...) within the limits the server advertises.
//!
//! * [`RemoteCas`] implements [`casket_store::BlobStore`], so it passes the store conformance
//!   suite and anything written for a store works against a server.
//! * [`transfer`]: whole trees pushed and pulled with batching, pipelining and verification.
//! * `refs`: named trees over BuildStream's ReferenceStorage or the Remote Asset API.
//!
//! Every RPC goes through `RemoteCas::call`: as many requests in flight as the server takes
//! well (`adaptive`: found by climbing the measured throughput, at most `concurrency`),
//! retried with jittered exponential backoff on UNAVAILABLE, DEADLINE_EXCEEDED and
//! RESOURCE_EXHAUSTED, and counted by method in [`Stats`]. Failures read as
//! `RESOURCE_EXHAUSTED: message` in every error the client returns.

mod adaptive;
mod backoff;
mod connect;
mod errors;
mod lazy;
mod refs;
mod stats;
mod store;
pub mod transfer;

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use tonic::{Code, Status};

pub use connect::{
    ClientTls, ConnectError, Credentials, RemoteOptions, Transport, lazy_transport, transport,
};
pub use lazy::LazyRemote;
pub use refs::RefService;
pub use stats::Stats;

use crate::server::MAX_MESSAGE_BYTES;

/// gRPC's default message limit, which applies when a server advertises no batch limit.
const DEFAULT_BATCH_BYTES: u64 = 4 << 20;

/// Bytes reserved per blob in a batch, for its digest and framing.
pub(crate) const BATCH_ITEM_OVERHEAD: u64 = 128;

/// What the server supports, from GetCapabilities (or defaults when it has none).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The most blob bytes (with per-blob overhead) in one batch request or response.
    pub batch_bytes: u64,
    /// Whether BatchReadBlobs works; without it every read is a ByteStream.
    pub batch_read: bool,
    /// Whether the server offers zstd for ByteStream.
    pub zstd: bool,
}

/// A REAPI cache on the other end of a gRPC channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RemoteCas {
    transport: connect::Transport,
    instance: String,
    limits: Limits,
    options: Arc<RemoteOptions>,
    in_flight: Arc<adaptive::Adaptive>,
    stats: Arc<Stats>,
}

/// Failures worth retrying: the server was away, slow, or momentarily out of room, or the
/// connection broke (which tonic reports as UNKNOWN, or as CANCELLED when the server closed
/// it in the middle of a stream, with the transport error as its source; a server's own
/// UNKNOWN or CANCELLED has none).
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => true,
        Code::Unknown | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

impl RemoteCas {
    /// Connects to `options.url` and negotiates limits with GetCapabilities.
    pub async fn connect(options: RemoteOptions) -> Result<Self, connect::ConnectError> {
        let transport = connect::transport(&options).await?;
        let mut remote = RemoteCas {
            transport,
            instance: options.instance.clone(),
            limits: Limits {
                batch_bytes: DEFAULT_BATCH_BYTES.min(options.max_batch_bytes),
                batch_read: true,
                zstd: false,
            },
            in_flight: Arc::new(adaptive::Adaptive::new(options.concurrency)),
            options: Arc::new(options),
            stats: Arc::default(),
        };
        remote
            .negotiate()
            .await
            .map_err(connect::ConnectError::Capabilities)?;
        Ok(remote)
    }

    /// Asks the server what it supports. UNIMPLEMENTED means an old server: defaults, as
    /// BuildStream does. BatchReadBlobs is probed with an empty request.
    async fn negotiate(&mut self) -> Result<(), Status> {
        let instance = self.instance.clone();
        let answer = self
            .call("GetCapabilities", |t| {
                let instance = instance.clone();
                async move {
                    reapi::capabilities_client::CapabilitiesClient::new(t)
                        .get_capabilities(reapi::GetCapabilitiesRequest {
                            instance_name: instance,
                        })
                        .await
                }
            })
            .await;
        match answer {
            Ok(caps) => {
                if let Some(cache) = caps.into_inner().cache_capabilities {
                    let advertised = u64::try_from(cache.max_batch_total_size_bytes).unwrap_or(0);
                    let server = if advertised == 0 {
                        DEFAULT_BATCH_BYTES
                    } else {
                        advertised
                    };
                    self.limits.batch_bytes = server.min(self.options.max_batch_bytes);
                    self.limits.zstd = cache
                        .supported_compressors
                        .contains(&(reapi::compressor::Value::Zstd as i32));
                }
            }
            Err(status) if status.code() == Code::Unimplemented => {}
            Err(status) => return Err(status),
        }
        let instance = self.instance.clone();
        let probe = self
            .call("BatchReadBlobs", |t| {
                let instance = instance.clone();
                async move {
                    self::cas_client(t)
                        .batch_read_blobs(reapi::BatchReadBlobsRequest {
                            instance_name: instance,
                            ..Default::default()
                        })
                        .await
                }
            })
            .await;
        match probe {
            Ok(_) => {}
            Err(status) if status.code() == Code::Unimplemented => self.limits.batch_read = false,
            Err(status) => return Err(status),
        }
        Ok(())
    }

    /// What was negotiated.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// RPC counts and traffic so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether large transfers use zstd: asked for, and offered by the server.
    pub(crate) fn zstd(&self) -> Option<crate::resource_name::Compressor> {
        (self.options.compression && self.limits.zstd).then_some(crate::resource_name::Compressor::Zstd)
    }

    /// How many requests the client keeps in flight now, and the most it had.
    pub fn in_flight_limit(&self) -> (usize, usize) {
        (self.in_flight.limit(), self.in_flight.peak())
    }

    /// The instance name every request carries.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The connection, for other services of the same server (Remote Asset, ActionCache).
    pub fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// Runs one RPC that moves no blobs (capabilities, FindMissingBlobs, refs) with a slot among
    /// the requests in flight, counted under `method`, retrying with jittered backoff while the
    /// server is away, slow or momentarily full. Its latency says nothing about the throughput
    /// the in-flight limit is set by, so it is not measured.
    pub(crate) async fn call<T, F, Fut>(&self, method: &'static str, rpc: F) -> Result<T, Status>
    where
        F: FnMut(connect::Transport) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_moving(method, 0, rpc).await
    }

    /// [`RemoteCas::call`] for an RPC that moves about `bytes` of blobs (what it weighs in the
    /// measurements that set how many requests are in flight).
    pub(crate) async fn call_moving<T, F, Fut>(
        &self,
        method: &'static str,
        bytes: u64,
        mut rpc: F,
    ) -> Result<T, Status>
    where
        F: FnMut(connect::Transport) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = backoff::Backoff::starting_at(self.options.retry_delay);
        let mut attempt = 0;
        loop {
            let answer = {
                let slot = self.in_flight.acquire(bytes).await;
                self.stats.rpc(method);
                let answer = rpc(self.transport.clone()).await;
                if answer.as_ref().is_err_and(retryable) {
                    slot.overloaded();
                }
                answer
            };
            match answer {
                Err(status) if retryable(&status) && attempt < self.options.retries => {
                    attempt += 1;
                    self.stats.retry();
                    tracing::debug!(method, attempt, code = ?status.code(), "retrying");
                    backoff.wait().await;
                }
                answer => return answer,
            }
        }
    }
}

/// A CAS client on `transport` with the server's message limits.
pub(crate) fn cas_client(
    transport: connect::Transport,
) -> reapi::content_addressable_storage_client::ContentAddressableStorageClient<connect::Transport> {
    reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(transport)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_connections_are_retried_and_a_servers_own_refusals_are_not() {
        let broken = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(retryable(&broken));
        assert!(retryable(&Status::unavailable("restarting")));
        for refusal in [
            Status::cancelled("the server gave up"),
            Status::unknown("the server failed"),
            Status::invalid_argument("bad digest"),
            Status::permission_denied("read-only"),
        ] {
            assert!(!retryable(&refusal), "{refusal:?}");
        }
    }
}
