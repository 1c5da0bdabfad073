//! `compressed-blobs/zstd/` over a real server: offsets, early return, limits and
//! verification, as the REAPI spec and the pitfalls notes describe them.
#![allow(clippy::unwrap_used)]

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{self as bs, byte_stream_client::ByteStreamClient};
use casket_model::{Digest, DigestFunction};
use casket_remote::compression::{ZstdDecoder, ZstdEncoder};
use casket_store::BlobStoreExt;
use common::start;
use reapi::capabilities_client::CapabilitiesClient;
use tonic::Code;
use tonic::transport::Channel;

fn zstd(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZstdEncoder::new(3).unwrap();
    let mut out = encoder.compress(data).unwrap().to_vec();
    out.extend_from_slice(&encoder.finish().unwrap());
    out
}

fn unzstd(data: &[u8], limit: u64) -> Vec<u8> {
    let mut decoder = ZstdDecoder::new(limit).unwrap();
    decoder.feed(data.to_vec().into());
    let mut out = Vec::new();
    while let Some(piece) = decoder.next_piece().unwrap() {
        out.extend_from_slice(&piece);
    }
    decoder.finish().unwrap();
    out
}

/// Writes `compressed` as `digest` in messages of `chunk` bytes, with the spec's offsets.
async fn write(
    channel: &Channel,
    digest: &Digest,
    compressed: &[u8],
    chunk: usize,
) -> Result<i64, tonic::Status> {
    let name = format!("inst/uploads/5e1f/compressed-blobs/zstd/{digest}");
    let mut offset = 0;
    let requests: Vec<bs::WriteRequest> = compressed
        .chunks(chunk)
        .map(|piece| {
            let request = bs::WriteRequest {
                resource_name: if offset == 0 { name.clone() } else { String::new() },
                write_offset: offset as i64,
                finish_write: offset + piece.len() == compressed.len(),
                data: piece.to_vec(),
            };
            offset += piece.len();
            request
        })
        .collect();
    ByteStreamClient::new(channel.clone())
        .write(futures::stream::iter(requests))
        .await
        .map(|r| r.into_inner().committed_size)
}

async fn read(channel: &Channel, name: String, offset: i64, limit: i64) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = ByteStreamClient::new(channel.clone())
        .read(bs::ReadRequest {
            resource_name: name,
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend_from_slice(&message.data);
    }
    Ok(out)
}

#[tokio::test]
async fn zstd_is_advertised_and_round_trips_with_uncompressed_offsets() {
    let server = start(true).await;
    let caps = CapabilitiesClient::new(server.channel.clone())
        .get_capabilities(reapi::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(
        cache.supported_compressors,
        vec![reapi::compressor::Value::Zstd as i32]
    );

    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i / 7 % 251) as u8).collect();
    let digest = Digest::of(DigestFunction::Sha256, &data);
    let compressed = zstd(&data);
    assert!(compressed.len() < data.len() / 4);
    // Completion reports the compressed bytes received.
    let committed = write(&server.channel, &digest, &compressed, 64 << 10)
        .await
        .unwrap();
    assert_eq!(committed, compressed.len() as i64);
    assert_eq!(server.store.get_bytes(&digest).await.unwrap().unwrap(), data);

    // Uploading it again ends at once with -1, the spec's answer for compressed uploads.
    assert_eq!(
        write(&server.channel, &digest, &compressed, 64 << 10)
            .await
            .unwrap(),
        -1
    );

    // read_offset counts uncompressed bytes: the stream decompresses to the tail.
    let name = format!("inst/compressed-blobs/zstd/{digest}");
    let tail = read(&server.channel, name.clone(), 1_000_000, 0).await.unwrap();
    assert_eq!(unzstd(&tail, data.len() as u64), &data[1_000_000..]);
    let whole = read(&server.channel, name.clone(), 0, 0).await.unwrap();
    assert_eq!(unzstd(&whole, data.len() as u64), data);
    // A read_limit is meaningless for compressed data.
    let refused = read(&server.channel, name, 0, 10).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn the_empty_blob_reads_as_a_valid_empty_frame() {
    let server = start(false).await;
    let empty = DigestFunction::Sha256.empty_digest();
    let frame = read(&server.channel, format!("compressed-blobs/zstd/{empty}"), 0, 0)
        .await
        .unwrap();
    assert!(!frame.is_empty());
    assert!(unzstd(&frame, 0).is_empty());
}

#[tokio::test]
async fn bombs_lies_and_garbage_are_refused_and_nothing_is_stored() {
    let server = start(true).await;
    // Declares 1000 bytes but decompresses to 10 MB.
    let bomb = zstd(&vec![0u8; 10_000_000]);
    let lying = Digest::parse(DigestFunction::Sha256, &format!("{}/1000", "ab".repeat(32))).unwrap();
    let err = write(&server.channel, &lying, &bomb, 1 << 20).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // The right size but different content: the hash check refuses it.
    let data = b"the real content".to_vec();
    let other = Digest::of(DigestFunction::Sha256, b"other content!!!");
    let err = write(&server.channel, &other, &zstd(&data), 7).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!server.store.contains(&other).await.unwrap());

    // Not zstd at all.
    let digest = Digest::of(DigestFunction::Sha256, &data);
    let err = write(&server.channel, &digest, b"definitely not a zstd frame", 5)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A truncated frame: every byte arrives but the frame never ends.
    let compressed = zstd(&data);
    let err = write(&server.channel, &digest, &compressed[..compressed.len() - 3], 5)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(!server.store.contains(&digest).await.unwrap());
}

#[tokio::test]
async fn interrupted_compressed_uploads_resume_at_the_compressed_offset() {
    let server = start(true).await;
    let data: Vec<u8> = (0..800_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let digest = Digest::of(DigestFunction::Sha256, &data);
    let compressed = zstd(&data);
    let name = format!("uploads/77/compressed-blobs/zstd/{digest}");
    let mut client = ByteStreamClient::new(server.channel.clone());
    let half = compressed.len() / 2;
    let first = client
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: name.clone(),
            write_offset: 0,
            finish_write: false,
            data: compressed[..half].to_vec(),
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
    let done = client
        .write(futures::stream::iter([bs::WriteRequest {
            resource_name: name,
            write_offset: half as i64,
            finish_write: true,
            data: compressed[half..].to_vec(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.committed_size, compressed.len() as i64);
    assert_eq!(server.store.get_bytes(&digest).await.unwrap().unwrap(), data);
}
