//! Who may write, over a real server: tokens, TLS and client certificates. A refused write is
//! PERMISSION_DENIED (or UNAUTHENTICATED for bad credentials) and stores nothing.
#![allow(clippy::unwrap_used)]

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use casket_model::{Digest, DigestFunction};
use casket_remote::server::{Access, AccessPolicy, ServerOptions, TlsOptions};
use casket_store::BlobStoreExt;
use common::{Pki, pki};
use common::{Server, start_with};
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const DATA: &[u8] = b"written with rights";

fn digest() -> Digest {
    Digest::of(DigestFunction::Sha256, DATA)
}

/// Uploads [`DATA`] with an optional bearer token; the batch-level result.
async fn upload(channel: Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(reapi::BatchUpdateBlobsRequest {
        requests: vec![reapi::batch_update_blobs_request::Request {
            digest: Some(digest().to_proto()),
            data: DATA.to_vec(),
            compressor: 0,
        }],
        ..Default::default()
    });
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    let response = ContentAddressableStorageClient::new(channel)
        .batch_update_blobs(request)
        .await?
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    Ok(())
}

async fn may_update_action_cache(channel: Channel, token: Option<&str>) -> bool {
    let mut request = tonic::Request::new(reapi::GetCapabilitiesRequest::default());
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    CapabilitiesClient::new(channel)
        .get_capabilities(request)
        .await
        .unwrap()
        .into_inner()
        .cache_capabilities
        .unwrap()
        .action_cache_update_capabilities
        .unwrap()
        .update_enabled
}

async fn stored(server: &Server) -> bool {
    server.store.contains(&digest()).await.unwrap()
}

#[tokio::test]
async fn tokens_grant_writes_and_everything_else_is_refused() {
    let mut access = AccessPolicy::new(Access::Read);
    access.add_token("ci-secret", Access::Write);
    access.add_token("dev-secret", Access::Read);
    let options = ServerOptions {
        access,
        tls: None,
        ..ServerOptions::default()
    };
    let server = start_with(options, None).await;
    let channel = || server.channel.clone();

    for (token, code) in [
        (None, Code::PermissionDenied),
        (Some("dev-secret"), Code::PermissionDenied),
        (Some("guess"), Code::Unauthenticated),
    ] {
        assert_eq!(
            upload(channel(), token).await.unwrap_err().code(),
            code,
            "{token:?}"
        );
        assert!(!stored(&server).await);
    }
    assert!(!may_update_action_cache(channel(), None).await);
    assert!(!may_update_action_cache(channel(), Some("dev-secret")).await);
    assert!(may_update_action_cache(channel(), Some("ci-secret")).await);
    upload(channel(), Some("ci-secret")).await.unwrap();
    assert!(stored(&server).await);
}

#[tokio::test]
async fn without_anonymous_access_even_reads_need_credentials() {
    let mut access = AccessPolicy::new(Access::None);
    access.add_token("reader", Access::Read);
    let options = ServerOptions {
        access,
        tls: None,
        ..ServerOptions::default()
    };
    let server = start_with(options, None).await;
    let err = CapabilitiesClient::new(server.channel.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!may_update_action_cache(server.channel.clone(), Some("reader")).await);
}

/// A CA, a server certificate for `localhost` and a client certificate, all PEM.
async fn tls_server(pki: &Pki, require_client_certificate: bool) -> Server {
    let options = ServerOptions {
        access: AccessPolicy::new(Access::Read),
        tls: Some(TlsOptions {
            certificate: pki.server.0.clone().into_bytes(),
            key: pki.server.1.clone().into_bytes(),
            client_ca: Some(pki.ca.clone().into_bytes()),
            require_client_certificate,
        }),
        ..ServerOptions::default()
    };
    start_with(options, None).await
}

async fn tls_channel(
    server: &Server,
    pki: &Pki,
    with_certificate: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_certificate {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://localhost:{}", server.address.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn a_verified_client_certificate_may_write_and_others_only_read() {
    let pki = pki();
    let server = tls_server(&pki, false).await;
    let anonymous = tls_channel(&server, &pki, false).await.unwrap();
    assert!(!may_update_action_cache(anonymous.clone(), None).await);
    assert_eq!(
        upload(anonymous, None).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert!(!stored(&server).await);
    let certified = tls_channel(&server, &pki, true).await.unwrap();
    assert!(may_update_action_cache(certified.clone(), None).await);
    upload(certified, None).await.unwrap();
    assert!(stored(&server).await);
    // Plain HTTP/2 to a TLS port gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(upload(channel, None).await.is_err());
    }
}

#[tokio::test]
async fn a_required_client_certificate_keeps_everyone_else_out() {
    let pki = pki();
    let server = tls_server(&pki, true).await;
    let refused = match tls_channel(&server, &pki, false).await {
        Ok(channel) => CapabilitiesClient::new(channel)
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(refused);
    let certified = tls_channel(&server, &pki, true).await.unwrap();
    upload(certified, None).await.unwrap();
}
