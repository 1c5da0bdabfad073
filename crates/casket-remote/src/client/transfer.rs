//! Whole trees between a local store and a server.
//!
//! **Push**: the tree is read locally, FindMissingBlobs (batched, de-duplicated) says what the
//! server lacks, small blobs go in BatchUpdateBlobs packed up to the batch limit, large ones
//! by ByteStream Write in 1 MiB messages, resumed with QueryWriteStatus after a failure. Many
//! requests are in flight at once.
//!
//! **Pull**: nothing is fetched that the local store has. Directories come with one GetTree
//! where the server has it, else breadth-first in batches as soon as their parents are
//! known; each level's missing files are fetched while the next level's directories are.
//! Small files come in BatchReadBlobs, large ones are streamed straight into the local store
//! (resumed at the offset reached after a failure). Every blob is verified by the local store
//! as it is written: a corrupt one is refused, reported, and never stored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, WriteRequest, byte_stream_client};
use bytes::Bytes;
use casket_model::{Digest, Directory, Node};
use casket_store::{BlobStore, BlobStoreExt, NewBlob, ReadRange, StoreError};
use casket_tree::{Progress, Tree, TreeError};
use futures::{StreamExt, TryStreamExt};
use tonic::{Code, Status};

use super::store::{WRITE_CHUNK, fits_batch, pack, upload_id};
use super::{RemoteCas, cas_client};
use crate::compression::{ZstdDecoder, compress_stream};
use crate::resource_name::write_name;
use crate::server::MAX_MESSAGE_BYTES;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// An RPC failed (after its retries).
    #[error("{operation}: {status}")]
    Remote {
        /// What was being done.
        operation: &'static str,
        /// The final status.
        status: Status,
    },
    /// The server does not have a blob the tree needs.
    #[error("the server does not have {0}, which the tree needs")]
    Missing(Digest),
    /// The server sent bytes that do not match their digest; they were not stored.
    #[error("the server sent a corrupt copy of {expected} (it hashes to {actual}); it was not stored")]
    Corrupt {
        /// The blob asked for.
        expected: Digest,
        /// What the bytes received hash to.
        actual: Digest,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tree is incomplete or invalid.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

fn failed(operation: &'static str) -> impl Fn(Status) -> TransferError {
    move |status| TransferError::Remote { operation, status }
}

/// A store error while storing what the server sent: corrupt content is the server's fault.
fn storing(e: StoreError) -> TransferError {
    match e {
        StoreError::DigestMismatch { expected, actual } => TransferError::Corrupt { expected, actual },
        other => TransferError::Store(other),
    }
}

/// A compressed stream from the server that does not decode to the blob.
fn corrupt_stream(digest: Digest) -> impl Fn(crate::compression::CompressionError) -> TransferError {
    move |e| TransferError::Remote {
        operation: "ByteStream.Read",
        status: Status::data_loss(format!("{digest}: {e}")),
    }
}

/// What a transfer did.
#[derive(Clone, Debug, Default)]
pub struct TransferReport {
    /// Distinct blobs in the tree (directories and files).
    pub blobs: u64,
    /// Of those, already on the receiving side.
    pub present: u64,
    /// Blobs sent or received.
    pub transferred_blobs: u64,
    /// Their bytes.
    pub transferred_bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

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
    let limit = remote.limits.batch_bytes;
    let (small, large): (Vec<Digest>, Vec<Digest>) = missing.into_iter().partition(|d| fits_batch(d, limit));
    let concurrency = remote.options.concurrency.max(1);
    let batches = futures::stream::iter(pack(small, |d| d, limit))
        .map(|batch| upload_batch(local.clone(), remote, batch, progress))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>();
    let streams = futures::stream::iter(large)
        .map(|digest| upload_stream(local.clone(), remote, digest, progress))
        .buffer_unordered(concurrency.min(4))
        .try_collect::<Vec<()>>();
    futures::try_join!(batches, streams)?;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads `batch` locally and sends it in one BatchUpdateBlobs.
async fn upload_batch(
    local: Arc<dyn BlobStore>,
    remote: &RemoteCas,
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
    remote: &RemoteCas,
    digest: Digest,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let zstd = remote.zstd();
    let mut name = write_name(&remote.instance, &upload_id(), &digest, zstd);
    let mut offset = 0u64;
    let mut attempts = 0;
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
            Some(_) => compressed_write_requests(name.clone(), chunks).boxed(),
            None => write_requests(name.clone(), offset, digest.size(), chunks).boxed(),
        };
        let _slot = remote
            .in_flight
            .acquire()
            .await
            .map_err(|_| failed("ByteStream.Write")(Status::cancelled("closed")))?;
        remote.stats.rpc("ByteStream.Write");
        let answer = byte_stream_client::ByteStreamClient::new(remote.transport.clone())
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .write(requests)
            .await;
        drop(_slot);
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
            Err(status) if super::retryable(&status) && attempts < remote.options.retries => {
                attempts += 1;
                remote.stats.retry();
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempts.min(6))).await;
                if zstd.is_some() {
                    name = write_name(&remote.instance, &upload_id(), &digest, zstd);
                } else {
                    offset = resume_offset(remote, &name).await;
                }
                tracing::debug!(%digest, offset, "resuming upload");
            }
            Err(status) => return Err(failed("ByteStream.Write")(status)),
        }
    }
}

/// The WriteRequests of a whole blob in zstd: one compressed message per local chunk (offsets
/// count compressed bytes, as the spec says), then the end of the frame, finishing the write.
fn compressed_write_requests(
    name: String,
    chunks: casket_store::BlobStream,
) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
    // A read error ends the stream early; the server then never sees finish_write.
    let pieces = compress_stream(chunks).scan((), |(), piece| {
        if let Err(e) = &piece {
            tracing::warn!(error = %e, "compressing an upload failed");
        }
        futures::future::ready(piece.ok())
    });
    pieces.scan(0u64, move |sent, piece| {
        let request = WriteRequest {
            resource_name: if *sent == 0 { name.clone() } else { String::new() },
            write_offset: *sent as i64,
            finish_write: piece.last,
            data: piece.data.to_vec(),
        };
        *sent += piece.data.len() as u64;
        futures::future::ready(Some(request))
    })
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
fn write_requests(
    name: String,
    offset: u64,
    size: u64,
    chunks: casket_store::BlobStream,
) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
    // A local read error ends the stream early; the server then holds less than the whole
    // blob and the upload fails with the committed size.
    let pieces = chunks.scan((), |(), chunk| {
        if let Err(e) = &chunk {
            tracing::warn!(error = %e, "local read failed during an upload");
        }
        futures::future::ready(chunk.ok())
    });
    let pieces = pieces.flat_map(|chunk| {
        let pieces: Vec<Bytes> = (0..chunk.len())
            .step_by(WRITE_CHUNK)
            .map(|at| chunk.slice(at..(at + WRITE_CHUNK).min(chunk.len())))
            .collect();
        futures::stream::iter(pieces)
    });
    pieces.scan(offset, move |at, piece| {
        let request = WriteRequest {
            resource_name: if *at == offset {
                name.clone()
            } else {
                String::new()
            },
            write_offset: *at as i64,
            finish_write: *at + piece.len() as u64 == size,
            data: piece.to_vec(),
        };
        *at += piece.len() as u64;
        futures::future::ready(Some(request))
    })
}

/// Counts each distinct blob of a tree once, as present or transferred.
#[derive(Default)]
struct Tally {
    counted: HashSet<Digest>,
    report: TransferReport,
}

impl Tally {
    /// Shows the work found so far as the work ahead.
    fn show(&self, progress: &dyn Progress) {
        progress.start(self.report.transferred_blobs, self.report.transferred_bytes);
    }

    fn add(&mut self, wanted: &[Digest], missing: &[Digest]) {
        let missing: HashSet<&Digest> = missing.iter().collect();
        for digest in wanted {
            if self.counted.insert(*digest) {
                self.report.blobs += 1;
                if missing.contains(digest) {
                    self.report.transferred_blobs += 1;
                    self.report.transferred_bytes += digest.size();
                } else {
                    self.report.present += 1;
                }
            }
        }
    }
}

/// Fetches the tree under `root` into `local`: whatever of it `local` lacks.
pub async fn pull_tree(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    root: &Digest,
    progress: Arc<dyn Progress>,
) -> Result<TransferReport, TransferError> {
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut file_fetches = tokio::task::JoinSet::new();
    let mut seen_directories = HashSet::new();
    let mut seen_files = HashSet::new();
    let listed = list_tree(remote, local.as_ref(), root).await?;
    let mut level = vec![*root];
    while !level.is_empty() {
        level.retain(|d| seen_directories.insert(*d));
        let missing: Vec<Digest> = local.find_missing(&level).await?;
        tally.add(&level, &missing);
        tally.show(progress.as_ref());
        let listed_here = store_listed(local.as_ref(), &listed, &missing).await?;
        let still_missing = missing.into_iter().filter(|d| !listed_here.contains(d)).collect();
        progress.advance(
            listed_here.len() as u64,
            listed_here.iter().map(Digest::size).sum(),
        );
        fetch_blobs(remote, local.clone(), still_missing, progress.as_ref()).await?;

        let mut next = Vec::new();
        let mut files = Vec::new();
        for digest in &level {
            for (_, node) in read_directory(local.as_ref(), digest).await?.entries() {
                match node {
                    Node::Directory(child) => next.push(*child),
                    Node::File(file) if seen_files.insert(file.digest) => files.push(file.digest),
                    _ => {}
                }
            }
        }
        let missing_files = local.find_missing(&files).await?;
        tally.add(&files, &missing_files);
        tally.show(progress.as_ref());
        let (remote, local, progress) = (remote.clone(), local.clone(), progress.clone());
        file_fetches
            .spawn(async move { fetch_blobs(&remote, local, missing_files, progress.as_ref()).await });
        level = next;
    }
    while let Some(done) = file_fetches.join_next().await {
        done.map_err(|e| StoreError::Task(e.to_string()))??;
    }
    tally.report.seconds = start.elapsed().as_secs_f64();
    Ok(tally.report)
}

/// A directory `local` holds, decoded and validated.
async fn read_directory(local: &dyn BlobStore, digest: &Digest) -> Result<Directory, TransferError> {
    let bytes = local
        .get_bytes(digest)
        .await?
        .ok_or(StoreError::NotFound(*digest))?;
    Directory::decode(digest.function(), &bytes).map_err(|source| {
        TransferError::Tree(TreeError::InvalidDirectory {
            path: digest.to_string(),
            digest: *digest,
            source: Box::new(source),
        })
    })
}

/// Every directory of the tree, from one GetTree, if the server offers it and the local
/// store lacks the root; empty otherwise (the caller then walks level by level).
async fn list_tree(
    remote: &RemoteCas,
    local: &dyn BlobStore,
    root: &Digest,
) -> Result<Vec<reapi::Directory>, TransferError> {
    if local.contains(root).await? {
        return Ok(Vec::new());
    }
    let request = reapi::GetTreeRequest {
        instance_name: remote.instance.clone(),
        root_digest: Some(root.to_proto()),
        page_size: 0,
        page_token: String::new(),
        digest_function: root.function().to_proto() as i32,
    };
    let answer = remote
        .call("GetTree", |t| {
            let request = request.clone();
            async move {
                let mut stream = cas_client(t).get_tree(request).await?.into_inner();
                let mut directories = Vec::new();
                while let Some(page) = stream.message().await? {
                    directories.extend(page.directories);
                }
                Ok(directories)
            }
        })
        .await;
    match answer {
        Ok(directories) => Ok(directories),
        Err(status) if matches!(status.code(), Code::Unimplemented | Code::NotFound) => Ok(Vec::new()),
        Err(status) => Err(failed("GetTree")(status)),
    }
}

/// Stores those `wanted` directories that the GetTree listing holds; returns which.
async fn store_listed(
    local: &dyn BlobStore,
    listed: &[reapi::Directory],
    wanted: &[Digest],
) -> Result<Vec<Digest>, TransferError> {
    let Some(function) = wanted.first().map(Digest::function) else {
        return Ok(Vec::new());
    };
    let wanted: HashSet<&Digest> = wanted.iter().collect();
    let mut blobs = Vec::new();
    for proto in listed {
        let data = Bytes::from(prost::Message::encode_to_vec(proto));
        let digest = Digest::of(function, &data);
        if wanted.contains(&digest) {
            blobs.push((digest, data));
        }
    }
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let results = local
        .put_many(
            function,
            blobs
                .into_iter()
                .map(|(digest, data)| NewBlob {
                    data,
                    expected: Some(digest),
                })
                .collect(),
        )
        .await?;
    for result in results {
        result.map_err(storing)?;
    }
    Ok(digests)
}

/// Fetches `digests` into `local`: batches for small blobs, streams for large ones.
async fn fetch_blobs(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    digests: Vec<Digest>,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let limit = remote.limits.batch_bytes;
    let batch_read = remote.limits.batch_read;
    let (small, large): (Vec<Digest>, Vec<Digest>) = digests
        .into_iter()
        .partition(|d| batch_read && fits_batch(d, limit));
    let concurrency = remote.options.concurrency.max(1);
    let batches = futures::stream::iter(pack(small, |d| d, limit))
        .map(|batch| fetch_batch(remote, local.clone(), batch, progress))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>();
    let streams = futures::stream::iter(large)
        .map(|digest| fetch_stream(remote, local.clone(), digest, progress))
        .buffer_unordered(concurrency.min(4))
        .try_collect::<Vec<()>>();
    futures::try_join!(batches, streams)?;
    Ok(())
}

async fn fetch_batch(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    batch: Vec<Digest>,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let (count, bytes) = (batch.len() as u64, batch.iter().map(Digest::size).sum());
    let function = batch[0].function();
    let mut blobs = Vec::with_capacity(batch.len());
    for (digest, answer) in remote
        .batch_read(function, &batch)
        .await
        .map_err(failed("BatchReadBlobs"))?
    {
        match answer {
            Ok(data) => blobs.push(NewBlob {
                data,
                expected: Some(digest),
            }),
            Err(status) if status.code() == Code::NotFound => return Err(TransferError::Missing(digest)),
            Err(status) => return Err(failed("BatchReadBlobs")(status)),
        }
    }
    for result in local.put_many(function, blobs).await? {
        result.map_err(storing)?;
    }
    progress.advance(count, bytes);
    Ok(())
}

/// Streams one blob from the server into `local`, resuming at the offset reached after a
/// failure; the local store verifies it on commit.
async fn fetch_stream(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    digest: Digest,
    progress: &dyn Progress,
) -> Result<(), TransferError> {
    let mut writer = local.begin_write(&digest).await?;
    let mut attempts = 0;
    loop {
        let range = ReadRange {
            offset: writer.written(),
            limit: None,
        };
        let zstd = remote.zstd();
        let mut chunks = match remote.byte_stream_read(&digest, range, zstd).await {
            Ok(Some(chunks)) => chunks,
            Ok(None) => return Err(TransferError::Missing(digest)),
            Err(e) => return Err(TransferError::Store(e)),
        };
        // A compressed read starts a new frame at the uncompressed offset asked for.
        let mut decoder = match zstd {
            Some(_) => Some(ZstdDecoder::new(digest.size() - range.offset).map_err(corrupt_stream(digest))?),
            None => None,
        };
        let mut failed = None;
        while let Some(chunk) = chunks.next().await {
            match (chunk, &mut decoder) {
                (Ok(chunk), None) => writer.write(chunk).await.map_err(storing)?,
                (Ok(chunk), Some(decoder)) => {
                    decoder.feed(chunk);
                    while let Some(piece) = decoder.next_piece().map_err(corrupt_stream(digest))? {
                        writer.write(piece).await.map_err(storing)?;
                    }
                }
                (Err(e), _) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none()
            && let Some(decoder) = &decoder
        {
            decoder.finish().map_err(corrupt_stream(digest))?;
        }
        match failed {
            None => break,
            Some(e) if attempts < remote.options.retries => {
                attempts += 1;
                remote.stats.retry();
                tracing::debug!(%digest, offset = writer.written(), error = %e, "resuming download");
            }
            Some(e) => return Err(TransferError::Store(e)),
        }
    }
    writer.commit().await.map_err(storing)?;
    progress.advance(1, digest.size());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use casket_model::DigestFunction;

    #[test]
    fn batches_never_exceed_the_limit() {
        let digests: Vec<Digest> = (0..1000u32)
            .map(|i| Digest::of(DigestFunction::Sha256, &vec![0u8; (i as usize * 37) % 5000]))
            .collect();
        for limit in [6000, 64 << 10, 4 << 20] {
            let batches = pack(digests.clone(), |d| d, limit);
            assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), digests.len());
            for batch in batches {
                let bytes: u64 = batch
                    .iter()
                    .map(|d| d.size() + super::super::BATCH_ITEM_OVERHEAD)
                    .sum();
                assert!(bytes <= limit || batch.len() == 1);
            }
        }
    }

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
