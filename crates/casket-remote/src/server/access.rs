//! Who may write: the access policy, enforced by a tower layer before any handler runs.
//!
//! A caller's rights come from its credentials: a bearer token (`authorization: Bearer T`)
//! from the token file, or a client certificate verified by TLS; without either, the policy's
//! anonymous rights apply (read-only by default). A write from a caller without write rights
//! is refused with PERMISSION_DENIED before its request is read, so nothing is stored. The
//! rights are also put in the request's extensions, for the handlers that report them
//! (Capabilities, ReferenceStorage.Status).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use casket_model::{Digest, DigestFunction};
use futures::future::{Either, Ready, ready};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

/// What a caller may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Nothing: every request is refused with UNAUTHENTICATED.
    None,
    /// Read blobs, action results, refs and assets.
    #[default]
    Read,
    /// Read and write.
    Write,
}

impl std::str::FromStr for Access {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Access::None),
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            other => Err(format!("unknown access {other:?} (expected none, read or write)")),
        }
    }
}

/// How callers get their rights.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    /// Rights of a caller with no credentials.
    pub anonymous: Access,
    /// Rights of each bearer token, keyed by the token's SHA-256 (so lookups leak nothing
    /// about the tokens through timing).
    tokens: HashMap<Digest, Access>,
    /// Rights of a caller whose client certificate TLS verified against the client CA.
    pub client_certificate: Access,
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `[read|write] TOKEN`.
    #[error("{path}:{line}: expected `TOKEN`, `write TOKEN` or `read TOKEN`")]
    Syntax {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
    },
}

impl AccessPolicy {
    /// A policy giving everyone `anonymous` rights, with no tokens, and write rights to a
    /// verified client certificate.
    pub fn new(anonymous: Access) -> Self {
        AccessPolicy {
            anonymous,
            tokens: HashMap::new(),
            client_certificate: Access::Write,
        }
    }

    /// Grants `access` to callers presenting `token`.
    pub fn add_token(&mut self, token: &str, access: Access) {
        self.tokens.insert(token_key(token), access);
    }

    /// Adds the tokens of a token file: one per line, `TOKEN` or `write TOKEN` for write
    /// rights, `read TOKEN` for read rights; blank lines and `#` comments are ignored.
    pub fn add_token_file(&mut self, path: &Path) -> Result<(), TokenFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: shown.clone(),
            source,
        })?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || TokenFileError::Syntax {
                path: shown.clone(),
                line: number + 1,
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let (access, token) = match words[..] {
                [token] => (Access::Write, token),
                ["write", token] => (Access::Write, token),
                ["read", token] => (Access::Read, token),
                _ => return Err(syntax()),
            };
            self.add_token(token, access);
        }
        Ok(())
    }

    /// The rights of the caller making `request`, or UNAUTHENTICATED for a token this policy
    /// does not know (a mistyped token must not silently fall back to anonymous rights).
    fn rights<B>(&self, request: &http::Request<B>) -> Result<Access, Status> {
        if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer TOKEN`"))?;
            return self
                .token_rights(token.trim())
                .ok_or_else(|| Status::unauthenticated("unknown bearer token"));
        }
        let verified_certificate = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| !certs.is_empty());
        Ok(self.without_token(verified_certificate))
    }

    /// The rights of a caller presenting `token`, or `None` for a token this policy does not know.
    pub(crate) fn token_rights(&self, token: &str) -> Option<Access> {
        self.tokens.get(&token_key(token)).copied()
    }

    /// The rights of a caller without a token, with or without a verified client certificate.
    pub(crate) fn without_token(&self, verified_certificate: bool) -> Access {
        if verified_certificate {
            self.client_certificate.max(self.anonymous)
        } else {
            self.anonymous
        }
    }
}

fn token_key(token: &str) -> Digest {
    Digest::of(DigestFunction::Sha256, token.as_bytes())
}

/// The gRPC methods that store something.
const WRITE_METHODS: &[&str] = &[
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
    "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
    "/google.bytestream.ByteStream/Write",
    "/build.bazel.remote.asset.v1.Push/PushBlob",
    "/build.bazel.remote.asset.v1.Push/PushDirectory",
    "/buildstream.v2.ReferenceStorage/UpdateReference",
];

/// Whether the gRPC method at `path` stores something.
pub(crate) fn is_write(path: &str) -> bool {
    WRITE_METHODS.contains(&path)
}

/// The caller's rights, as the access layer put them in a request's extensions.
pub(crate) fn caller_access<T>(request: &tonic::Request<T>) -> Access {
    request.extensions().get::<Access>().copied().unwrap_or_default()
}

/// The tower layer enforcing an [`AccessPolicy`] (and answering disabled methods with
/// UNIMPLEMENTED).
#[derive(Clone, Debug)]
pub(crate) struct AccessLayer {
    policy: Arc<AccessPolicy>,
    disabled: Arc<Vec<String>>,
}

impl AccessLayer {
    /// `disabled` lists `Service/Method` names (the service without its package).
    pub(crate) fn new(policy: AccessPolicy, disabled: Vec<String>) -> Self {
        AccessLayer {
            policy: Arc::new(policy),
            disabled: Arc::new(disabled),
        }
    }
}

/// Whether the gRPC method at `path` (`/package.Service/Method`) is one of `disabled`.
fn is_disabled(disabled: &[String], path: &str) -> bool {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return false;
    };
    let service = service.rsplit('.').next().unwrap_or(service);
    disabled
        .iter()
        .any(|d| d.split_once('/') == Some((service, method)))
}

impl<S> Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            policy: self.policy.clone(),
            disabled: self.disabled.clone(),
        }
    }
}

/// The service [`AccessLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub(crate) struct AccessService<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
    disabled: Arc<Vec<String>>,
}

impl<S, B, R> Service<http::Request<B>> for AccessService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let refusal = match self.policy.rights(&request) {
            Ok(Access::None) => Some(Status::unauthenticated(
                "this server needs credentials (a bearer token or a client certificate)",
            )),
            Ok(access) if access < Access::Write && is_write(request.uri().path()) => {
                Some(Status::permission_denied(
                    "this caller may not write here: use a write token or client certificate, \
                     or start the server with --allow-push",
                ))
            }
            Ok(access) => {
                request.extensions_mut().insert(access);
                None
            }
            Err(status) => Some(status),
        };
        let refusal = refusal.or_else(|| {
            is_disabled(&self.disabled, request.uri().path())
                .then(|| Status::unimplemented("this method is disabled on this server"))
        });
        match refusal {
            None => Either::Left(self.inner.call(request)),
            Some(status) => Either::Right(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, token: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(()).unwrap_or_default()
    }

    #[test]
    fn tokens_grant_their_rights_and_unknown_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# CI\nci-secret\nread dev-secret\n\nwrite other\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let mut policy = AccessPolicy::new(Access::Read);
        policy.add_token_file(&file).unwrap_or_else(|e| panic!("{e}"));
        let rights = |token| policy.rights(&request("/x", token)).map_err(|s| s.code());
        assert_eq!(rights(Some("ci-secret")), Ok(Access::Write));
        assert_eq!(rights(Some("other")), Ok(Access::Write));
        assert_eq!(rights(Some("dev-secret")), Ok(Access::Read));
        assert_eq!(rights(None), Ok(Access::Read));
        assert_eq!(rights(Some("guess")), Err(tonic::Code::Unauthenticated));
    }

    #[test]
    fn malformed_token_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("tokens");
        std::fs::write(&file, "good\nadmin bad token\n").unwrap_or_else(|e| panic!("{e}"));
        let error = AccessPolicy::default()
            .add_token_file(&file)
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.ends_with(":2: expected `TOKEN`, `write TOKEN` or `read TOKEN`")));
    }

    #[test]
    fn disabled_methods_match_by_service_and_method() {
        let disabled = vec!["ContentAddressableStorage/BatchReadBlobs".to_owned()];
        assert!(is_disabled(
            &disabled,
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs"
        ));
        assert!(!is_disabled(
            &disabled,
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs"
        ));
        assert!(!is_disabled(&disabled, "/nonsense"));
    }

    #[test]
    fn every_storing_method_is_a_write() {
        for method in WRITE_METHODS {
            assert!(is_write(method));
        }
        assert!(!is_write("/google.bytestream.ByteStream/Read"));
        assert!(!is_write(
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"
        ));
    }
}
