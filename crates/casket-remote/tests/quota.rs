//! The server's quota, namespaces and metrics over a real server: eviction keeps usage under
//! the quota, RESOURCE_EXHAUSTED when nothing can go, reads survive eviction, and every
//! request is counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{self as bs, byte_stream_client::ByteStreamClient};
use casket_cache::{Namespace, Namespaces, QuotaOptions};
use casket_model::{Digest, DigestFunction};
use casket_remote::server::{Access, AccessPolicy, Metrics, ServerOptions};
use casket_store::{BlobStoreExt, DiskOptions, DiskStore};
use common::{Server, start_on, start_with};
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;

fn writable() -> ServerOptions {
    ServerOptions {
        access: AccessPolicy::new(Access::Write),
        tls: None,
        ..ServerOptions::default()
    }
}

fn quota(limit: u64, grace: Duration) -> Option<QuotaOptions> {
    Some(QuotaOptions {
        limit: Some(limit),
        grace,
        ..QuotaOptions::default()
    })
}

fn blob(seed: u32, len: usize) -> (Digest, Vec<u8>) {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(seed) >> 3) as u8 ^ seed as u8)
        .collect();
    (Digest::of(DigestFunction::Sha256, &data), data)
}

/// BatchUpdateBlobs of one blob; its per-blob status code.
async fn batch_put(server: &Server, instance: &str, digest: &Digest, data: &[u8]) -> i32 {
    let response = ContentAddressableStorageClient::new(server.channel.clone())
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            instance_name: instance.to_owned(),
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data: data.to_vec(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    response.responses[0].status.as_ref().unwrap().code
}

async fn stream_put(server: &Server, digest: &Digest, data: &[u8]) -> Result<i64, tonic::Status> {
    ByteStreamClient::new(server.channel.clone())
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: format!("uploads/1/blobs/{digest}"),
            write_offset: 0,
            finish_write: true,
            data: data.to_vec(),
        }]))
        .await
        .map(|r| r.into_inner().committed_size)
}

fn stored_bytes(server: &Server) -> u64 {
    server.store.scan_objects().unwrap().usage().stored_bytes
}

#[tokio::test]
async fn eviction_keeps_usage_within_the_quota() {
    let limit = 512 << 10;
    let server = start_with(writable(), quota(limit, Duration::ZERO)).await;
    let mut last = None;
    for seed in 1..=24 {
        let (digest, data) = blob(seed, 64 << 10);
        assert_eq!(batch_put(&server, "", &digest, &data).await, 0);
        assert!(stored_bytes(&server) <= limit);
        last = Some(digest);
    }
    assert!(server.store.contains(&last.unwrap()).await.unwrap());
    let metrics = server.metrics.encode();
    assert!(metrics.contains("casket_evicted_blobs_total"), "{metrics}");
    assert!(!metrics.contains("casket_evicted_blobs_total 0\n"), "{metrics}");
}

#[tokio::test]
async fn a_full_store_of_recent_blobs_refuses_writes_and_stores_nothing() {
    let limit = 256 << 10;
    let server = start_with(writable(), quota(limit, Duration::from_secs(3600))).await;
    let caps = CapabilitiesClient::new(server.channel.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.cache_capabilities.unwrap().max_cas_blob_size_bytes,
        limit as i64
    );
    for seed in 1..=3 {
        let (digest, data) = blob(seed, 80 << 10);
        assert_eq!(batch_put(&server, "", &digest, &data).await, 0);
    }
    // Blobs already stored need no room: sending one again succeeds.
    let (again, data) = blob(1, 80 << 10);
    assert_eq!(batch_put(&server, "", &again, &data).await, 0);
    let (digest, data) = blob(99, 128 << 10);
    assert_eq!(
        batch_put(&server, "", &digest, &data).await,
        Code::ResourceExhausted as i32
    );
    let err = stream_put(&server, &digest, &data).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(!server.store.contains(&digest).await.unwrap());
    // Larger than the whole quota: over max_cas_blob_size_bytes.
    let (huge, data) = blob(7, 300 << 10);
    assert_eq!(
        stream_put(&server, &huge, &data).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(stored_bytes(&server) <= limit);
}

#[tokio::test]
async fn a_blob_being_read_survives_its_eviction() {
    let server = start_with(writable(), quota(5 << 20, Duration::ZERO)).await;
    let (first, data) = blob(3, 3 << 20);
    assert_eq!(
        stream_put(&server, &first, &data).await.unwrap(),
        data.len() as i64
    );
    let mut reading = ByteStreamClient::new(server.channel.clone())
        .read(bs::ReadRequest {
            resource_name: format!("blobs/{first}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = reading.message().await.unwrap().unwrap().data;
    // Two more large blobs need the first one's room.
    for seed in [4, 5] {
        let (digest, more) = blob(seed, 2 << 20);
        stream_put(&server, &digest, &more).await.unwrap();
    }
    assert!(
        !server.store.contains(&first).await.unwrap(),
        "the first blob was not evicted"
    );
    while let Some(message) = reading.message().await.unwrap() {
        received.extend_from_slice(&message.data);
    }
    assert!(received == data, "the read was cut short or corrupted");
}

#[tokio::test]
async fn instance_names_map_to_their_own_stores() {
    let dir = tempfile::tempdir().unwrap();
    let default = DiskStore::open(dir.path().join("default"), DiskOptions::default()).unwrap();
    let release = DiskStore::open(dir.path().join("release"), DiskOptions::default()).unwrap();
    let namespaces = Namespaces::new(Namespace::on_disk(&default));
    namespaces.insert("release", Namespace::on_disk(&release));
    let server = start_on(
        dir,
        default.clone(),
        namespaces,
        writable(),
        Arc::new(Metrics::new()),
    )
    .await;

    let (digest, data) = blob(11, 1000);
    assert_eq!(batch_put(&server, "release", &digest, &data).await, 0);
    assert!(release.contains(&digest).await.unwrap());
    assert!(!default.contains(&digest).await.unwrap());
    // Any other instance name is the default namespace.
    let (other, data) = blob(12, 1000);
    assert_eq!(batch_put(&server, "some/team", &other, &data).await, 0);
    assert!(default.contains(&other).await.unwrap());
    let missing = ContentAddressableStorageClient::new(server.channel.clone())
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            instance_name: "release".into(),
            blob_digests: vec![digest.to_proto(), other.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.missing_blob_digests, vec![other.to_proto()]);

    let metrics = server.metrics.encode();
    for line in [
        "casket_requests_total{method=\"ContentAddressableStorage/BatchUpdateBlobs\",code=\"Ok\"} 2",
        "casket_hits_total{kind=\"Blob\"} 1",
        "casket_misses_total{kind=\"Blob\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// Sends the first `len` bytes of an upload of `data` under `upload`, then ends the stream
/// without finishing: the server parks the upload.
async fn interrupted_put(server: &Server, upload: &str, digest: &Digest, data: &[u8], len: usize) {
    let response = ByteStreamClient::new(server.channel.clone())
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: format!("uploads/{upload}/blobs/{digest}"),
            write_offset: 0,
            finish_write: false,
            data: data[..len].to_vec(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, len as i64);
}

#[tokio::test]
async fn an_abandoned_upload_frees_its_room_and_a_resumed_one_completes() {
    let limit = 256 << 10;
    let options = ServerOptions {
        upload_lifetime: Duration::from_secs(1),
        ..writable()
    };
    let server = start_with(options, quota(limit, Duration::from_secs(3600))).await;
    // An upload holding 160 KiB of the 256 KiB quota is abandoned halfway.
    let (abandoned, data) = blob(5, 160 << 10);
    interrupted_put(&server, "a", &abandoned, &data, 80 << 10).await;
    let (other, other_data) = blob(6, 160 << 10);
    let refused = stream_put(&server, &other, &other_data).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "the room is held: {refused:?}"
    );

    // A resumption within the lifetime still works.
    let (resumed, resumed_data) = blob(7, 64 << 10);
    interrupted_put(&server, "r", &resumed, &resumed_data, 32 << 10).await;
    let done = ByteStreamClient::new(server.channel.clone())
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: format!("uploads/r/blobs/{resumed}"),
            write_offset: 32 << 10,
            finish_write: true,
            data: resumed_data[32 << 10..].to_vec(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.committed_size, resumed_data.len() as i64);

    // Past the lifetime, the abandoned upload is gone and its room with it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = ByteStreamClient::new(server.channel.clone())
        .query_write_status(bs::QueryWriteStatusRequest {
            resource_name: format!("uploads/a/blobs/{abandoned}"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        stream_put(&server, &other, &other_data).await.unwrap(),
        other_data.len() as i64
    );
    assert!(!server.store.contains(&abandoned).await.unwrap());
}
