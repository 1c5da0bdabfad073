//! What the server counts, for Prometheus and `/status`: every request by method and status
//! code, its latency and bytes in and out (the metrics layer, which also writes one structured
//! log event per request), cache hits and misses (the handlers), evictions (the quota), and
//! store usage (read when scraped).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::history::{History, Traffic};
use tower::{Layer, Service};

/// What a lookup looked for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub(crate) enum Lookup {
    /// A CAS blob (FindMissingBlobs, BatchReadBlobs, ByteStream Read).
    Blob,
    /// An action result.
    ActionResult,
    /// A Remote Asset.
    Asset,
    /// A BuildStream ref.
    Ref,
    /// A generic entry (HTTP `kv/`).
    Entry,
}

const LOOKUPS: [Lookup; 5] = [
    Lookup::Blob,
    Lookup::ActionResult,
    Lookup::Asset,
    Lookup::Ref,
    Lookup::Entry,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    kind: Lookup,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The server's metrics. One per server, shared by the layers, handlers and quota.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    received_bytes: Family<MethodLabels, Counter>,
    sent_bytes: Family<MethodLabels, Counter>,
    hits: Family<LookupLabels, Counter>,
    misses: Family<LookupLabels, Counter>,
    evicted_blobs: Counter,
    evicted_bytes: Counter,
    store_blobs: Family<NamespaceLabels, Gauge>,
    store_bytes: Family<NamespaceLabels, Gauge>,
    quota_bytes: Family<NamespaceLabels, Gauge>,
    started: Instant,
    totals: Totals,
    history: History,
}

/// Totals over every method and code, for `/status` (the families cannot be summed).
#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    errors: AtomicU64,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under `casket_`.
    pub fn new() -> Self {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("casket"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            received_bytes: Family::default(),
            sent_bytes: Family::default(),
            hits: Family::default(),
            misses: Family::default(),
            evicted_blobs: Counter::default(),
            evicted_bytes: Counter::default(),
            store_blobs: Family::default(),
            store_bytes: Family::default(),
            quota_bytes: Family::default(),
            started: Instant::now(),
            totals: Totals::default(),
            history: History::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "requests",
            "Requests by method and status code (gRPC code names, HTTP status numbers)",
            metrics.requests.clone(),
        );
        r.register("request_seconds", "Request latency", metrics.latency.clone());
        r.register(
            "received_bytes",
            "Request body bytes by method",
            metrics.received_bytes.clone(),
        );
        r.register(
            "sent_bytes",
            "Response body bytes by method",
            metrics.sent_bytes.clone(),
        );
        r.register(
            "hits",
            "Lookups that found what they looked for",
            metrics.hits.clone(),
        );
        r.register("misses", "Lookups that did not", metrics.misses.clone());
        r.register(
            "evicted_blobs",
            "Blobs evicted by the quota",
            metrics.evicted_blobs.clone(),
        );
        r.register(
            "evicted_bytes",
            "Bytes freed by eviction",
            metrics.evicted_bytes.clone(),
        );
        r.register(
            "store_blobs",
            "Blobs stored, by namespace",
            metrics.store_blobs.clone(),
        );
        r.register(
            "store_bytes",
            "Bytes allocated on disk, by namespace",
            metrics.store_bytes.clone(),
        );
        r.register(
            "quota_bytes",
            "The quota, by namespace",
            metrics.quota_bytes.clone(),
        );
        metrics
    }

    /// Counts `hits` and `misses` of `kind`.
    pub(crate) fn lookups(&self, kind: Lookup, hits: u64, misses: u64) {
        let labels = LookupLabels { kind };
        if hits > 0 {
            self.hits.get_or_create(&labels).inc_by(hits);
        }
        if misses > 0 {
            self.misses.get_or_create(&labels).inc_by(misses);
        }
    }

    /// Records a namespace's usage (called when scraped).
    pub(crate) fn set_store(&self, namespace: &str, blobs: u64, bytes: u64, quota: Option<u64>) {
        let labels = NamespaceLabels {
            namespace: namespace.to_owned(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.store_blobs.get_or_create(&labels).set(gauge(blobs));
        self.store_bytes.get_or_create(&labels).set(gauge(bytes));
        if let Some(quota) = quota {
            self.quota_bytes.get_or_create(&labels).set(gauge(quota));
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Totals for `/status`.
    pub(crate) fn summary(&self) -> serde_json::Value {
        let lookups: serde_json::Map<String, serde_json::Value> = LOOKUPS
            .iter()
            .map(|kind| {
                let labels = LookupLabels { kind: *kind };
                (
                    format!("{kind:?}"),
                    serde_json::json!({
                        "hits": self.hits.get_or_create(&labels).get(),
                        "misses": self.misses.get_or_create(&labels).get(),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "uptime_seconds": self.started.elapsed().as_secs(),
            "requests": self.totals.requests.load(Ordering::Relaxed),
            "errors": self.totals.errors.load(Ordering::Relaxed),
            "lookups": lookups,
            "evicted_blobs": self.evicted_blobs.get(),
            "evicted_bytes": self.evicted_bytes.get(),
        })
    }

    fn finished(&self, request: &RequestLog, code: Code, sent: u64) {
        let outcome = match code {
            Code::Ok | Code::NotFound => Outcome::Answered,
            Code::Internal | Code::DataLoss | Code::Unknown => Outcome::Failed,
            _ => Outcome::Refused,
        };
        self.record(request, &format!("{code:?}"), outcome, sent);
    }

    /// Records an HTTP cache request (`method` such as `HTTP GET cas`) answered with `status`,
    /// having received `received` bytes and sent `sent`.
    pub(crate) fn http_finished(&self, request: &RequestLog, status: u16, received: u64, sent: u64) {
        request.tally.received.fetch_add(received, Ordering::Relaxed);
        let outcome = match status {
            200..=399 | 404 => Outcome::Answered,
            500.. => Outcome::Failed,
            _ => Outcome::Refused,
        };
        self.received_bytes
            .get_or_create(&MethodLabels {
                method: request.method.clone(),
            })
            .inc_by(received);
        self.record(request, &status.to_string(), outcome, sent);
    }

    /// The last hours of traffic, for the status page.
    pub(crate) fn history(&self) -> serde_json::Value {
        self.history.to_json()
    }

    fn record(&self, request: &RequestLog, code: &str, outcome: Outcome, sent: u64) {
        let tally = &request.tally;
        self.history.record(
            request.protocol,
            &request.tool,
            &request.peer,
            &Traffic {
                requests: 1,
                errors: u64::from(!matches!(outcome, Outcome::Answered)),
                hits: tally.hits.load(Ordering::Relaxed),
                misses: tally.misses.load(Ordering::Relaxed),
                received: tally.received.load(Ordering::Relaxed),
                sent,
            },
        );
        let method = MethodLabels {
            method: request.method.clone(),
        };
        let seconds = request.start.elapsed().as_secs_f64();
        self.requests
            .get_or_create(&RequestLabels {
                method: request.method.clone(),
                code: code.to_owned(),
            })
            .inc();
        self.latency.get_or_create(&method).observe(seconds);
        self.sent_bytes.get_or_create(&method).inc_by(sent);
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        let ms = seconds * 1000.0;
        let method = request.method.as_str();
        let client = request.client.as_str();
        match outcome {
            Outcome::Answered => tracing::debug!(method, code, ms, sent, client, "request"),
            Outcome::Failed => {
                self.totals.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(method, code, ms, sent, client, "request failed");
            }
            Outcome::Refused => {
                self.totals.errors.fetch_add(1, Ordering::Relaxed);
                tracing::info!(method, code, ms, sent, client, "request refused");
            }
        }
    }
}

/// Evictions by the quota.
impl casket_cache::EvictionListener for Metrics {
    fn evicted(&self, blobs: u64, bytes: u64) {
        self.evicted_blobs.inc_by(blobs);
        self.evicted_bytes.inc_by(bytes);
        self.history.evicted(blobs, bytes);
    }
}

/// The services whose methods are labelled by name; anything else is `other`, so that
/// clients cannot create labels at will.
const SERVICES: &[&str] = &[
    "build.bazel.remote.execution.v2.Capabilities",
    "build.bazel.remote.execution.v2.ContentAddressableStorage",
    "build.bazel.remote.execution.v2.ActionCache",
    "google.bytestream.ByteStream",
    "build.bazel.remote.asset.v1.Fetch",
    "build.bazel.remote.asset.v1.Push",
    "buildstream.v2.ReferenceStorage",
    "grpc.health.v1.Health",
];

/// `ContentAddressableStorage/FindMissingBlobs` for a known method's path, else `other`.
fn method_label(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method)) if SERVICES.contains(&service) && !method.contains('/') => {
            let short = service.rsplit('.').next().unwrap_or(service);
            format!("{short}/{method}")
        }
        _ => "other".to_owned(),
    }
}

/// The tower layer that counts and logs every request.
#[derive(Clone, Debug)]
pub(crate) struct MetricsLayer {
    metrics: Arc<Metrics>,
}

impl MetricsLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`MetricsLayer`] wraps around the others.
#[derive(Clone, Debug)]
pub(crate) struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// One request being answered.
#[derive(Debug)]
pub(crate) struct RequestLog {
    /// The method's label.
    pub(crate) method: String,
    /// When it arrived.
    pub(crate) start: Instant,
    /// Who asked: from REAPI's `RequestMetadata` header (Bazel sends it) its tool, mnemonic and
    /// target; over HTTP, the user agent; or empty.
    pub(crate) client: String,
    /// `grpc` or `http`.
    pub(crate) protocol: &'static str,
    /// The client's tool (`bazel`, `ccache`, …): see [`tool_name`].
    pub(crate) tool: String,
    /// The client's address, without its port.
    pub(crate) peer: String,
    /// What the request looked up and received.
    pub(crate) tally: Arc<Tally>,
}

/// What one request looked up (action results, refs, assets and entries: the lookups whose
/// hits save builds; blob lookups are not counted here) and how many bytes it sent. The metrics
/// layer puts one in each gRPC request's extensions.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    received: AtomicU64,
}

impl Tally {
    /// The tally of `request` (a fresh one when no metrics layer is in front).
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Arc<Tally> {
        request
            .extensions()
            .get::<Arc<Tally>>()
            .cloned()
            .unwrap_or_default()
    }

    /// Counts a lookup.
    pub(crate) fn lookup(&self, found: bool) {
        let counter = if found { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The tool a request comes from, for the status page: the REAPI `RequestMetadata` tool name,
/// else the user agent's first product (`bazel/4.2.3` -> `bazel`, `grpc-python/1.51` ->
/// `grpc-python`), reduced to at most 32 letters, digits, `.`, `-` and `_`.
pub(crate) fn tool_name(metadata_tool: Option<&str>, user_agent: Option<&str>) -> String {
    let raw = metadata_tool
        .filter(|t| !t.is_empty())
        .or_else(|| user_agent.and_then(|agent| agent.split(['/', ' ']).next()))
        .unwrap_or_default();
    let tool: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(32)
        .collect();
    if tool.is_empty() {
        "unknown".to_owned()
    } else {
        tool.to_lowercase()
    }
}

/// How a request ended, for the error total and the log level.
#[derive(Clone, Copy)]
enum Outcome {
    /// Answered, a miss included.
    Answered,
    /// Refused: bad input, no rights, no room.
    Refused,
    /// The server failed.
    Failed,
}

/// The REAPI request-metadata header.
const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// `tool mnemonic target` from a request's REAPI `RequestMetadata`, and the tool alone, if it
/// sent one.
fn request_metadata(headers: &http::HeaderMap) -> (String, Option<String>) {
    if !headers.contains_key(REQUEST_METADATA) {
        return (String::new(), None);
    }
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let Some(Ok(bytes)) = metadata.get_bin(REQUEST_METADATA).map(|v| v.to_bytes()) else {
        return (String::new(), None);
    };
    match <bazel_remote_apis::build::bazel::remote::execution::v2::RequestMetadata as prost::Message>::decode(
        bytes,
    ) {
        Ok(m) => {
            let tool = m.tool_details.map(|t| t.tool_name).unwrap_or_default();
            let client = format!("{tool} {} {}", m.action_mnemonic, m.target_id)
                .trim()
                .to_owned();
            (client, Some(tool))
        }
        Err(_) => (String::new(), None),
    }
}

/// The address of the peer a gRPC request came from, without its port; `local` on a UNIX socket.
fn peer_of<B>(request: &http::Request<B>) -> String {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
        .map_or_else(|| "local".to_owned(), |addr| addr.ip().to_string())
}

impl<S, R> Service<http::Request<Body>> for MetricsService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    R::Error: Into<Status>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let (client, metadata_tool) = request_metadata(request.headers());
        let user_agent = request
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        let tally = Arc::new(Tally::default());
        let log = RequestLog {
            method: method_label(request.uri().path()),
            start: Instant::now(),
            client,
            protocol: "grpc",
            tool: tool_name(metadata_tool.as_deref(), user_agent),
            peer: peer_of(&request),
            tally: tally.clone(),
        };
        request.extensions_mut().insert(tally.clone());
        let received = self.metrics.received_bytes.get_or_create(&MethodLabels {
            method: log.method.clone(),
        });
        let request = request.map(|body| {
            Body::new(CountedRequest {
                inner: body,
                received: received.clone(),
                tally,
            })
        });
        let response = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = response.await?;
            // Refusals and errors without a body carry their code in the headers.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(Code::from_i32);
            Ok(response.map(|body| {
                Body::new(CountedResponse {
                    inner: body,
                    metrics,
                    log,
                    code,
                    sent: 0,
                    done: false,
                })
            }))
        })
    }
}

/// A request body that counts the bytes it delivers.
struct CountedRequest {
    inner: Body,
    received: Counter,
    tally: Arc<Tally>,
}

impl HttpBody for CountedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame
            .as_ref()
            .and_then(|f| f.as_ref().ok())
            .and_then(Frame::data_ref)
        {
            self.received.inc_by(data.len() as u64);
            self.tally
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts its bytes, reads the final status from the trailers, and
/// records the request when it ends (or is dropped, if the client went away).
struct CountedResponse<R> {
    inner: R,
    metrics: Arc<Metrics>,
    log: RequestLog,
    code: Option<Code>,
    sent: u64,
    done: bool,
}

impl<R> CountedResponse<R> {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            let code = self.code.unwrap_or(Code::Cancelled);
            self.metrics.finished(&self.log, code, self.sent);
        }
    }
}

impl<R> Drop for CountedResponse<R> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<R> HttpBody for CountedResponse<R>
where
    R: HttpBody<Data = Bytes> + Unpin,
    R::Error: Into<Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx)).map(|f| f.map_err(Into::into));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.code = Status::from_header_map(trailers)
                        .map(|s| s.code())
                        .or(Some(Code::Ok));
                }
            }
            Some(Err(status)) => this.code = Some(status.code()),
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_get_short_labels_and_others_one_label() {
        assert_eq!(
            method_label("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"),
            "ContentAddressableStorage/FindMissingBlobs"
        );
        assert_eq!(
            method_label("/google.bytestream.ByteStream/Read"),
            "ByteStream/Read"
        );
        assert_eq!(method_label("/evil.Service/x"), "other");
        assert_eq!(method_label("/google.bytestream.ByteStream/Read/more"), "other");
    }

    #[test]
    fn bazel_request_metadata_names_the_client() {
        use bazel_remote_apis::build::bazel::remote::execution::v2::{RequestMetadata, ToolDetails};
        let metadata = RequestMetadata {
            tool_details: Some(ToolDetails {
                tool_name: "bazel".into(),
                tool_version: "4.2.3".into(),
            }),
            action_mnemonic: "Genrule".into(),
            target_id: "//:gen7".into(),
            ..Default::default()
        };
        let mut map = tonic::metadata::MetadataMap::new();
        map.insert_bin(
            REQUEST_METADATA,
            tonic::metadata::MetadataValue::from_bytes(&prost::Message::encode_to_vec(&metadata)),
        );
        assert_eq!(
            request_metadata(&map.into_headers()),
            ("bazel Genrule //:gen7".to_owned(), Some("bazel".to_owned()))
        );
        assert_eq!(request_metadata(&http::HeaderMap::new()), (String::new(), None));
    }

    #[test]
    fn tools_are_named_by_metadata_else_user_agent_and_kept_short() {
        assert_eq!(tool_name(Some("bazel"), Some("grpc-java/1.2")), "bazel");
        assert_eq!(
            tool_name(None, Some("grpc-python/1.51.1 grpc-c/29")),
            "grpc-python"
        );
        assert_eq!(tool_name(Some(""), Some("ccache/4.7.5")), "ccache");
        assert_eq!(tool_name(None, Some("<script>alert(1)</script>")), "scriptalert1");
        assert_eq!(tool_name(None, None), "unknown");
        assert_eq!(tool_name(Some(&"x".repeat(100)), None).len(), 32);
    }

    /// docs/grafana/casket-dashboard.json queries only series this exposition has.
    #[test]
    fn the_grafana_dashboard_queries_metrics_that_exist() {
        let metrics = Metrics::new();
        metrics.lookups(Lookup::Blob, 1, 1);
        metrics.set_store("default", 1, 1, Some(10));
        casket_cache::EvictionListener::evicted(&metrics, 1, 1);
        let log = RequestLog {
            method: "HTTP GET cas".to_owned(),
            start: Instant::now(),
            client: String::new(),
            protocol: "http",
            tool: "curl".to_owned(),
            peer: "127.0.0.1".to_owned(),
            tally: Arc::default(),
        };
        metrics.http_finished(&log, 200, 1, 1);
        let exposition = metrics.encode();
        let exported: std::collections::HashSet<&str> = exposition
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../../docs/grafana/casket-dashboard.json"))
                .unwrap_or_default();
        let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
        assert!(panels.len() >= 8, "{dashboard}");
        for target in panels
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        {
            let expr = target["expr"].as_str().unwrap_or_default();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("casket_"));
            for name in names {
                assert!(
                    exported.contains(name),
                    "the dashboard queries {name}, which /metrics lacks"
                );
            }
        }
    }

    #[test]
    fn lookups_show_in_the_exposition_and_the_summary() {
        let metrics = Metrics::new();
        metrics.lookups(Lookup::ActionResult, 2, 1);
        let text = metrics.encode();
        assert!(
            text.contains("casket_hits_total{kind=\"ActionResult\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("casket_misses_total{kind=\"ActionResult\"} 1"),
            "{text}"
        );
        assert_eq!(metrics.summary()["lookups"]["ActionResult"]["hits"], 2);
    }
}
