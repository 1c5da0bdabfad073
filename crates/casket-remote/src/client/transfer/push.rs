//! Push: what the server lacks of a tree, in batches and resumable streams.

use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, WriteRequest, byte_stream_client};
use bytes::Bytes;
use casket_model::Digest;
use casket_store::{BlobStore, ReadRange, StoreError};
use casket_tree::{Progress, Tree};
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::Status;

use super::{TransferError, TransferReport, batched_and_streamed, failed};
use crate::client::backoff::Backoff;
use crate::client::store::{WRITE_CHUNK, upload_id};
use crate::client::{RemoteCas, retryable};
use crate::compression::compress_stream;
use crate::resource_name::write_name;
use crate::server::MAX_MESSAGE_BYTES;

/// Uploads every blob of the tree under `root` (which `local` must hold completely) that the
/// server does not have.
pub async fn push_tree(
    local: Arc<dyn BlobStore>,
    remote: &RemoteCas,
    root: &Digest,
    progress: &dyn Progress,
) -> Result<TransferReport, TransferError> {
    let start = Instant::now();
    let tree = Tree::load(local.as_ref(), root, remote.options.concurrency).await?;
    let digests: Vec<Digest> = tree.digests().into_iter().collect();
    let mut report = push_blobs(local, remote, &digests, progress).await?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Uploads those of `digests` the server does not have, from `local`.
pub async fn push_blobs(
    local: Arc<dyn BlobStore>,
    remote: &RemoteCas,
    digests: &[Digest],
    progress: &dyn Progress,
) -> Result<TransferReport, TransferError> {
    let start = Instant::now();
    let missing = remote
        .missing(digests)
        .await
        .map_err(failed("FindMissingBlobs"))?;
    let mut report = TransferReport {
        blobs: digests.len() as u64,
        present: (digests.len() - missing.len()) as u64,
        transferred_blobs: missing.len() as u64,
        transferred_bytes: missing.iter().map(Digest::size).sum(),
        seconds: 0.0,
    };
    progress.start(report.transferred_blobs, report.transferred_bytes);
    batched_and_streamed(
        remote,
        missing,
        true, // Every REAPI server takes BatchUpdateBlobs.
        // Each upload owns its handles on both stores, so that the whole future is `Send` (a
        // tonic handler can await it).
        {
            let local = local.clone();
            move |batch| upload_batch(local.clone(), remote.clone(), batch, progress)
        },
        move |digest| upload_stream(local.clone(), remote.clone(), digest, progress),
    )
    .await?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads `batch` locally and sends it in one BatchUpdateBlobs.
async fn upload_batch(
    local: Arc<dyn BlobStore>,
    remote: RemoteCas,
    batch: Vec<Digest>,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let (count, bytes) = (batch.len() as u64, batch.iter().map(Digest::size).sum());
    let function = batch[0].function();
    let contents = local.get_many(&batch).await?;
    let blobs: Vec<(Digest, Bytes)> = batch
        .into_iter()
        .zip(contents)
        .map(|(digest, data)| {
            data.map(|data| (digest, data))
                .ok_or(StoreError::NotFound(digest))
        })
        .collect::<Result<_, _>>()?;
    for (digest, answer) in remote
        .batch_update(function, blobs)
        .await
        .map_err(failed("BatchUpdateBlobs"))?
    {
        answer.map_err(|status| TransferError::Remote {
            operation: "BatchUpdateBlobs",
            status: Status::new(status.code(), format!("{digest}: {}", status.message())),
        })?;
    }
    progress.advance(count, bytes);
    Ok(())
}

/// Streams one large blob from `local` with ByteStream Write (in zstd when the server offers
/// it and the client asked for it). After a failure it asks QueryWriteStatus how much the
/// server kept and continues from there; a compressed upload starts again.
async fn upload_stream(
    local: Arc<dyn BlobStore>,
    remote: RemoteCas,
    digest: Digest,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let zstd = remote.zstd();
    let mut name = write_name(&remote.instance, &upload_id(), &digest, zstd);
    let mut offset = 0u64;
    let mut attempts = 0;
    let mut backoff = Backoff::default();
    loop {
        if offset >= digest.size()
            && remote
                .missing(&[digest])
                .await
                .map_err(failed("FindMissingBlobs"))?
                .is_empty()
        {
            progress.advance(1, digest.size());
            return Ok(());
        }
        let chunks = local
            .read(&digest, ReadRange { offset, limit: None })
            .await?
            .ok_or(StoreError::NotFound(digest))?;
        let requests = match zstd {
            Some(_) => compressed_write_requests(name.clone(), chunks),
            None => write_requests(name.clone(), offset, digest.size(), chunks),
        };
        let slot = remote.in_flight.acquire(digest.size() - offset).await;
        remote.stats.rpc("ByteStream.Write");
        let answer = byte_stream_client::ByteStreamClient::new(remote.transport.clone())
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .write(requests)
            .await;
        if answer.as_ref().is_err_and(retryable) {
            slot.overloaded();
        } else {
            drop(slot);
        }
        match answer {
            Ok(response) => {
                let committed = response.into_inner().committed_size;
                // A compressed upload reports compressed bytes, or -1 if the blob was there.
                let complete = match zstd {
                    Some(_) => committed == -1 || committed > 0,
                    None => committed == digest.size() as i64,
                };
                if !complete {
                    return Err(failed("ByteStream.Write")(Status::data_loss(format!(
                        "the server committed {committed} of {} bytes of {digest}",
                        digest.size()
                    ))));
                }
                progress.advance(1, digest.size());
                return Ok(());
            }
            Err(status) if retryable(&status) && attempts < remote.options.retries => {
                attempts += 1;
                remote.stats.retry();
                backoff.wait().await;
                if zstd.is_some() {
                    name = write_name(&remote.instance, &upload_id(), &digest, zstd);
                } else {
                    offset = resume_offset(&remote, &name).await;
                }
                tracing::debug!(%digest, offset, "resuming upload");
            }
            Err(status) => return Err(failed("ByteStream.Write")(status)),
        }
    }
}

/// The WriteRequests of a whole blob in zstd: one compressed message per local chunk (offsets
/// count compressed bytes, as the spec says), then the end of the frame, finishing the write.
fn compressed_write_requests(name: String, chunks: casket_store::BlobStream) -> SyncStream {
    // `unfold` over owned state rather than `scan`: a stream of closures taking `&mut` state
    // is not provably `Send`, and this one is awaited in tonic handlers.
    let pieces = compress_stream(chunks).boxed();
    futures::stream::unfold(
        (pieces, 0u64, Some(name)),
        |(mut pieces, sent, mut name)| async move {
            // A read error ends the stream early; the server then never sees finish_write.
            let piece = match pieces.next().await? {
                Ok(piece) => piece,
                Err(e) => {
                    tracing::warn!(error = %e, "compressing an upload failed");
                    return None;
                }
            };
            let request = WriteRequest {
                resource_name: name.take().unwrap_or_default(),
                write_offset: sent as i64,
                finish_write: piece.last,
                data: piece.data.to_vec(),
            };
            let sent = sent + piece.data.len() as u64;
            Some((request, (pieces, sent, name)))
        },
    )
    .boxed()
    .into()
}

/// A stream of requests that is `Sync` as well as `Send`, so that a future awaiting a tonic
/// call with it (which holds a reference to it) is `Send`: tonic handlers can push. A boxed
/// stream is not `Sync`; the mutex makes it so at no cost, since polling goes through
/// `&mut self` and never locks.
pub(crate) struct SyncStream(std::sync::Mutex<BoxStream<'static, WriteRequest>>);

impl From<BoxStream<'static, WriteRequest>> for SyncStream {
    fn from(stream: BoxStream<'static, WriteRequest>) -> Self {
        SyncStream(std::sync::Mutex::new(stream))
    }
}

impl futures::Stream for SyncStream {
    type Item = WriteRequest;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WriteRequest>> {
        let stream = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stream.poll_next_unpin(cx)
    }
}

/// Where an interrupted upload continues: what the server committed, or 0 if it cannot say.
async fn resume_offset(remote: &RemoteCas, name: &str) -> u64 {
    let request = QueryWriteStatusRequest {
        resource_name: name.to_owned(),
    };
    let answer = remote
        .call("QueryWriteStatus", |t| {
            let request = request.clone();
            async move {
                byte_stream_client::ByteStreamClient::new(t)
                    .query_write_status(request)
                    .await
            }
        })
        .await;
    match answer {
        Ok(status) => u64::try_from(status.into_inner().committed_size).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The WriteRequests for the rest of a blob from `offset`: 1 MiB messages, the last one
/// finishing the write.
fn write_requests(name: String, offset: u64, size: u64, chunks: casket_store::BlobStream) -> SyncStream {
    struct Rest {
        chunks: casket_store::BlobStream,
        pending: Bytes,
        at: u64,
        name: Option<String>,
    }
    let rest = Rest {
        chunks,
        pending: Bytes::new(),
        at: offset,
        name: Some(name),
    };
    // `unfold` over owned state, for the reason given in `compressed_write_requests`.
    futures::stream::unfold(rest, move |mut rest| async move {
        while rest.pending.is_empty() {
            match rest.chunks.next().await? {
                Ok(chunk) => rest.pending = chunk,
                // A local read error ends the stream early; the server then holds less than
                // the whole blob and the upload fails with the committed size.
                Err(e) => {
                    tracing::warn!(error = %e, "local read failed during an upload");
                    return None;
                }
            }
        }
        let piece = rest.pending.split_to(WRITE_CHUNK.min(rest.pending.len()));
        let request = WriteRequest {
            resource_name: rest.name.take().unwrap_or_default(),
            write_offset: rest.at as i64,
            finish_write: rest.at + piece.len() as u64 == size,
            data: piece.to_vec(),
        };
        rest.at += piece.len() as u64;
        Some((request, rest))
    })
    .boxed()
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_requests_number_offsets_and_finish_once() {
        let data = Bytes::from(vec![7u8; 2 * WRITE_CHUNK + 5]);
        let chunks = futures::stream::iter([
            Ok(data.slice(..WRITE_CHUNK + 3)),
            Ok(data.slice(WRITE_CHUNK + 3..)),
        ])
        .boxed();
        let requests: Vec<WriteRequest> =
            futures::executor::block_on(write_requests("n".into(), 0, data.len() as u64, chunks).collect());
        let offsets: Vec<i64> = requests.iter().map(|r| r.write_offset).collect();
        assert_eq!(
            offsets,
            vec![
                0,
                WRITE_CHUNK as i64,
                WRITE_CHUNK as i64 + 3,
                2 * WRITE_CHUNK as i64 + 3
            ]
        );
        assert_eq!(requests.iter().filter(|r| r.finish_write).count(), 1);
        assert!(requests.last().is_some_and(|r| r.finish_write));
        assert_eq!(requests[0].resource_name, "n");
        assert!(requests[1..].iter().all(|r| r.resource_name.is_empty()));
    }
}
