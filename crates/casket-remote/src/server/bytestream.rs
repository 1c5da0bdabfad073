//! `ByteStream`: streamed reads with offset and limit, verified streamed writes that can be
//! resumed, and QueryWriteStatus reporting what was really committed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server,
};
use bytes::Bytes;
use casket_store::{BlobStoreExt, BlobWriter, ReadRange};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::ServerState;
use crate::resource_name::ResourceName;
use crate::status::from_store;

/// Interrupted uploads kept for resumption; beyond this, new interruptions are not kept.
const MAX_PARKED_UPLOADS: usize = 1024;

/// The ByteStream service.
pub(crate) struct ByteStream {
    state: ServerState,
    /// Uploads whose stream ended before `finish_write`, by resource name, for resumption.
    parked: Arc<Mutex<HashMap<String, Box<dyn BlobWriter>>>>,
}

impl ByteStream {
    pub(crate) fn new(state: ServerState) -> Self {
        ByteStream {
            state,
            parked: Arc::default(),
        }
    }

    fn take_parked(&self, name: &str) -> Option<Box<dyn BlobWriter>> {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
    }

    fn park(&self, name: String, writer: Box<dyn BlobWriter>) {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if parked.len() < MAX_PARKED_UPLOADS {
            parked.insert(name, writer);
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn committed(size: u64) -> Response<WriteResponse> {
    Response::new(WriteResponse {
        committed_size: size as i64,
    })
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl byte_stream_server::ByteStream for ByteStream {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let request = request.into_inner();
        let name = ResourceName::parse_read(&request.resource_name).map_err(invalid)?;
        if name.compressor.is_some() {
            return Err(Status::unimplemented("compressed reads are not supported"));
        }
        let offset = u64::try_from(request.read_offset)
            .map_err(|_| Status::out_of_range(format!("negative read_offset {}", request.read_offset)))?;
        let limit = u64::try_from(request.read_limit)
            .map_err(|_| Status::out_of_range(format!("negative read_limit {}", request.read_limit)))?;
        let range = ReadRange {
            offset,
            limit: (limit > 0).then_some(limit),
        };
        let stream = self
            .state
            .blobs
            .read(&name.digest, range)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Status::not_found(format!("blob {} not found", name.digest)))?;
        let responses = stream.map(|chunk| {
            chunk
                .map(|data| ReadResponse { data: data.to_vec() })
                .map_err(from_store)
        });
        Ok(Response::new(Box::pin(responses)))
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
        self.state.require_push()?;
        if name.compressor.is_some() {
            return Err(Status::unimplemented("compressed writes are not supported"));
        }
        let digest = name.digest;
        // Already stored: answer at once with the full size, without reading the rest.
        if message.write_offset == 0 && self.state.blobs.contains(&digest).await.map_err(from_store)? {
            return Ok(committed(digest.size()));
        }
        let mut writer = match self.take_parked(&resource) {
            Some(writer) if writer.written() as i64 == message.write_offset => writer,
            _ if message.write_offset == 0 => {
                self.state.blobs.begin_write(&digest).await.map_err(from_store)?
            }
            _ => {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not continue an interrupted upload of {resource}",
                    message.write_offset
                )));
            }
        };
        loop {
            if message.write_offset != writer.written() as i64 {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} but {} bytes were committed",
                    message.write_offset,
                    writer.written()
                )));
            }
            if !message.resource_name.is_empty() && message.resource_name != resource {
                return Err(Status::invalid_argument(
                    "the resource name changed within one write",
                ));
            }
            if !message.data.is_empty() {
                writer
                    .write(Bytes::from(message.data))
                    .await
                    .map_err(from_store)?;
            }
            if message.finish_write {
                writer.commit().await.map_err(from_store)?;
                return Ok(committed(digest.size()));
            }
            match requests.message().await {
                Ok(Some(next)) => message = next,
                Ok(None) => {
                    let written = writer.written();
                    self.park(resource, writer);
                    return Ok(committed(written));
                }
                Err(status) => {
                    self.park(resource, writer);
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
            .state
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
        let parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        match parked.get(&resource) {
            Some(writer) => Ok(Response::new(QueryWriteStatusResponse {
                committed_size: writer.written() as i64,
                complete: false,
            })),
            None => Err(Status::not_found(format!("no upload in progress for {resource}"))),
        }
    }
}
