//! Who is asking, over HTTP: the same tokens as gRPC, presented as `Authorization: Bearer
//! TOKEN` or as HTTP Basic credentials (the password is the token; a token alone as the user
//! name works too, for clients that only take `https://TOKEN@host` URLs); a verified client
//! certificate; or the anonymous rights.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

use super::Connection;
use crate::server::{Access, AccessPolicy};

/// Why credentials were refused, for a 401 body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) &'static str);

/// The rights of the caller sending `headers` over `connection`.
pub(crate) fn rights(
    policy: &AccessPolicy,
    headers: &HeaderMap,
    connection: &Connection,
) -> Result<Access, Refused> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(policy.without_token(connection.verified_certificate));
    };
    let value = value
        .to_str()
        .map_err(|_| Refused("the Authorization header is not text"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_owned(),
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => basic_token(encoded.trim())?,
        _ => return Err(Refused("the Authorization header is neither Bearer nor Basic")),
    };
    policy.token_rights(&token).ok_or(Refused("unknown credentials"))
}

/// The token in Basic credentials: the password, or the user name when the password is empty.
fn basic_token(encoded: &str) -> Result<String, Refused> {
    let decoded = STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(Refused("the Basic credentials are not base64 of user:password"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or(Refused("the Basic credentials are not user:password"))?;
    Ok(if password.is_empty() { user } else { password }.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                http::header::AUTHORIZATION,
                value.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
        headers
    }

    #[test]
    fn bearer_and_basic_carry_the_same_tokens() {
        let mut policy = AccessPolicy::new(Access::None);
        policy.add_token("ci-secret", Access::Write);
        policy.add_token("dev-secret", Access::Read);
        let connection = Connection {
            peer: ([127, 0, 0, 1], 1).into(),
            verified_certificate: false,
        };
        let rights = |value: Option<&str>| rights(&policy, &headers(value), &connection);
        let basic = |credentials: &str| format!("Basic {}", STANDARD.encode(credentials));
        assert_eq!(rights(Some("Bearer ci-secret")), Ok(Access::Write));
        assert_eq!(rights(Some(&basic("bazel:ci-secret"))), Ok(Access::Write));
        assert_eq!(rights(Some(&basic("dev-secret:"))), Ok(Access::Read));
        assert_eq!(rights(None), Ok(Access::None));
        assert!(rights(Some(&basic("bazel:guess"))).is_err());
        assert!(rights(Some("Basic !!!")).is_err());
        assert!(rights(Some("Digest x")).is_err());
    }
}
