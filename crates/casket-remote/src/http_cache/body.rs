//! Bodies: uploads streamed into verified writes (or spooled, when the blob's size or hash is
//! not known before the body has been read), and downloads, ranged or zstd-compressed.
//!
//! Nothing here holds a large blob whole: a spooled upload past [`SPOOL_IN_MEMORY`] goes to an
//! unnamed temporary file. An upload that stops sending for the idle limit, ends
//! early, runs past its declared size or does not hash to its name stores nothing.

use std::io::SeekFrom;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use casket_model::{Digest, DigestFunction, DigestHasher};
use casket_store::{BlobStore, NewBlob, StoreError};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use std::time::Duration;

use crate::compression::{CompressionError, ZstdDecoder};

/// The most of a spooled upload kept in memory; the rest goes to a temporary file.
pub(crate) const SPOOL_IN_MEMORY: usize = 1 << 20;

/// Bytes per write when a spooled file is replayed into the store.
const REPLAY_PIECE: usize = 1 << 20;

/// Why an upload stored nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    /// The client stopped sending, or the connection failed.
    #[error("the request body could not be read: {0}")]
    Body(String),
    /// No byte came for too long.
    #[error("no body data for {0:?}: upload abandoned")]
    Idle(Duration),
    /// More bytes than the size the request declared.
    #[error("the body is longer than the declared {0} bytes")]
    TooLong(u64),
    /// Fewer bytes than declared.
    #[error("the body ended after {got} of the declared {declared} bytes")]
    TooShort {
        /// What was declared.
        declared: u64,
        /// What came.
        got: u64,
    },
    /// Larger than the store can ever hold.
    #[error("the body is larger than the {0} bytes this cache can hold")]
    TooLarge(u64),
    /// The body hashes to something else than its name.
    #[error("the body hashes to {actual}, not to {expected}")]
    Mismatch {
        /// What the path named.
        expected: String,
        /// What the body is.
        actual: Digest,
    },
    /// A compressed body is not valid zstd, or decompresses past the limit.
    #[error("{0}")]
    Compression(#[from] CompressionError),
    /// Spooling to a temporary file failed.
    #[error("spooling the upload failed: {0}")]
    Spool(#[from] std::io::Error),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request body's chunks, each awaited at most an idle limit.
pub(crate) struct Chunks {
    inner: axum::body::BodyDataStream,
    idle: Duration,
    /// Bytes read so far.
    read: u64,
}

impl Chunks {
    /// The chunks of `body`, abandoned after `idle` without one.
    pub(crate) fn new(body: Body, idle: Duration) -> Self {
        Chunks {
            inner: body.into_data_stream(),
            idle,
            read: 0,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, UploadError> {
        match tokio::time::timeout(self.idle, self.inner.next()).await {
            Err(_) => Err(UploadError::Idle(self.idle)),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(UploadError::Body(e.to_string())),
            Ok(Some(Ok(chunk))) => {
                self.read += chunk.len() as u64;
                Ok(Some(chunk))
            }
        }
    }
}

/// Streams `chunks`, which must be exactly `digest`'s bytes, into a verified write. Returns the
/// bytes read from the client.
pub(crate) async fn write_exact(
    store: &dyn BlobStore,
    digest: &Digest,
    mut chunks: Chunks,
) -> Result<u64, UploadError> {
    let mut writer = store.begin_write(digest).await?;
    // Chunks go to the writer as they come: stores gather them into large writes themselves.
    while let Some(chunk) = chunks.next().await? {
        if writer.written() + chunk.len() as u64 > digest.size() {
            return Err(UploadError::TooLong(digest.size()));
        }
        writer.write(chunk).await?;
    }
    if writer.written() < digest.size() {
        return Err(UploadError::TooShort {
            declared: digest.size(),
            got: writer.written(),
        });
    }
    match writer.commit().await {
        Ok(()) => Ok(chunks.read),
        Err(StoreError::DigestMismatch { expected, actual }) => Err(UploadError::Mismatch {
            expected: expected.to_string(),
            actual,
        }),
        Err(e) => Err(e.into()),
    }
}

/// An upload read whole, hashed on the way: in memory while small, else in a temporary file.
pub(crate) struct Spooled {
    /// What the content hashes to.
    pub(crate) digest: Digest,
    /// The bytes read from the client (compressed, if it was).
    pub(crate) received: u64,
    content: Content,
}

enum Content {
    Memory(Bytes),
    File(tokio::fs::File),
}

impl Spooled {
    /// Reads `chunks`, decompressing them first when `zstd`, refusing more than `limit` bytes
    /// of content.
    pub(crate) async fn read(
        mut chunks: Chunks,
        function: DigestFunction,
        zstd: bool,
        limit: u64,
    ) -> Result<Spooled, UploadError> {
        let mut decoder = zstd.then(|| ZstdDecoder::new(limit)).transpose()?;
        let mut spool = Spool {
            hasher: DigestHasher::new(function),
            memory: BytesMut::new(),
            file: None,
            len: 0,
            limit,
        };
        while let Some(chunk) = chunks.next().await? {
            match &mut decoder {
                None => spool.add(chunk).await?,
                Some(decoder) => {
                    decoder.feed(chunk);
                    while let Some(piece) = decoder.next_piece()? {
                        spool.add(piece).await?;
                    }
                }
            }
        }
        if let Some(decoder) = &decoder {
            decoder.finish()?;
        }
        let digest = spool.hasher.finish();
        let content = match spool.file {
            None => Content::Memory(spool.memory.freeze()),
            Some(mut file) => {
                file.flush().await?;
                file.seek(SeekFrom::Start(0)).await?;
                Content::File(file)
            }
        };
        Ok(Spooled {
            digest,
            received: chunks.read,
            content,
        })
    }

    /// The content, read whole: for small bodies only (the caller's limit says how small).
    pub(crate) async fn into_bytes(self) -> Result<Bytes, UploadError> {
        match self.content {
            Content::Memory(data) => Ok(data),
            Content::File(mut file) => {
                let mut data = Vec::new();
                file.read_to_end(&mut data).await?;
                Ok(Bytes::from(data))
            }
        }
    }

    /// Stores the content under its digest.
    pub(crate) async fn store(self, store: &dyn BlobStore) -> Result<(), UploadError> {
        match self.content {
            Content::Memory(data) => {
                let blob = NewBlob {
                    data,
                    expected: Some(self.digest),
                };
                for result in store.put_many(self.digest.function(), vec![blob]).await? {
                    result?;
                }
            }
            Content::File(mut file) => {
                let mut writer = store.begin_write(&self.digest).await?;
                loop {
                    let mut piece = BytesMut::zeroed(REPLAY_PIECE);
                    let n = file.read(&mut piece).await?;
                    if n == 0 {
                        break;
                    }
                    piece.truncate(n);
                    writer.write(piece.freeze()).await?;
                }
                writer.commit().await?;
            }
        }
        Ok(())
    }
}

struct Spool {
    hasher: DigestHasher,
    memory: BytesMut,
    file: Option<tokio::fs::File>,
    len: u64,
    limit: u64,
}

impl Spool {
    async fn add(&mut self, chunk: Bytes) -> Result<(), UploadError> {
        self.len += chunk.len() as u64;
        if self.len > self.limit {
            return Err(UploadError::TooLarge(self.limit));
        }
        self.hasher.update(&chunk);
        if self.file.is_none() && self.memory.len() + chunk.len() <= SPOOL_IN_MEMORY {
            self.memory.extend_from_slice(&chunk);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let mut file = tokio::fs::File::from_std(tempfile::tempfile()?);
                file.write_all(&std::mem::take(&mut self.memory)).await?;
                self.file.insert(file)
            }
        };
        file.write_all(&chunk).await?;
        Ok(())
    }
}

/// A byte range a GET asked for, as `start..end` of a blob of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Range {
    /// No usable Range header: the whole blob (an unparsable or multi-part range is ignored,
    /// as RFC 9110 allows).
    Whole,
    /// One satisfiable range.
    Part {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// A range that starts past the end.
    Unsatisfiable,
}

/// The range `header` asks of a blob of `size` bytes.
pub(crate) fn parse_range(header: Option<&http::HeaderValue>, size: u64) -> Range {
    let Some(spec) = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(suffix)) if suffix > 0 => (size.saturating_sub(suffix), size),
        (true, _, _) => return Range::Unsatisfiable,
        (false, Some(start), None) if last.trim().is_empty() => (start, size),
        (false, Some(start), Some(last)) if last >= start => (start, size.min(last + 1)),
        _ => return Range::Whole,
    };
    if start >= size {
        return Range::Unsatisfiable;
    }
    Range::Part { start, end }
}

/// Whether an `Accept-Encoding` header accepts zstd (with a non-zero quality).
pub(crate) fn accepts_zstd(header: Option<&http::HeaderValue>) -> bool {
    header.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("zstd") && !refused
        })
    })
}

/// A blob stream as response body data, compressed with zstd when `zstd`.
pub(crate) fn download(
    stream: casket_store::BlobStream,
    zstd: bool,
) -> std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> {
    if zstd {
        crate::compression::compress_stream(stream)
            .map(|piece| piece.map(|p| p.data))
            .boxed()
    } else {
        stream.map(|chunk| chunk.map_err(std::io::Error::other)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Range {
        parse_range(
            Some(&http::HeaderValue::from_str(value).unwrap_or_else(|e| panic!("{e}"))),
            size,
        )
    }

    #[test]
    fn ranges_are_clamped_to_the_blob() {
        assert_eq!(range("bytes=0-99", 1000), Range::Part { start: 0, end: 100 });
        assert_eq!(
            range("bytes=900-", 1000),
            Range::Part {
                start: 900,
                end: 1000
            }
        );
        assert_eq!(
            range("bytes=900-5000", 1000),
            Range::Part {
                start: 900,
                end: 1000
            }
        );
        assert_eq!(
            range("bytes=-100", 1000),
            Range::Part {
                start: 900,
                end: 1000
            }
        );
        assert_eq!(range("bytes=-5000", 1000), Range::Part { start: 0, end: 1000 });
        assert_eq!(range("bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(range("bytes=-0", 1000), Range::Unsatisfiable);
        assert_eq!(range("bytes=0-1,5-6", 1000), Range::Whole);
        assert_eq!(range("bytes=5-1", 1000), Range::Whole);
        assert_eq!(range("items=0-1", 1000), Range::Whole);
        assert_eq!(parse_range(None, 1000), Range::Whole);
    }

    #[test]
    fn zstd_is_accepted_unless_its_quality_is_zero() {
        let accepts = |v: &str| {
            accepts_zstd(Some(
                &http::HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            ))
        };
        assert!(accepts("gzip, zstd"));
        assert!(accepts("ZSTD;q=0.5"));
        assert!(!accepts("zstd;q=0"));
        assert!(!accepts("gzip"));
        assert!(!accepts_zstd(None));
    }

    fn chunks(body: Body) -> Chunks {
        Chunks::new(body, Duration::from_secs(5))
    }

    #[tokio::test]
    async fn large_uploads_spool_to_a_file_and_store_verified() {
        let store = casket_store::MemoryStore::new();
        let data: Vec<u8> = (0..3 * SPOOL_IN_MEMORY).map(|i| (i % 251) as u8).collect();
        let spooled = Spooled::read(
            chunks(Body::from(data.clone())),
            DigestFunction::Sha256,
            false,
            u64::MAX,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(spooled.content, Content::File(_)));
        let digest = spooled.digest;
        assert_eq!(digest, Digest::of(DigestFunction::Sha256, &data));
        spooled.store(&store).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(store.find_missing(&[digest]).await.unwrap_or_default().is_empty());

        let too_large = Spooled::read(chunks(Body::from(data)), DigestFunction::Sha256, false, 1000).await;
        assert!(matches!(too_large, Err(UploadError::TooLarge(1000))));
    }
}
