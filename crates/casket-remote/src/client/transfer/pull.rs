//! Pull: what the local store lacks of a tree, level by level (or from one GetTree), each
//! blob verified as it is stored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use casket_model::{Digest, Directory, Node};
use casket_store::{BlobStore, BlobStoreExt, NewBlob, ReadRange, StoreError};
use casket_tree::{Progress, TreeError};
use futures::StreamExt;
use tonic::{Code, Status};

use super::{TransferError, TransferReport, batched_and_streamed, failed};
use crate::client::{RemoteCas, cas_client};
use crate::compression::{CompressionError, ZstdDecoder};

/// A store error while storing what the server sent: corrupt content is the server's fault.
fn storing(e: StoreError) -> TransferError {
    match e {
        StoreError::DigestMismatch { expected, actual } => TransferError::Corrupt { expected, actual },
        other => TransferError::Store(other),
    }
}

/// A compressed stream from the server that does not decode to the blob.
fn corrupt_stream(digest: Digest) -> impl Fn(CompressionError) -> TransferError {
    move |e| TransferError::Remote {
        operation: "ByteStream.Read",
        status: Status::data_loss(format!("{digest}: {e}")),
    }
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

    /// Counts those of `wanted` not yet counted, `missing` ones as to transfer.
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
    pull(remote, local, root, progress, true).await
}

/// Fetches the directories of the tree under `root` into `local`, not its files: enough to
/// list the tree or to ask which of its files are where.
pub async fn pull_directories(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    root: &Digest,
) -> Result<TransferReport, TransferError> {
    pull(remote, local, root, Arc::new(()), false).await
}

/// Fetches `digests` (which `local` lacks) from `remote` into `local`: batches within the
/// negotiated limit, streams for large blobs, several at once.
pub async fn pull_blobs(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    digests: Vec<Digest>,
) -> Result<(), TransferError> {
    fetch_blobs(remote, local, digests, &()).await
}

async fn pull(
    remote: &RemoteCas,
    local: Arc<dyn BlobStore>,
    root: &Digest,
    progress: Arc<dyn Progress>,
    with_files: bool,
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
                    Node::File(file) if with_files && seen_files.insert(file.digest) => {
                        files.push(file.digest)
                    }
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
    batched_and_streamed(
        remote,
        digests,
        remote.limits.batch_read,
        |batch| fetch_batch(remote, local.clone(), batch, progress),
        |digest| fetch_stream(remote, local.clone(), digest, progress),
    )
    .await
}

/// Fetches one batch with BatchReadBlobs and stores it.
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
