//! What a hostile client tried against the server, over loopback with real tonic clients:
//! output paths that climb out of a checkout, instance names that climb out of anything, and
//! messages over the size limits. Each is refused with the status REAPI asks for, naming the
//! problem, and stores nothing.
#![allow(clippy::unwrap_used)]

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{self as bs, byte_stream_client::ByteStreamClient};
use casket_model::{Digest, DigestFunction};
use casket_remote::server::{MAX_BATCH_BYTES, MAX_MESSAGE_BYTES};
use casket_store::BlobStoreExt;
use reapi::action_cache_client::ActionCacheClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;

mod common;

use common::start;

fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

#[tokio::test]
async fn output_paths_that_escape_are_refused_naming_the_path() {
    let server = start(true).await;
    let mut ac = ActionCacheClient::new(server.channel.clone());
    let digest = Some(sha(b"x").to_proto());
    let file = |path: &str| reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: path.into(),
            digest: digest.clone(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let directory = |path: &str| reapi::ActionResult {
        output_directories: vec![reapi::OutputDirectory {
            path: path.into(),
            tree_digest: digest.clone(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let symlink = |path: &str| reapi::ActionResult {
        output_symlinks: vec![reapi::OutputSymlink {
            path: path.into(),
            target: "t".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let hostile = [
        ("../../etc/passwd", file("../../etc/passwd")),
        ("/abs", file("/abs")),
        ("a//b", file("a//b")),
        ("a\0b", file("a\0b")),
        ("../up", directory("../up")),
        ("./here", symlink("./here")),
    ];
    for (path, result) in hostile {
        let action = sha(path.as_bytes());
        let error = ac
            .update_action_result(reapi::UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(result),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{path:?}: {error:?}");
        assert!(
            error.message().contains(&format!("{path:?}")),
            "{path:?}: {}",
            error.message()
        );
        let get = ac
            .get_action_result(reapi::GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            })
            .await;
        assert_eq!(get.unwrap_err().code(), Code::NotFound, "{path:?} was not stored");
    }
}

#[tokio::test]
async fn instance_names_that_climb_are_refused() {
    let server = start(true).await;
    let mut client = ByteStreamClient::new(server.channel.clone());
    let data = b"blob".to_vec();
    let digest = sha(&data);
    for instance in ["../../etc/passwd", "/abs", "a/../b", "a//b"] {
        let write = client
            .write(futures::stream::iter([bs::WriteRequest {
                resource_name: format!("{instance}/uploads/u/blobs/{digest}"),
                write_offset: 0,
                finish_write: true,
                data: data.clone(),
            }]))
            .await
            .unwrap_err();
        assert_eq!(write.code(), Code::InvalidArgument, "{instance}: {write:?}");
        assert!(write.message().contains("instance name"), "{}", write.message());
        let read = client
            .read(bs::ReadRequest {
                resource_name: format!("{instance}/blobs/{digest}"),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(read.code(), Code::InvalidArgument, "{instance}: {read:?}");
    }
    assert!(!server.store.contains(&digest).await.unwrap());
}

#[tokio::test]
async fn messages_over_the_limits_get_the_statuses_reapi_asks_for() {
    let server = start(true).await;
    let data = vec![7u8; MAX_MESSAGE_BYTES + (1 << 20)];
    let digest = sha(&data);

    // A batch over the message limit is over max_batch_total_size_bytes: INVALID_ARGUMENT.
    let mut cas = ContentAddressableStorageClient::new(server.channel.clone());
    let error = cas
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request {
                digest: Some(digest.to_proto()),
                data: data.clone(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().contains("max_batch_total_size_bytes")
            && error.message().contains(&MAX_BATCH_BYTES.to_string()),
        "{}",
        error.message()
    );

    // Any other message over the limit: RESOURCE_EXHAUSTED naming the limit.
    let mut bytestream = ByteStreamClient::new(server.channel.clone());
    let error = bytestream
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: format!("uploads/u/blobs/{digest}"),
            write_offset: 0,
            finish_write: true,
            data,
        }]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().contains(&MAX_MESSAGE_BYTES.to_string()),
        "{}",
        error.message()
    );
    assert!(!server.store.contains(&digest).await.unwrap());
}
