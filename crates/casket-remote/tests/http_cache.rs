//! The HTTP cache protocol on a real listener, beside the gRPC server over the same
//! namespaces: blobs, action results and generic entries; ranges and zstd; credentials; and
//! hostile clients (traversal, wrong bodies, wrong lengths, huge headers, slow clients), which
//! get clear errors, store nothing and do not stop others being served.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction};
use casket_remote::http_cache::{HttpCacheServer, HttpLimits};
use casket_remote::server::{Access, AccessPolicy, TlsOptions};
use casket_store::BlobStoreExt;
use common::Server;
use prost::Message;
use reapi::action_cache_client::ActionCacheClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP listener over `server`'s namespaces, stopped with the runtime.
async fn http(server: &Server, access: AccessPolicy, limits: HttpLimits) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let http = HttpCacheServer::new(
        server.namespaces.clone(),
        access,
        None,
        server.metrics.clone(),
        limits,
    )
    .unwrap();
    tokio::spawn(http.serve(listener, std::future::pending()));
    address
}

async fn open(server: &Server) -> SocketAddr {
    http(server, AccessPolicy::new(Access::Write), HttpLimits::default()).await
}

fn sha256(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

fn url(address: SocketAddr, path: &str) -> String {
    format!("http://{address}{path}")
}

fn cas(address: SocketAddr, digest: &Digest) -> String {
    url(address, &format!("/cas/{}", digest.hash_hex()))
}

async fn stored(server: &Server, digest: &Digest) -> bool {
    server.store.contains(digest).await.unwrap()
}

/// Sends `request` as is on a fresh connection and returns everything the server answers
/// until it closes the connection (or two seconds pass).
async fn raw(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn blobs_round_trip_whole_ranged_compressed_and_chunked() {
    let server = common::start(true).await;
    let address = open(&server).await;
    let client = reqwest::Client::new();
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    let digest = sha256(&data);

    let put = client
        .put(cas(address, &digest))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert!(stored(&server, &digest).await);

    let got = client.get(cas(address, &digest)).send().await.unwrap();
    assert_eq!(got.headers()["content-length"], data.len().to_string().as_str());
    assert_eq!(got.bytes().await.unwrap(), data);

    let head = client.head(cas(address, &digest)).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], data.len().to_string().as_str());

    let part = client
        .get(cas(address, &digest))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{}", data.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), data[100..200]);
    let past = client
        .get(cas(address, &digest))
        .header("range", "bytes=99999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let compressed = client
        .get(cas(address, &digest))
        .header("accept-encoding", "zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.headers()["content-encoding"], "zstd");
    let compressed = compressed.bytes().await.unwrap();
    assert!(compressed.len() < data.len());
    assert_eq!(zstd::decode_all(compressed.as_ref()).unwrap(), data);

    // A compressed upload, and a chunked one (no Content-Length): both spooled and verified.
    let other: Vec<u8> = data.iter().rev().copied().collect();
    let other_digest = sha256(&other);
    let put = client
        .put(cas(address, &other_digest))
        .header("content-encoding", "zstd")
        .body(zstd::encode_all(other.as_slice(), 3).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{}", put.text().await.unwrap());
    assert!(stored(&server, &other_digest).await);
    let third = b"chunked body".repeat(1000);
    let third_digest = sha256(&third);
    let chunks = futures::stream::iter(
        third
            .chunks(700)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let put = client
        .put(cas(address, &third_digest))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert!(stored(&server, &third_digest).await);

    let absent = client.get(cas(address, &sha256(b"absent"))).send().await.unwrap();
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn what_one_protocol_stores_the_other_serves() {
    let server = common::start(true).await;
    let address = open(&server).await;
    let client = reqwest::Client::new();
    let output = b"an output file".to_vec();
    let output_digest = sha256(&output);
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out/file".into(),
            digest: Some(output_digest.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    let action = sha256(b"an action");
    let ac = url(address, &format!("/ac/{}", action.hash_hex()));

    // Over HTTP, a result whose output is missing is stored but is no hit.
    let put = client.put(&ac).body(result.encode_to_vec()).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(
        client.get(&ac).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The output arrives over gRPC: now a hit over both.
    let mut cas_client = ContentAddressableStorageClient::new(server.channel.clone());
    cas_client
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(output_digest.to_proto()),
                data: output.clone(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let got = client.get(&ac).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(
        reapi::ActionResult::decode(got.bytes().await.unwrap()).unwrap(),
        result
    );
    let head = client.head(&ac).send().await.unwrap();
    assert_eq!(
        head.headers()["content-length"],
        result.encoded_len().to_string().as_str()
    );
    let mut ac_client = ActionCacheClient::new(server.channel.clone());
    let over_grpc = ac_client
        .get_action_result(reapi::GetActionResultRequest {
            action_digest: Some(action.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_grpc, result);
    assert_eq!(
        client
            .get(cas(address, &output_digest))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        output
    );

    // A result stored over gRPC is served over HTTP.
    let second = sha256(b"a second action");
    ac_client
        .update_action_result(reapi::UpdateActionResultRequest {
            action_digest: Some(second.to_proto()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = client
        .get(url(address, &format!("/ac/{}", second.hash_hex())))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);

    // An action cache entry must be an ActionResult; opaque values go under kv/.
    let bad = client
        .put(&ac)
        .body("not a protobuf \u{ff}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("/kv/"));
}

#[tokio::test]
async fn generic_entries_are_stored_read_and_deleted_by_key() {
    let server = common::start(true).await;
    let address = open(&server).await;
    let client = reqwest::Client::new();
    let key = url(address, "/ci/kv/ccache/ab/cdef0123");
    let value = b"an object file".repeat(100);
    assert_eq!(
        client.get(&key).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client
            .put(&key)
            .body(value.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(&key).send().await.unwrap().bytes().await.unwrap(),
        value
    );
    assert_eq!(
        client.head(&key).send().await.unwrap().headers()["content-length"],
        value.len().to_string().as_str()
    );
    // Its value is a blob of the store like any other, under the quota and expiry.
    assert!(stored(&server, &Digest::of(DigestFunction::Blake3, &value)).await);
    // Another value replaces it.
    assert_eq!(
        client.put(&key).body("new").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(&key).send().await.unwrap().bytes().await.unwrap(),
        "new"
    );
    assert_eq!(client.delete(&key).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        client.get(&key).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // A key below an existing key's path conflicts.
    assert_eq!(
        client
            .put(url(address, "/kv/a/b"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .put(url(address, "/kv/a/b/c"))
            .body("y")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CONFLICT
    );
    let post = client
        .post(url(address, "/kv/a/b"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers()["allow"], "GET, HEAD, PUT, DELETE, PROPFIND, MKCOL");
}

#[tokio::test]
async fn credentials_give_the_same_rights_as_grpc_tokens() {
    let server = common::start(false).await;
    let mut policy = AccessPolicy::new(Access::None);
    policy.add_token("ci-secret", Access::Write);
    policy.add_token("dev-secret", Access::Read);
    let address = http(&server, policy, HttpLimits::default()).await;
    let client = reqwest::Client::new();
    let data = b"guarded".to_vec();
    let digest = sha256(&data);
    let put = |credentials: Option<(&str, &str)>| {
        let mut request = client.put(cas(address, &digest)).body(data.clone());
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        request.send()
    };

    let anonymous = client.get(cas(address, &digest)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    assert_eq!(
        put(Some(("bazel", "dev-secret"))).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(Some(("bazel", "wrong"))).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(!stored(&server, &digest).await);
    assert_eq!(
        put(Some(("bazel", "ci-secret"))).await.unwrap().status(),
        StatusCode::OK
    );
    let read = client
        .get(cas(address, &digest))
        .bearer_auth("dev-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(read.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_store_nothing() {
    let server = common::start(true).await;
    let address = open(&server).await;
    let data = b"the real content".to_vec();
    let digest = sha256(&data);
    let hash = digest.hash_hex();

    for path in [
        "/kv/../../etc/passwd".to_owned(),
        "/kv/a/%2e%2e/b".to_owned(),
        "/kv/a%2fb".to_owned(),
        format!("/%2e%2e/cas/{hash}"),
        format!("/cas/{}", hash.to_uppercase()),
        "/cas/abc".to_owned(),
    ] {
        let answer = raw(
            address,
            format!("PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    assert!(
        !server.dir.path().join("store/entries").exists(),
        "an entry was stored"
    );

    // A body that is not what its hash names: the same length, or longer than declared (the
    // declared length frames it; what follows is no request).
    for body in ["the real contenT", "The real content and more"] {
        let answer = raw(
            address,
            format!(
                "PUT /cas/{hash} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                data.len()
            )
            .as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("hashes to"),
            "{answer}"
        );
        assert!(!stored(&server, &digest).await);
    }
    let wrong = Digest::of(DigestFunction::Sha256, b"the real contenT");
    assert!(
        !stored(&server, &wrong).await,
        "a mismatched body was stored under its own hash"
    );

    // A body shorter than declared, then the client goes away.
    let answer = raw(
        address,
        format!("PUT /cas/{hash} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nthe real").as_bytes(),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!stored(&server, &digest).await);

    // A chunked body longer than the quota-free limit is fine, but not one that ends early.
    let answer = raw(
        address,
        format!("PUT /cas/{hash} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nthe r")
            .as_bytes(),
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!stored(&server, &digest).await);

    // An oversized head.
    let huge = format!(
        "GET /cas/{hash} HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = raw(address, huge.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );

    // After all that, an honest client is served.
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .put(cas(address, &digest))
            .body(data.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .get(cas(address, &digest))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        data
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off_without_holding_up_others() {
    let server = common::start(true).await;
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(500),
        body_idle_timeout: Duration::from_millis(500),
    };
    let address = http(&server, AccessPolicy::new(Access::Write), limits).await;
    let data = b"slowly".to_vec();
    let digest = sha256(&data);

    // One client sends half a head, another half a body; neither sends more.
    let mut slow_head = TcpStream::connect(address).await.unwrap();
    slow_head.write_all(b"GET /cas/").await.unwrap();
    let mut slow_body = TcpStream::connect(address).await.unwrap();
    slow_body
        .write_all(
            format!(
                "PUT /cas/{} HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n\r\nslo",
                digest.hash_hex()
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Meanwhile others are served.
    let client = reqwest::Client::new();
    let other = sha256(b"other");
    assert_eq!(
        client
            .put(cas(address, &other))
            .body("other")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Both slow clients are cut off, and nothing of theirs is stored.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow_body.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the slow upload was not cut off");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow_head.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the slow head was not cut off");
    assert!(!stored(&server, &digest).await);
}

/// One request over TLS to `address` (as `localhost`, verified against `ca`), with the client
/// certificate `identity` if given; the response's status, or 0 when the handshake failed.
async fn tls_status(
    address: SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
    request: String,
) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(address).await.unwrap();
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return 0;
    };
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn tls_with_client_certificates_gives_their_rights_over_http() {
    let server = common::start(false).await;
    let pki = common::pki();
    let tls = TlsOptions {
        certificate: pki.server.0.clone().into_bytes(),
        key: pki.server.1.clone().into_bytes(),
        client_ca: Some(pki.ca.clone().into_bytes()),
        require_client_certificate: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let http = HttpCacheServer::new(
        server.namespaces.clone(),
        AccessPolicy::new(Access::Read),
        Some(&tls),
        server.metrics.clone(),
        HttpLimits::default(),
    )
    .unwrap();
    tokio::spawn(http.serve(listener, std::future::pending()));
    let digest = sha256(b"sent over TLS");
    let put = format!(
        "PUT /cas/{} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 13\r\nconnection: close\r\n\r\nsent over TLS",
        digest.hash_hex()
    );
    let get = format!(
        "GET /cas/{} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        digest.hash_hex()
    );
    let statuses = [
        tls_status(address, &pki.ca, None, put.clone()).await,
        tls_status(address, &pki.ca, Some(&pki.client), put).await,
        tls_status(address, &pki.ca, None, get.clone()).await,
    ];
    // Anonymous callers read; a verified client certificate writes.
    assert_eq!(statuses, [401, 200, 200], "PUT, certified PUT, GET");
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(!raw(address, get.as_bytes()).await.starts_with("HTTP/1.1 200"));
    assert!(stored(&server, &digest).await);
}
