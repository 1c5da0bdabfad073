//! The server's protocol, driven over loopback by real tonic clients: every REAPI pitfall the
//! notes list that this server already covers.
#![allow(clippy::unwrap_used)]

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{self as bs, byte_stream_client::ByteStreamClient};
use casket_model::{Digest, DigestFunction, Directory, EntryName, FileNode, Node, NodeProperties};
use casket_remote::proto::buildstream::{self as bst, reference_storage_client::ReferenceStorageClient};
use casket_remote::server::MAX_BATCH_BYTES;
use casket_store::BlobStoreExt;
use prost::Message;
use reapi::action_cache_client::ActionCacheClient;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;
use tonic::transport::Channel;

mod common;

use common::{Server, start};

fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

fn cas(server: &Server) -> ContentAddressableStorageClient<Channel> {
    ContentAddressableStorageClient::new(server.channel.clone()).max_decoding_message_size(64 << 20)
}

fn upload(digest: &Digest, data: &[u8]) -> reapi::batch_update_blobs_request::Request {
    reapi::batch_update_blobs_request::Request {
        digest: Some(digest.to_proto()),
        data: data.to_vec(),
        compressor: 0,
    }
}

#[tokio::test]
async fn capabilities_advertise_what_is_enforced() {
    let server = start(false).await;
    let caps = CapabilitiesClient::new(server.channel.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(cache.max_batch_total_size_bytes, MAX_BATCH_BYTES as i64);
    assert!(
        !cache.action_cache_update_capabilities.unwrap().update_enabled,
        "read-only server"
    );
    assert!(
        cache
            .digest_functions
            .contains(&(reapi::digest_function::Value::Sha256 as i32))
    );
    assert_eq!(caps.low_api_version.unwrap().minor, 0, "Bazel 4 speaks 2.0");
}

#[tokio::test]
async fn empty_blob_and_empty_batches() {
    let server = start(true).await;
    let mut client = cas(&server);
    let empty = DigestFunction::Sha256.empty_digest();
    let missing = client
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            blob_digests: vec![empty.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(missing.missing_blob_digests.is_empty());
    let read = client
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![empty.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].status.as_ref().unwrap().code, 0);
    client
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest::default())
        .await
        .unwrap();
    client
        .batch_read_blobs(reapi::BatchReadBlobsRequest::default())
        .await
        .unwrap();
    // An empty root directory is the empty blob: GetTree of it succeeds.
    let mut tree = client
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(empty.to_proto()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tree.message().await.unwrap().unwrap();
    assert_eq!(first.directories, vec![reapi::Directory::default()]);
}

#[tokio::test]
async fn batches_answer_per_blob_and_store_only_verified_blobs() {
    let server = start(true).await;
    let mut client = cas(&server);
    let good = b"good blob";
    let liar = sha(b"something else");
    let wrong_size = Digest::new(DigestFunction::Sha256, *sha(good).hash(), 3).unwrap();
    let response = client
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![
                upload(&sha(good), good),
                upload(&liar, b"not it"),
                upload(&wrong_size, good),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = response
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(
        codes,
        [0, Code::InvalidArgument as i32, Code::InvalidArgument as i32]
    );
    assert!(server.store.contains(&sha(good)).await.unwrap());
    assert!(!server.store.contains(&liar).await.unwrap());
    assert!(
        !server.store.contains(&sha(b"not it")).await.unwrap(),
        "a refused blob is not stored under any name"
    );

    let read = client
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![sha(good).to_proto(), liar.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].data, good);
    assert_eq!(
        read.responses[1].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );

    let too_big = vec![0u8; MAX_BATCH_BYTES as usize + 1];
    let err = client
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![upload(&sha(&too_big), &too_big)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn read_only_servers_refuse_writes_and_store_nothing() {
    let server = start(false).await;
    let data = b"refused";
    let err = cas(&server)
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![upload(&sha(data), data)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let name = format!("uploads/u/blobs/{}", sha(data));
    let err = ByteStreamClient::new(server.channel.clone())
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: name,
            write_offset: 0,
            finish_write: true,
            data: data.to_vec(),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ReferenceStorageClient::new(server.channel.clone())
        .update_reference(bst::UpdateReferenceRequest {
            keys: vec!["p/e/k".into()],
            digest: Some(sha(data).to_proto()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(!server.store.contains(&sha(data)).await.unwrap());
}

#[tokio::test]
async fn bytestream_reads_writes_resumes_and_verifies() {
    let server = start(true).await;
    let mut client = ByteStreamClient::new(server.channel.clone());
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let digest = sha(&data);
    let name = format!("my/instance/uploads/0b1c/blobs/{digest}");

    // The first half, then the stream ends without finish_write: the upload is parked.
    let half = data.len() / 2;
    let first = client
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: name.clone(),
            write_offset: 0,
            finish_write: false,
            data: data[..half].to_vec(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.committed_size, half as i64);
    let status = client
        .query_write_status(bs::QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.committed_size, status.complete), (half as i64, false));

    // Resumed from the committed offset, in 1 MiB messages.
    let rest: Vec<bs::WriteRequest> = data[half..]
        .chunks(1 << 20)
        .scan(half, |offset, chunk| {
            let request = bs::WriteRequest {
                resource_name: String::new(),
                write_offset: *offset as i64,
                finish_write: *offset + chunk.len() == data.len(),
                data: chunk.to_vec(),
            };
            *offset += chunk.len();
            Some(request)
        })
        .collect();
    let mut rest = rest;
    rest[0].resource_name = name.clone();
    let done = client
        .write(futures::stream::iter(rest))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.committed_size, data.len() as i64);
    let status = client
        .query_write_status(bs::QueryWriteStatusRequest { resource_name: name })
        .await
        .unwrap()
        .into_inner();
    assert!(status.complete);

    // Reads with an instance prefix, an offset and a limit.
    let mut stream = client
        .read(bs::ReadRequest {
            resource_name: format!("my/instance/blobs/{digest}"),
            read_offset: 1000,
            read_limit: 5000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        got.extend_from_slice(&message.data);
    }
    assert_eq!(got, &data[1000..6000]);
    let err = client
        .read(bs::ReadRequest {
            resource_name: format!("blobs/{digest}"),
            read_offset: data.len() as i64 + 1,
            read_limit: 0,
        })
        .await;
    let code = match err {
        Err(status) => status.code(),
        Ok(response) => response.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::OutOfRange);

    // A write whose content does not match is refused and nothing is stored.
    let other = b"mismatch";
    let claimed = Digest::new(
        DigestFunction::Sha256,
        *sha(b"claimed").hash(),
        other.len() as u64,
    )
    .unwrap();
    let err = client
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: format!("uploads/x/blobs/{claimed}"),
            write_offset: 0,
            finish_write: true,
            data: other.to_vec(),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!server.store.contains(&claimed).await.unwrap());

    // Writing a blob that exists returns at once with its full size.
    let again = client
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: format!("uploads/y/blobs/{digest}"),
            write_offset: 0,
            finish_write: false,
            data: data[..10].to_vec(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.committed_size, data.len() as i64);
}

#[tokio::test]
async fn get_tree_pages_through_the_whole_tree() {
    let server = start(true).await;
    let file = server
        .store
        .put_bytes(DigestFunction::Sha256, bytes::Bytes::from_static(b"leaf"))
        .await
        .unwrap();
    // A chain of 30 directories, each holding a file and the next directory.
    let mut child: Option<Digest> = None;
    let mut all = Vec::new();
    for level in 0..30 {
        let mut directory = Directory::new();
        directory.insert(
            EntryName::new(format!("f{level}")).unwrap(),
            Node::File(FileNode {
                digest: file,
                executable: false,
                properties: NodeProperties::default(),
            }),
        );
        if let Some(c) = child {
            directory.insert(EntryName::new("next").unwrap(), Node::Directory(c));
        }
        let bytes = bytes::Bytes::from(directory.encode());
        child = Some(
            server
                .store
                .put_bytes(DigestFunction::Sha256, bytes)
                .await
                .unwrap(),
        );
        all.push(child.unwrap());
    }
    let mut client = cas(&server);
    let mut token = String::new();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let mut stream = client
            .get_tree(reapi::GetTreeRequest {
                root_digest: Some(child.unwrap().to_proto()),
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut next = String::new();
        while let Some(response) = stream.message().await.unwrap() {
            seen += response.directories.len();
            next = response.next_page_token;
        }
        pages += 1;
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!((seen, pages), (30, 5));
    let missing = client
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(sha(b"no such root").to_proto()),
            ..Default::default()
        })
        .await;
    let code = match missing {
        Err(status) => status.code(),
        Ok(response) => response.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::NotFound);
}

#[tokio::test]
async fn action_results_are_served_only_when_complete() {
    let server = start(true).await;
    let mut cas_client = cas(&server);
    let mut ac = ActionCacheClient::new(server.channel.clone());
    let output = b"compiled output";
    let inner_file = b"file inside an output directory";
    let tree = reapi::Tree {
        root: Some(reapi::Directory {
            files: vec![reapi::FileNode {
                name: "x".into(),
                digest: Some(sha(inner_file).to_proto()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let tree_bytes = tree.encode_to_vec();
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out.o".into(),
            digest: Some(sha(output).to_proto()),
            ..Default::default()
        }],
        output_directories: vec![reapi::OutputDirectory {
            path: "dir".into(),
            tree_digest: Some(sha(&tree_bytes).to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let action = sha(b"action");
    ac.update_action_result(reapi::UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = reapi::GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        ..Default::default()
    };
    assert_eq!(
        ac.get_action_result(get.clone()).await.unwrap_err().code(),
        Code::NotFound
    );
    cas_client
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![
                upload(&sha(output), output),
                upload(&sha(&tree_bytes), &tree_bytes),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = ac.get_action_result(get.clone()).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "a file inside the output tree is still missing"
    );
    cas_client
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![upload(&sha(inner_file), inner_file)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ac.get_action_result(get).await.unwrap().into_inner(), result);
}

#[tokio::test]
async fn references_round_trip_and_incomplete_trees_are_not_found() {
    let server = start(true).await;
    let mut refs = ReferenceStorageClient::new(server.channel.clone());
    assert!(
        refs.status(bst::StatusRequest::default())
            .await
            .unwrap()
            .into_inner()
            .allow_updates
    );
    let mut directory = Directory::new();
    directory.insert(
        EntryName::new("f").unwrap(),
        Node::File(FileNode {
            digest: sha(b"not uploaded yet"),
            executable: false,
            properties: NodeProperties::default(),
        }),
    );
    let root = server
        .store
        .put_bytes(DigestFunction::Sha256, bytes::Bytes::from(directory.encode()))
        .await
        .unwrap();
    refs.update_reference(bst::UpdateReferenceRequest {
        keys: vec!["project/element/key".into()],
        digest: Some(root.to_proto()),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = bst::GetReferenceRequest {
        key: "project/element/key".into(),
        ..Default::default()
    };
    assert_eq!(
        refs.get_reference(get.clone()).await.unwrap_err().code(),
        Code::NotFound
    );
    server
        .store
        .put_bytes(
            DigestFunction::Sha256,
            bytes::Bytes::from_static(b"not uploaded yet"),
        )
        .await
        .unwrap();
    let got = refs.get_reference(get).await.unwrap().into_inner();
    assert_eq!(got.digest, Some(root.to_proto()));
    let bad = refs
        .get_reference(bst::GetReferenceRequest {
            key: "../escape".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn remote_asset_probes_pushes_and_fetches() {
    use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
    let server = start(true).await;
    let mut fetch = asset::fetch_client::FetchClient::new(server.channel.clone());
    let mut push = asset::push_client::PushClient::new(server.channel.clone());

    // Start-up probes of BuildStream and buildbox-casd: empty requests are INVALID_ARGUMENT.
    let probe = fetch
        .fetch_blob(asset::FetchBlobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(probe.code(), Code::InvalidArgument);
    let probe = push
        .push_directory(asset::PushDirectoryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(probe.code(), Code::InvalidArgument);

    let uri = "urn:fdc:buildstream.build:2020:artifact:p/e/key";
    let qualifier = |name: &str, value: &str| asset::Qualifier {
        name: name.into(),
        value: value.into(),
    };
    let artifact = b"artifact proto";
    let pushed = asset::PushBlobRequest {
        uris: vec![uri.into()],
        qualifiers: vec![qualifier("a", "1"), qualifier("b", "2")],
        blob_digest: Some(sha(artifact).to_proto()),
        ..Default::default()
    };
    // Content must be uploaded first.
    let early = push.push_blob(pushed.clone()).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);
    server
        .store
        .put_bytes(DigestFunction::Sha256, bytes::Bytes::from_static(artifact))
        .await
        .unwrap();
    push.push_blob(pushed).await.unwrap();

    let hit = fetch
        .fetch_blob(asset::FetchBlobRequest {
            uris: vec!["urn:other".into(), uri.into()],
            // Qualifier order does not matter.
            qualifiers: vec![qualifier("b", "2"), qualifier("a", "1")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (hit.uri.as_str(), hit.blob_digest),
        (uri, Some(sha(artifact).to_proto()))
    );
    let other_qualifiers = fetch
        .fetch_blob(asset::FetchBlobRequest {
            uris: vec![uri.into()],
            qualifiers: vec![qualifier("a", "1")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other_qualifiers.code(), Code::NotFound);

    // A directory asset whose tree lost a file is a miss, not a broken hit.
    let mut directory = Directory::new();
    directory.insert(
        EntryName::new("f").unwrap(),
        Node::File(FileNode {
            digest: sha(b"source file"),
            executable: false,
            properties: NodeProperties::default(),
        }),
    );
    let file = server
        .store
        .put_bytes(DigestFunction::Sha256, bytes::Bytes::from_static(b"source file"))
        .await
        .unwrap();
    let root = server
        .store
        .put_bytes(DigestFunction::Sha256, bytes::Bytes::from(directory.encode()))
        .await
        .unwrap();
    push.push_directory(asset::PushDirectoryRequest {
        uris: vec!["urn:source".into()],
        root_directory_digest: Some(root.to_proto()),
        ..Default::default()
    })
    .await
    .unwrap();
    let request = asset::FetchDirectoryRequest {
        uris: vec!["urn:source".into()],
        ..Default::default()
    };
    let hit = fetch.fetch_directory(request.clone()).await.unwrap().into_inner();
    assert_eq!(hit.root_directory_digest, Some(root.to_proto()));
    casket_store::BlobStore::delete(&server.store, &file)
        .await
        .unwrap();
    assert_eq!(
        fetch.fetch_directory(request).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn find_missing_blobs_answers_per_digest_function_and_refuses_bad_digests() {
    let server = start(true).await;
    let mut client = cas(&server);
    let stored = sha(b"stored");
    let absent = sha(b"absent");
    let blake3 = Digest::of(DigestFunction::Blake3, b"stored");
    for (digest, function) in [
        (&stored, 0),
        (&blake3, reapi::digest_function::Value::Blake3 as i32),
    ] {
        let response = client
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                requests: vec![upload(digest, b"stored")],
                digest_function: function,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.responses[0].status.as_ref().map(|s| s.code), Some(0));
    }
    let find = |digests: Vec<reapi::Digest>, digest_function: i32| reapi::FindMissingBlobsRequest {
        blob_digests: digests,
        digest_function,
        ..Default::default()
    };
    // A size that differs from the stored blob's is missing too; the answer keeps the order asked.
    let wrong_size = reapi::Digest {
        size_bytes: 7,
        ..stored.to_proto()
    };
    let missing = client
        .find_missing_blobs(find(
            vec![absent.to_proto(), stored.to_proto(), wrong_size.clone()],
            0,
        ))
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![absent.to_proto(), wrong_size]);
    // The BLAKE3 blob is found only by its own function.
    let blake3_function = reapi::digest_function::Value::Blake3 as i32;
    let missing = client
        .find_missing_blobs(find(vec![blake3.to_proto()], blake3_function))
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(missing.is_empty());
    let missing = client
        .find_missing_blobs(find(vec![blake3.to_proto()], 0))
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![blake3.to_proto()]);
    // Upper-case hex, a short hash, a negative size and an unknown function are refused by name.
    let upper = reapi::Digest {
        hash: stored.hash_hex().to_uppercase(),
        size_bytes: 6,
    };
    let short = reapi::Digest {
        hash: "ab".to_owned(),
        size_bytes: 6,
    };
    let negative = reapi::Digest {
        size_bytes: -1,
        ..stored.to_proto()
    };
    for (bad, named) in [
        (upper.clone(), upper.hash.clone()),
        (short, "ab".to_owned()),
        (negative, "-1".to_owned()),
    ] {
        let status = client
            .find_missing_blobs(find(vec![stored.to_proto(), bad], 0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(&named), "{status:?}");
    }
    let status = client
        .find_missing_blobs(find(vec![stored.to_proto()], 99))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
