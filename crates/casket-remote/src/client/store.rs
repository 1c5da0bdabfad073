//! [`RemoteCas`] as a [`BlobStore`], and the batch and stream primitives transfers use.
//!
//! Uploads are hashed here before they are sent, so a blob that does not match its digest is
//! refused with [`StoreError::DigestMismatch`] and never reaches the server.

use std::collections::HashSet;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest, WriteResponse, byte_stream_client};
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, DigestHasher};
use casket_store::{
    BlobStore, BlobStoreExt, BlobStream, BlobWriter, NewBlob, ReadRange, Result, StoreError, Usage,
};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::errors::remote_error;
use super::{BATCH_ITEM_OVERHEAD, RemoteCas, cas_client, connect::Transport};
use crate::resource_name::{Compressor, read_name, write_name};
use crate::server::MAX_MESSAGE_BYTES;

/// Digests per FindMissingBlobs request (about 1 MB of digests).
const FIND_MISSING_CHUNK: usize = 10_000;

/// Bytes per ByteStream WriteRequest.
pub(crate) const WRITE_CHUNK: usize = 1 << 20;

/// A fresh upload id (a version-4 UUID) for a ByteStream Write resource name.
pub(crate) fn upload_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether `digest` travels in a batch (else by ByteStream), given the batch limit.
pub(crate) fn fits_batch(digest: &Digest, batch_bytes: u64) -> bool {
    digest.size() + BATCH_ITEM_OVERHEAD <= batch_bytes
}

/// Groups items into batches of at most `batch_bytes` (each blob's data plus overhead).
pub(crate) fn pack<T>(
    items: impl IntoIterator<Item = T>,
    digest: impl Fn(&T) -> &Digest,
    batch_bytes: u64,
) -> Vec<Vec<T>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        let cost = digest(&item).size() + BATCH_ITEM_OVERHEAD;
        if !current.is_empty() && bytes + cost > batch_bytes {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += cost;
        current.push(item);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl RemoteCas {
    fn function_field(&self, function: DigestFunction) -> i32 {
        function.to_proto() as i32
    }

    /// The subset of `digests` the server does not have.
    pub(crate) async fn missing(&self, digests: &[Digest]) -> Result<HashSet<Digest>, Status> {
        let mut by_function: Vec<(DigestFunction, Vec<Digest>)> = Vec::new();
        for digest in digests {
            if digest.is_empty_blob() {
                continue;
            }
            match by_function.iter_mut().find(|(f, _)| *f == digest.function()) {
                Some((_, list)) => list.push(*digest),
                None => by_function.push((digest.function(), vec![*digest])),
            }
        }
        let mut requests = Vec::new();
        for (function, list) in &by_function {
            for chunk in list.chunks(FIND_MISSING_CHUNK) {
                let request = reapi::FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: self.function_field(*function),
                };
                requests.push((*function, request));
            }
        }
        // Each request owns a handle on the remote, so that the future is `Send` wherever it
        // is awaited (a handle is a few `Arc`s).
        let answers: Vec<Vec<Digest>> = futures::stream::iter(requests)
            .map(|(function, request)| {
                let this = self.clone();
                async move {
                    let response = this
                        .call("FindMissingBlobs", |t| {
                            let request = request.clone();
                            async move { cas_client(t).find_missing_blobs(request).await }
                        })
                        .await?;
                    response
                        .into_inner()
                        .missing_blob_digests
                        .iter()
                        .map(|d| {
                            Digest::from_proto(function, d)
                                .map_err(|e| Status::internal(format!("server sent {e}")))
                        })
                        .collect::<Result<Vec<_>, Status>>()
                }
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .try_collect()
            .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// BatchReadBlobs of `digests` (which must fit one batch): each blob's data or status.
    pub(crate) async fn batch_read(
        &self,
        function: DigestFunction,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, Result<Bytes, Status>)>, Status> {
        let request = reapi::BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: digests.iter().map(Digest::to_proto).collect(),
            acceptable_compressors: Vec::new(),
            digest_function: self.function_field(function),
        };
        let bytes = digests.iter().map(Digest::size).sum();
        let response = self
            .call_moving("BatchReadBlobs", bytes, |t| {
                let request = request.clone();
                async move { cas_client(t).batch_read_blobs(request).await }
            })
            .await?
            .into_inner();
        let mut out = Vec::with_capacity(response.responses.len());
        for item in response.responses {
            let digest = Digest::from_proto(function, &item.digest.unwrap_or_default())
                .map_err(|e| Status::internal(format!("server answered for an invalid digest: {e}")))?;
            let status = item.status.unwrap_or_default();
            let result = if status.code == 0 {
                Ok(Bytes::from(item.data))
            } else {
                Err(Status::new(Code::from_i32(status.code), status.message))
            };
            out.push((digest, result));
        }
        Ok(out)
    }

    /// BatchUpdateBlobs of `blobs` (which must fit one batch, and be verified): each blob's
    /// outcome.
    pub(crate) async fn batch_update(
        &self,
        function: DigestFunction,
        blobs: Vec<(Digest, Bytes)>,
    ) -> Result<Vec<(Digest, Result<(), Status>)>, Status> {
        let request = reapi::BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests: blobs
                .into_iter()
                .map(|(digest, data)| reapi::batch_update_blobs_request::Request {
                    digest: Some(digest.to_proto()),
                    data: data.to_vec(),
                    compressor: 0,
                })
                .collect(),
            digest_function: self.function_field(function),
        };
        let bytes = prost::Message::encoded_len(&request) as u64;
        let response = self
            .call_moving("BatchUpdateBlobs", bytes, |t| {
                let request = request.clone();
                async move { cas_client(t).batch_update_blobs(request).await }
            })
            .await?
            .into_inner();
        response
            .responses
            .into_iter()
            .map(|item| {
                let digest = Digest::from_proto(function, &item.digest.unwrap_or_default())
                    .map_err(|e| Status::internal(format!("server answered for an invalid digest: {e}")))?;
                let status = item.status.unwrap_or_default();
                let result = match status.code {
                    0 => Ok(()),
                    code => Err(Status::new(Code::from_i32(code), status.message)),
                };
                Ok((digest, result))
            })
            .collect()
    }

    /// A ByteStream read of `range` of `digest` (compressed with `compressor`, if any, in
    /// which case the range must have no limit); `Ok(None)` if the server does not have it.
    pub(crate) async fn byte_stream_read(
        &self,
        digest: &Digest,
        range: ReadRange,
        compressor: Option<Compressor>,
    ) -> Result<Option<BlobStream>> {
        let request = ReadRequest {
            resource_name: read_name(&self.instance, digest, compressor),
            read_offset: range.offset as i64,
            read_limit: range.limit.map_or(0, |l| l as i64),
        };
        let bytes = range.len_in(digest).unwrap_or(0);
        let answer = self
            .call_moving("ByteStream.Read", bytes, |t| {
                let request = request.clone();
                async move {
                    byte_stream_client::ByteStreamClient::new(t)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .read(request)
                        .await
                }
            })
            .await;
        let stream = match answer {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) if status.code() == Code::OutOfRange => {
                return Err(StoreError::OffsetOutOfRange {
                    digest: *digest,
                    offset: range.offset,
                });
            }
            Err(status) => return Err(remote_error("ByteStream.Read", &status)),
        };
        Ok(Some(
            stream
                .map(|message| match message {
                    Ok(message) => Ok(Bytes::from(message.data)),
                    Err(status) => Err(remote_error("ByteStream.Read", &status)),
                })
                .boxed(),
        ))
    }
}

/// A ByteStream Write fed chunk by chunk, hashed locally before it is finished.
struct RemoteWriter {
    digest: Digest,
    name: String,
    hasher: DigestHasher,
    written: u64,
    /// `None` once the server ended the call (it already has the blob).
    sender: Option<mpsc::Sender<WriteRequest>>,
    call: tokio::task::JoinHandle<Result<WriteResponse, Status>>,
}

#[async_trait]
impl BlobWriter for RemoteWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.written + chunk.len() as u64 > self.digest.size() {
            return Err(StoreError::TooLong(self.digest));
        }
        self.hasher.update(&chunk);
        for piece in chunk.chunks(WRITE_CHUNK) {
            let request = WriteRequest {
                resource_name: if self.written == 0 {
                    self.name.clone()
                } else {
                    String::new()
                },
                write_offset: self.written as i64,
                finish_write: false,
                data: piece.to_vec(),
            };
            self.written += piece.len() as u64;
            if let Some(sender) = &self.sender
                && sender.send(request).await.is_err()
            {
                self.sender = None;
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let RemoteWriter {
            digest,
            name,
            hasher,
            written,
            sender,
            call,
        } = *self;
        let actual = hasher.finish();
        if actual != digest {
            // Ending the stream without finish_write leaves nothing stored.
            drop(sender);
            call.abort();
            return Err(StoreError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        if let Some(sender) = sender {
            let last = WriteRequest {
                resource_name: if written == 0 { name } else { String::new() },
                write_offset: written as i64,
                finish_write: true,
                data: Vec::new(),
            };
            // A closed stream means the server already answered; its answer says how it went.
            let _ = sender.send(last).await;
        }
        let response = call
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(|status| remote_error("ByteStream.Write", &status))?;
        if response.committed_size != digest.size() as i64 {
            let message = format!(
                "the server committed {} of {} bytes",
                response.committed_size,
                digest.size()
            );
            return Err(remote_error("ByteStream.Write", &Status::data_loss(message)));
        }
        Ok(())
    }
}

/// An upload of the empty blob, which every server has.
struct EmptyWriter(Digest, u64);

#[async_trait]
impl BlobWriter for EmptyWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.1 += chunk.len() as u64;
        if self.1 > 0 {
            return Err(StoreError::TooLong(self.0));
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.1
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl BlobStore for RemoteCas {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let missing = self
            .missing(digests)
            .await
            .map_err(|s| remote_error("FindMissingBlobs", &s))?;
        Ok(digests.iter().filter(|d| missing.contains(d)).copied().collect())
    }

    async fn read(&self, digest: &Digest, range: ReadRange) -> Result<Option<BlobStream>> {
        let length = range.len_in(digest)?;
        if digest.is_empty_blob() || length == 0 {
            // Nothing to transfer; REAPI's read_limit 0 would mean "everything".
            return Ok(self
                .contains(digest)
                .await?
                .then(|| futures::stream::empty().boxed()));
        }
        self.byte_stream_read(digest, range, None).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        if digest.is_empty_blob() {
            return Ok(Box::new(EmptyWriter(*digest, 0)));
        }
        let (sender, receiver) = mpsc::channel(4);
        let transport: Transport = self.transport.clone();
        self.stats.rpc("ByteStream.Write");
        let call = tokio::spawn(async move {
            byte_stream_client::ByteStreamClient::new(transport)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .write(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await
                .map(tonic::Response::into_inner)
        });
        Ok(Box::new(RemoteWriter {
            digest: *digest,
            name: write_name(&self.instance, &upload_id(), digest, None),
            hasher: DigestHasher::new(digest.function()),
            written: 0,
            sender: Some(sender),
            call,
        }))
    }

    async fn delete(&self, _digest: &Digest) -> Result<bool> {
        Err(StoreError::Unsupported("deleting from a remote cache"))
    }

    async fn usage(&self) -> Result<Usage> {
        Err(StoreError::Unsupported("usage of a remote cache"))
    }

    async fn put_many(&self, function: DigestFunction, blobs: Vec<NewBlob>) -> Result<Vec<Result<Digest>>> {
        let mut results: Vec<Result<Digest>> = blobs.iter().map(|blob| blob.verify(function)).collect();
        let verified: Vec<(usize, Digest, Bytes)> = results
            .iter()
            .zip(blobs)
            .enumerate()
            .filter_map(|(i, (r, blob))| r.as_ref().ok().map(|d| (i, *d, blob.data)))
            .collect();
        let limit = self.limits.batch_bytes;
        let (small, large): (Vec<_>, Vec<_>) =
            verified.into_iter().partition(|(_, d, _)| fits_batch(d, limit));
        for (i, digest, data) in large {
            results[i] = self.put_verified(&digest, data).await.map(|()| digest);
        }
        for batch in pack(small, |(_, d, _)| d, limit) {
            let indices: Vec<(usize, Digest)> = batch.iter().map(|(i, d, _)| (*i, *d)).collect();
            let answers = self
                .batch_update(
                    function,
                    batch.into_iter().map(|(_, d, data)| (d, data)).collect(),
                )
                .await
                .map_err(|s| remote_error("BatchUpdateBlobs", &s))?;
            let answers: std::collections::HashMap<Digest, Result<(), Status>> =
                answers.into_iter().collect();
            for (i, digest) in indices {
                results[i] = match answers.get(&digest).map(|answer| (digest, answer)) {
                    Some((_, Ok(()))) => Ok(digest),
                    Some((_, Err(status))) => Err(remote_error("BatchUpdateBlobs", status)),
                    None => Err(remote_error(
                        "BatchUpdateBlobs",
                        &Status::internal(format!("the server did not answer for {digest}")),
                    )),
                };
            }
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_never_exceed_the_limit() {
        let digests: Vec<Digest> = (0..1000u32)
            .map(|i| Digest::of(DigestFunction::Sha256, &vec![0u8; (i as usize * 37) % 5000]))
            .collect();
        for limit in [6000, 64 << 10, 4 << 20] {
            let batches = pack(digests.clone(), |d| d, limit);
            assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), digests.len());
            for batch in batches {
                let bytes: u64 = batch.iter().map(|d| d.size() + BATCH_ITEM_OVERHEAD).sum();
                assert!(bytes <= limit || batch.len() == 1);
            }
        }
    }

    #[test]
    fn upload_ids_are_fresh_version_4_uuids() {
        let (a, b) = (upload_id(), upload_id());
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).map(|id| id.get_version_num()), Ok(4));
    }
}
