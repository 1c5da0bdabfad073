//! `ByteStream`: streamed reads with offset and limit, verified streamed writes that can be
//! resumed, QueryWriteStatus reporting what was really committed, and all of it in zstd
//! through `compressed-blobs/zstd/` names.
//!
//! Offsets of compressed transfers follow the spec: a read's `read_offset` is in uncompressed
//! bytes (and `read_limit` must be 0); a write's offsets count compressed bytes received, and
//! an upload of a blob that is already stored ends at once with `committed_size` -1.
//!
//! An interrupted upload is parked for resumption ([`casket_cache::uploads::Parked`]) for the
//! configured idle lifetime; one abandoned longer is dropped, which aborts its write and
//! releases the room it held in the quota.

use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server,
};
use bytes::Bytes;
use casket_cache::uploads::Parked;
use casket_store::{BlobStoreExt, BlobWriter, ReadRange};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use super::metrics::Lookup;
use crate::compression::{ZstdDecoder, compress_stream};
use crate::resource_name::ResourceName;
use crate::status::from_store;

/// Interrupted uploads kept for resumption; beyond this, the least recently parked go.
const MAX_PARKED_UPLOADS: u64 = 1024;

/// An upload in progress (or interrupted, and kept for resumption). Its writer holds the room
/// reserved for it in the quota, if any, until it is committed or dropped.
struct Upload {
    writer: Box<dyn BlobWriter>,
    /// Set for compressed uploads.
    decoder: Option<ZstdDecoder>,
    /// Bytes received on the wire: what the next `write_offset` must be.
    received: u64,
}

impl Upload {
    /// Stores the next received bytes.
    async fn write(&mut self, data: Bytes) -> Result<(), Status> {
        self.received += data.len() as u64;
        match &mut self.decoder {
            None => self.writer.write(data).await.map_err(from_store),
            Some(decoder) => {
                decoder.feed(data);
                while let Some(piece) = decoder.next_piece().map_err(invalid)? {
                    self.writer.write(piece).await.map_err(from_store)?;
                }
                Ok(())
            }
        }
    }

    /// Verifies and stores the blob; returns the `committed_size` to report.
    async fn commit(self) -> Result<u64, Status> {
        if let Some(decoder) = &self.decoder {
            decoder.finish().map_err(invalid)?;
        }
        self.writer.commit().await.map_err(from_store)?;
        Ok(self.received)
    }
}

/// The ByteStream service.
pub(crate) struct ByteStream {
    shared: Arc<Shared>,
    /// Uploads whose stream ended before `finish_write`, by resource name, for resumption.
    parked: Arc<Parked<Upload>>,
}

impl ByteStream {
    /// Must be called on the server's runtime: it sweeps expired uploads in the background.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let parked = Arc::new(Parked::new(MAX_PARKED_UPLOADS, shared.upload_lifetime));
        Parked::sweep_every(&parked);
        ByteStream { shared, parked }
    }

    /// A new upload of `name` (its writer reserves room for it first).
    async fn start_upload(&self, name: &ResourceName) -> Result<Upload, Status> {
        let writer = self
            .shared
            .namespace(&name.instance)?
            .blobs
            .begin_write(&name.digest)
            .await
            .map_err(from_store)?;
        let decoder = match name.compressor {
            Some(_) => Some(ZstdDecoder::new(name.digest.size()).map_err(invalid)?),
            None => None,
        };
        Ok(Upload {
            writer,
            decoder,
            received: 0,
        })
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn committed(size: i64) -> Response<WriteResponse> {
    Response::new(WriteResponse { committed_size: size })
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl byte_stream_server::ByteStream for ByteStream {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let request = request.into_inner();
        let name = ResourceName::parse_read(&request.resource_name).map_err(invalid)?;
        let offset = u64::try_from(request.read_offset)
            .map_err(|_| Status::out_of_range(format!("negative read_offset {}", request.read_offset)))?;
        let limit = u64::try_from(request.read_limit)
            .map_err(|_| Status::out_of_range(format!("negative read_limit {}", request.read_limit)))?;
        if name.compressor.is_some() && limit > 0 {
            return Err(Status::invalid_argument(
                "a compressed read cannot have a read_limit",
            ));
        }
        let range = ReadRange {
            offset,
            limit: (limit > 0).then_some(limit),
        };
        let found = self
            .shared
            .namespace(&name.instance)?
            .blobs
            .read(&name.digest, range)
            .await
            .map_err(from_store)?;
        self.shared.metrics.lookups(
            Lookup::Blob,
            u64::from(found.is_some()),
            u64::from(found.is_none()),
        );
        let chunks = found.ok_or_else(|| Status::not_found(format!("blob {} not found", name.digest)))?;
        let data: Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>> = match name.compressor {
            Some(_) => Box::pin(compress_stream(chunks).map(|piece| {
                piece
                    .map(|p| p.data)
                    .map_err(|e| Status::internal(format!("zstd: {e}")))
            })),
            None => Box::pin(chunks.map(|chunk| chunk.map_err(from_store))),
        };
        Ok(Response::new(Box::pin(data.map(|chunk| {
            chunk.map(|data| ReadResponse { data: data.to_vec() })
        }))))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut requests = request.into_inner();
        let mut message = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty write stream"))?;
        let resource = message.resource_name.clone();
        let name = ResourceName::parse_write(&resource).map_err(invalid)?;
        let blobs = &self.shared.namespace(&name.instance)?.blobs;
        // Already stored: answer at once, without reading the rest.
        if message.write_offset == 0 && blobs.contains(&name.digest).await.map_err(from_store)? {
            let size = if name.compressor.is_some() {
                -1
            } else {
                name.digest.size() as i64
            };
            return Ok(committed(size));
        }
        let mut upload = match self.parked.take(&resource) {
            Some(upload) if upload.received as i64 == message.write_offset => upload,
            _ if message.write_offset == 0 => self.start_upload(&name).await?,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not continue an interrupted upload of {resource}",
                    message.write_offset
                )));
            }
        };
        loop {
            if message.write_offset != upload.received as i64 {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} but {} bytes were received",
                    message.write_offset, upload.received
                )));
            }
            if !message.resource_name.is_empty() && message.resource_name != resource {
                return Err(Status::invalid_argument(
                    "the resource name changed within one write",
                ));
            }
            if !message.data.is_empty() {
                upload.write(Bytes::from(message.data)).await?;
            }
            if message.finish_write {
                let received = upload.commit().await?;
                return Ok(committed(received as i64));
            }
            match requests.message().await {
                Ok(Some(next)) => message = next,
                Ok(None) => {
                    let received = upload.received;
                    self.parked.park(resource, upload);
                    return Ok(committed(received as i64));
                }
                Err(status) => {
                    self.parked.park(resource, upload);
                    return Err(status);
                }
            }
        }
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let resource = request.into_inner().resource_name;
        let name = ResourceName::parse_write(&resource).map_err(invalid)?;
        if self
            .shared
            .namespace(&name.instance)?
            .blobs
            .contains(&name.digest)
            .await
            .map_err(from_store)?
        {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: name.digest.size() as i64,
                complete: true,
            }));
        }
        match self.parked.peek(&resource, |upload| upload.received) {
            Some(received) => Ok(Response::new(QueryWriteStatusResponse {
                committed_size: received as i64,
                complete: false,
            })),
            None => Err(Status::not_found(format!("no upload in progress for {resource}"))),
        }
    }
}
