//! Answers: `GET`/`HEAD`/`PUT` of `cas/`, `ac/` and `kv/` paths (and `DELETE` of `kv/`), over
//! the cache layer. A `cas` PUT is verified against its hash; an `ac` entry is an
//! `ActionResult`, a hit only when everything it references is present; a `kv` entry is a blob
//! under a key. Every answer is counted in the metrics when its body has been sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State as Shared};
use axum::response::Response;
use bytes::Bytes;
use casket_cache::action::{get_action_result, put_action_result};
use casket_cache::entries::{delete_entry, get_entry, put_entry};
use casket_cache::{CacheError, Namespace};
use casket_model::proto::reapi;
use casket_model::{Digest, DigestFunction, hex_digits};
use casket_store::{ActionId, ReadRange, StoreError};
use futures::Stream;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use prost::Message;

use super::auth::{self, Refused};
use super::body::{self, Chunks, Range, Spooled, UploadError, accepts_zstd, parse_range, write_exact};
use super::path::{Target, parse_target};
use super::{Connection, State};
use crate::server::Access;
use crate::server::metrics::{Lookup, Metrics, RequestLog, Tally, tool_name};

/// WebDAV's methods that sccache's backend uses besides GET and PUT: a stat, and making a
/// directory (entries' collections are implicit, so that always succeeds).
const PROPFIND: &str = "PROPFIND";
const MKCOL: &str = "MKCOL";

/// The largest `ActionResult` accepted over HTTP, as over gRPC.
const MAX_ACTION_RESULT_BYTES: u64 = crate::server::MAX_MESSAGE_BYTES as u64;

/// A refusal or failure, answered as a plain-text body saying what is wrong.
#[derive(Debug)]
pub(super) struct HttpError {
    status: StatusCode,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

impl From<CacheError> for HttpError {
    fn from(e: CacheError) -> Self {
        let status = match &e {
            CacheError::Invalid(_) => StatusCode::BAD_REQUEST,
            CacheError::NotFound(_) => StatusCode::NOT_FOUND,
            CacheError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            CacheError::Store(e) => return from_store(e, e.to_string()),
            CacheError::Corrupt(_) | CacheError::Tree(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError::new(status, e.to_string())
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        from_store(&e, e.to_string())
    }
}

fn from_store(e: &StoreError, message: String) -> HttpError {
    let status = match e {
        StoreError::NotFound(_) | StoreError::SizeMismatch { .. } => StatusCode::NOT_FOUND,
        StoreError::DigestMismatch { .. } | StoreError::TooLong(_) | StoreError::UnsupportedFunction(_) => {
            StatusCode::BAD_REQUEST
        }
        StoreError::TooLarge { .. } | StoreError::ExceedsCapacity { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::NoRoom(_) => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::RecordConflict(_) | StoreError::RefConflict(_) => StatusCode::CONFLICT,
        StoreError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    HttpError::new(status, message)
}

impl From<UploadError> for HttpError {
    fn from(e: UploadError) -> Self {
        let status = match &e {
            UploadError::Store(store) => return from_store(store, e.to_string()),
            UploadError::Idle(_) => StatusCode::REQUEST_TIMEOUT,
            UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
            UploadError::Body(_)
            | UploadError::TooLong(_)
            | UploadError::TooShort { .. }
            | UploadError::Mismatch { .. }
            | UploadError::Compression(_) => StatusCode::BAD_REQUEST,
        };
        HttpError::new(status, e.to_string())
    }
}

/// What a response carries.
enum Reply {
    Empty,
    Bytes(Bytes),
    Stream(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>),
}

/// An answer before it becomes a response.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    reply: Reply,
    /// Request body bytes read.
    received: u64,
}

impl Answer {
    fn ok(reply: Reply) -> Self {
        Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            reply,
            received: 0,
        }
    }

    fn stored(received: u64) -> Self {
        Answer {
            received,
            ..Answer::ok(Reply::Empty)
        }
    }

    fn header(mut self, name: header::HeaderName, value: impl ToString) -> Self {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            self.headers.insert(name, value);
        }
        self
    }
}

impl From<HttpError> for Answer {
    fn from(e: HttpError) -> Self {
        let mut answer = Answer {
            status: e.status,
            ..Answer::ok(Reply::Bytes(Bytes::from(format!("{}\n", e.message))))
        }
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if e.status == StatusCode::UNAUTHORIZED {
            answer = answer.header(header::WWW_AUTHENTICATE, "Basic realm=\"casket\"");
        }
        answer
    }
}

/// Every request: who asks, what the path names, the answer, and its metrics.
pub(super) async fn handle(Shared(state): Shared<Arc<State>>, request: Request) -> Response {
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let target = parse_target(parts.uri.path());
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let connection = parts
        .extensions
        .get::<Connection>()
        .copied()
        .unwrap_or(Connection {
            peer: ([0, 0, 0, 0], 0).into(),
            verified_certificate: false,
        });
    let log = RequestLog {
        method: format!(
            "HTTP {} {}",
            method_label(&parts.method),
            target.as_ref().map_or("other", Target::kind)
        ),
        start,
        client: user_agent
            .map(|agent| agent.chars().take(80).collect())
            .unwrap_or_default(),
        protocol: "http",
        tool: tool_name(None, user_agent),
        peer: connection.peer.ip().to_string(),
        tally: Arc::default(),
    };
    let answer = match target.map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e)) {
        Ok(target) => answer(&state, &parts, &connection, &log.tally, target, body).await,
        Err(e) => Err(e),
    };
    let head = parts.method == Method::HEAD;
    respond(
        answer.unwrap_or_else(Answer::from),
        head,
        state.metrics.clone(),
        log,
    )
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ if method.as_str() == PROPFIND => PROPFIND,
        _ if method.as_str() == MKCOL => MKCOL,
        _ => "other",
    }
}

async fn answer(
    state: &State,
    parts: &http::request::Parts,
    connection: &Connection,
    tally: &Tally,
    target: Target,
    body: Body,
) -> Result<Answer, HttpError> {
    let access = auth::rights(&state.access, &parts.headers, connection)
        .map_err(|Refused(why)| HttpError::new(StatusCode::UNAUTHORIZED, why))?;
    if access == Access::None {
        return Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "this cache needs credentials (Basic or Bearer with a token, or a client certificate)",
        ));
    }
    let writes = matches!(parts.method, Method::PUT | Method::DELETE) || parts.method.as_str() == MKCOL;
    if writes && access < Access::Write {
        let status = if parts.headers.contains_key(header::AUTHORIZATION) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        return Err(HttpError::new(
            status,
            "this caller may not write here: use a write token, or start the server with --allow-push",
        ));
    }
    let namespace = state.namespaces.get(target.instance()).ok_or_else(|| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!("no instance {:?} on this server", target.instance()),
        )
    })?;
    let metrics = &state.metrics;
    let chunks = Chunks::new(body, state.limits.body_idle_timeout);
    match (&parts.method, target) {
        (&Method::GET | &Method::HEAD, Target::Cas { function, hash, .. }) => {
            let found = namespace.blobs.stored_digest(function, &hash).await?;
            metrics.lookups(
                Lookup::Blob,
                u64::from(found.is_some()),
                u64::from(found.is_none()),
            );
            let digest =
                found.ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, "no such blob in this cache"))?;
            serve_blob(&namespace, &digest, parts).await
        }
        (&Method::PUT, Target::Cas { function, hash, .. }) => {
            put_blob(&namespace, &parts.headers, function, hash, chunks).await
        }
        (&Method::GET | &Method::HEAD, Target::Ac { action, .. }) => {
            let found = get_action_result(&namespace, action).await;
            tally.lookup(found.is_ok());
            metrics.lookups(
                Lookup::ActionResult,
                u64::from(found.is_ok()),
                u64::from(found.is_err()),
            );
            let result = Bytes::from(found?.encode_to_vec());
            Ok(Answer::ok(Reply::Bytes(result)).header(header::CONTENT_TYPE, "application/octet-stream"))
        }
        (&Method::PUT, Target::Ac { action, .. }) => {
            put_result(&namespace, &parts.headers, action, chunks).await
        }
        (&Method::GET | &Method::HEAD, Target::Entry { key, .. }) => {
            let found = get_entry(&namespace, &key).await;
            tally.lookup(found.is_ok());
            metrics.lookups(Lookup::Entry, u64::from(found.is_ok()), u64::from(found.is_err()));
            serve_blob(&namespace, &found?, parts).await
        }
        (&Method::PUT, Target::Entry { key, .. }) => {
            let function = DigestFunction::Blake3;
            let zstd = zstd_upload(&parts.headers)?;
            let spooled = Spooled::read(chunks, function, zstd, spool_limit(&namespace)).await?;
            let (digest, received) = (spooled.digest, spooled.received);
            spooled.store(namespace.blobs.as_ref()).await?;
            put_entry(&namespace, &key, &digest).await?;
            Ok(Answer::stored(received))
        }
        (method, Target::Entry { key, .. }) if method.as_str() == PROPFIND => {
            let found = get_entry(&namespace, &key).await;
            tally.lookup(found.is_ok());
            Ok(multistatus(parts.uri.path(), Some(found?.size())))
        }
        (method, Target::Collection { .. }) if method.as_str() == PROPFIND => {
            Ok(multistatus(parts.uri.path(), None))
        }
        (method, Target::Entry { .. } | Target::Collection { .. }) if method.as_str() == MKCOL => {
            Ok(Answer {
                status: StatusCode::CREATED,
                ..Answer::ok(Reply::Empty)
            })
        }
        (&Method::DELETE, Target::Entry { key, .. }) => match delete_entry(&namespace, &key).await? {
            true => Ok(Answer::ok(Reply::Empty)),
            false => Err(HttpError::new(StatusCode::NOT_FOUND, format!("no entry {key}"))),
        },
        (_, target) => {
            let allow = match target {
                Target::Entry { .. } => "GET, HEAD, PUT, DELETE, PROPFIND, MKCOL",
                Target::Collection { .. } => "PROPFIND, MKCOL",
                _ => "GET, HEAD, PUT",
            };
            Ok(Answer::from(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not served here (allowed: {allow})", parts.method),
            ))
            .header(header::ALLOW, allow))
        }
    }
}

/// A `cas` PUT: streamed into a verified write when its length is declared and it is not
/// compressed, else spooled, hashed and checked against the path's hash before it is stored.
async fn put_blob(
    namespace: &Namespace,
    headers: &HeaderMap,
    function: DigestFunction,
    hash: [u8; 32],
    chunks: Chunks,
) -> Result<Answer, HttpError> {
    let received = match (declared_length(headers)?, zstd_upload(headers)?) {
        (Some(size), false) => {
            let digest = Digest::new(function, hash, size)
                .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            check_size(namespace, size)?;
            write_exact(namespace.blobs.as_ref(), &digest, chunks).await?
        }
        (_, zstd) => {
            let spooled = Spooled::read(chunks, function, zstd, spool_limit(namespace)).await?;
            if spooled.digest.hash() != &hash {
                return Err(UploadError::Mismatch {
                    expected: String::from_utf8_lossy(&hex_digits(&hash)).into_owned(),
                    actual: spooled.digest,
                }
                .into());
            }
            let received = spooled.received;
            spooled.store(namespace.blobs.as_ref()).await?;
            received
        }
    };
    Ok(Answer::stored(received))
}

/// An `ac` PUT: the body must be an `ActionResult` (checked as over gRPC).
async fn put_result(
    namespace: &Namespace,
    headers: &HeaderMap,
    action: ActionId,
    chunks: Chunks,
) -> Result<Answer, HttpError> {
    if declared_length(headers)?.is_some_and(|size| size > MAX_ACTION_RESULT_BYTES) {
        return Err(UploadError::TooLarge(MAX_ACTION_RESULT_BYTES).into());
    }
    let zstd = zstd_upload(headers)?;
    let spooled = Spooled::read(chunks, action.function, zstd, MAX_ACTION_RESULT_BYTES).await?;
    let received = spooled.received;
    let result = reapi::ActionResult::decode(spooled.into_bytes().await?).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not an ActionResult ({e}); opaque values belong under /kv/"),
        )
    })?;
    put_action_result(namespace, action, &result).await?;
    Ok(Answer::stored(received))
}

/// A WebDAV `207 Multi-Status` for `path` alone (Depth 0): a file of `size` bytes, or a
/// collection.
fn multistatus(path: &str, size: Option<u64>) -> Answer {
    let href = path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    // Entries keep no modification time of their own: WebDAV clients want one, so say now.
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let prop = match size {
        Some(size) => format!("<D:getcontentlength>{size}</D:getcontentlength><D:resourcetype/>"),
        None => "<D:resourcetype><D:collection/></D:resourcetype>".to_owned(),
    };
    let prop = format!("<D:getlastmodified>{now}</D:getlastmodified>{prop}");
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:multistatus xmlns:D=\"DAV:\"><D:response>\
         <D:href>{href}</D:href><D:propstat><D:prop>{prop}</D:prop>\
         <D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>\n"
    );
    Answer {
        status: StatusCode::MULTI_STATUS,
        ..Answer::ok(Reply::Bytes(Bytes::from(xml)))
    }
    .header(header::CONTENT_TYPE, "application/xml; charset=utf-8")
}

/// The blob, whole or the asked range, compressed when the client accepts zstd and asked for
/// the whole of it. A HEAD reads nothing: the blob was found already.
async fn serve_blob(
    namespace: &Namespace,
    digest: &Digest,
    request: &http::request::Parts,
) -> Result<Answer, HttpError> {
    let headers = &request.headers;
    let size = digest.size();
    let (status, offset, len) = match parse_range(headers.get(header::RANGE), size) {
        Range::Whole => (StatusCode::OK, 0, size),
        Range::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start),
        Range::Unsatisfiable => {
            return Ok(Answer {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                ..Answer::ok(Reply::Empty)
            }
            .header(header::CONTENT_RANGE, format!("bytes */{size}")));
        }
    };
    let range = ReadRange {
        offset,
        limit: Some(len),
    };
    let zstd = status == StatusCode::OK && len > 0 && accepts_zstd(headers.get(header::ACCEPT_ENCODING));
    let reply = if request.method == Method::HEAD {
        Reply::Empty
    } else {
        let stream = namespace
            .blobs
            .read(digest, range)
            .await?
            .ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, format!("{digest} has just expired")))?;
        Reply::Stream(body::download(stream, zstd))
    };
    let mut answer = Answer {
        status,
        ..Answer::ok(reply)
    }
    .header(header::CONTENT_TYPE, "application/octet-stream")
    .header(header::ACCEPT_RANGES, "bytes");
    if zstd {
        answer = answer.header(header::CONTENT_ENCODING, "zstd");
    } else {
        answer = answer.header(header::CONTENT_LENGTH, len);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        answer = answer.header(
            header::CONTENT_RANGE,
            format!("bytes {offset}-{}/{size}", offset + len - 1),
        );
    }
    Ok(answer)
}

/// The body's declared length, if it has one.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| HttpError::new(StatusCode::BAD_REQUEST, "Content-Length is not a number"))
        })
        .transpose()
}

/// Whether the body is zstd-compressed; a coding other than zstd or identity is refused.
fn zstd_upload(headers: &HeaderMap) -> Result<bool, HttpError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().map(str::trim))
    {
        None => Ok(false),
        Some(Ok(coding)) if coding.eq_ignore_ascii_case("identity") => Ok(false),
        Some(Ok(coding)) if coding.eq_ignore_ascii_case("zstd") => Ok(true),
        Some(_) => Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only zstd and identity content codings are accepted",
        )),
    }
}

/// The most bytes an upload of unknown size may bring: what the namespace can hold.
fn spool_limit(namespace: &Namespace) -> u64 {
    namespace.max_blob_size().unwrap_or(u64::MAX)
}

fn check_size(namespace: &Namespace, size: u64) -> Result<(), HttpError> {
    match namespace.max_blob_size() {
        Some(limit) if size > limit => Err(UploadError::TooLarge(limit).into()),
        _ => Ok(()),
    }
}

/// The response for `answer`, whose metrics are recorded once its body has been sent (or
/// dropped, when the client goes away).
fn respond(answer: Answer, head: bool, metrics: Arc<Metrics>, log: RequestLog) -> Response {
    let Answer {
        status,
        mut headers,
        reply,
        received,
    } = answer;
    let mut recorder = Recorder {
        metrics,
        log: Some(log),
        status: status.as_u16(),
        received,
        sent: 0,
    };
    let body = match reply {
        // A HEAD answer says how long the GET's body would be.
        Reply::Bytes(bytes) if head => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Body::empty()
        }
        _ if head => Body::empty(),
        Reply::Empty => Body::empty(),
        Reply::Bytes(bytes) => {
            recorder.sent = bytes.len() as u64;
            Body::from(bytes)
        }
        Reply::Stream(stream) => Body::from_stream(Counted {
            inner: stream,
            recorder,
        }),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Records a request in the metrics when dropped.
struct Recorder {
    metrics: Arc<Metrics>,
    log: Option<RequestLog>,
    status: u16,
    received: u64,
    sent: u64,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            self.metrics
                .http_finished(&log, self.status, self.received, self.sent);
        }
    }
}

/// A response stream counting what it sends.
struct Counted {
    inner: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    recorder: Recorder,
}

impl Stream for Counted {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(data))) = &item {
            self.recorder.sent += data.len() as u64;
        }
        item
    }
}
