//! Streaming zstd for `compressed-blobs/zstd/` transfers, in bounded pieces: a compressed
//! stream is never held whole, and decompression stops at the declared size (a small
//! compressed stream must not be able to make the server write gigabytes).

use bytes::{Buf, Bytes};
use casket_store::BlobStream;
use futures::{Stream, StreamExt};
use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// Most bytes one decompression step produces.
const OUTPUT_PIECE: usize = 1 << 20;

/// Compression level for data the server sends: fast, since reads are latency-bound.
pub const SEND_LEVEL: i32 = 1;

/// Why a compressed stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    /// The bytes are not a valid zstd stream.
    #[error("invalid zstd data: {0}")]
    Invalid(#[source] std::io::Error),
    /// The stream decompresses to more than the blob's declared size.
    #[error("zstd data decompresses to more than the declared {0} bytes")]
    TooLong(u64),
    /// The stream ended within a frame.
    #[error("zstd data ends within a frame")]
    Truncated,
}

/// One piece of a compressed stream; `last` marks the end of the frame.
pub struct Piece {
    /// Compressed bytes (never empty, except possibly for a last piece).
    pub data: Bytes,
    /// Whether this piece ends the frame.
    pub last: bool,
}

/// `chunks` compressed into one zstd frame, piece by piece (empty pieces are skipped). A read
/// or compression error is the stream's last item.
pub fn compress_stream(chunks: BlobStream) -> impl Stream<Item = std::io::Result<Piece>> + Send + 'static {
    let encoder = ZstdEncoder::new(SEND_LEVEL);
    futures::stream::unfold((chunks, Some(encoder)), |(mut chunks, encoder)| async move {
        let mut encoder = match encoder? {
            Ok(encoder) => encoder,
            Err(e) => return Some((Err(e), (chunks, None))),
        };
        loop {
            let piece = match chunks.next().await {
                Some(Ok(chunk)) => match encoder.compress(&chunk) {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Ok(Piece { data, last: false }),
                    Err(e) => Err(e),
                },
                Some(Err(e)) => Err(std::io::Error::other(e)),
                None => encoder.finish().map(|data| Piece { data, last: true }),
            };
            let next = (piece.as_ref().is_ok_and(|p| !p.last)).then_some(Ok(encoder));
            return Some((piece, (chunks, next)));
        }
    })
}

/// Compresses a stream chunk by chunk into one zstd frame.
pub struct ZstdEncoder {
    encoder: Encoder<'static>,
}

impl ZstdEncoder {
    /// An encoder at `level`.
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(ZstdEncoder {
            encoder: Encoder::new(level)?,
        })
    }

    /// Compresses `input`; what comes out may be empty while zstd buffers.
    pub fn compress(&mut self, input: &[u8]) -> std::io::Result<Bytes> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
        let mut input = InBuffer::around(input);
        while input.pos() < input.src.len() {
            if out.len() == out.capacity() {
                out.reserve(OUTPUT_PIECE);
            }
            let pos = out.len();
            self.encoder
                .run(&mut input, &mut OutBuffer::around_pos(&mut out, pos))?;
        }
        Ok(Bytes::from(out))
    }

    /// Ends the frame and returns its last bytes.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        loop {
            let pos = out.len();
            let remaining = self
                .encoder
                .finish(&mut OutBuffer::around_pos(&mut out, pos), true)?;
            if remaining == 0 {
                return Ok(Bytes::from(out));
            }
            out.reserve(remaining);
        }
    }
}

/// Decompresses a stream of zstd frames fed in pieces, producing at most `limit` bytes.
pub struct ZstdDecoder {
    decoder: Decoder<'static>,
    input: Bytes,
    limit: u64,
    produced: u64,
    /// Whether the last step ended a frame (so the stream may end here).
    at_frame_end: bool,
}

impl ZstdDecoder {
    /// A decoder refusing to produce more than `limit` bytes.
    pub fn new(limit: u64) -> Result<Self, CompressionError> {
        Ok(ZstdDecoder {
            decoder: Decoder::new().map_err(CompressionError::Invalid)?,
            input: Bytes::new(),
            limit,
            produced: 0,
            at_frame_end: false,
        })
    }

    /// Adds compressed input. Drain [`ZstdDecoder::next_piece`] before feeding more.
    pub fn feed(&mut self, input: Bytes) {
        debug_assert!(self.input.is_empty(), "fed before the previous input was drained");
        self.input = input;
    }

    /// The next piece of decompressed output (at most 1 MiB), or `None` once everything fed
    /// so far has been decompressed.
    pub fn next_piece(&mut self) -> Result<Option<Bytes>, CompressionError> {
        // One byte more than allowed, so that an overlong stream is caught.
        let room = (self.limit - self.produced).saturating_add(1);
        let mut out = Vec::with_capacity(OUTPUT_PIECE.min(usize::try_from(room).unwrap_or(OUTPUT_PIECE)));
        loop {
            let mut input = InBuffer::around(&self.input);
            let before = out.len();
            let hint = self
                .decoder
                .run(&mut input, &mut OutBuffer::around_pos(&mut out, before))
                .map_err(CompressionError::Invalid)?;
            let consumed = input.pos();
            self.input.advance(consumed);
            let progressed = consumed > 0 || out.len() > before;
            if progressed {
                self.at_frame_end = hint == 0;
            }
            if !progressed || out.len() == out.capacity() || self.input.is_empty() {
                break;
            }
        }
        self.produced += out.len() as u64;
        if self.produced > self.limit {
            return Err(CompressionError::TooLong(self.limit));
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    /// Checks the stream ended cleanly, at the end of a frame; returns the bytes produced.
    pub fn finish(&self) -> Result<u64, CompressionError> {
        if self.at_frame_end && self.input.is_empty() {
            Ok(self.produced)
        } else {
            Err(CompressionError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decompress_all(compressed: &[u8], piece: usize, limit: u64) -> Result<Vec<u8>, CompressionError> {
        let mut decoder = ZstdDecoder::new(limit)?;
        let mut out = Vec::new();
        for chunk in compressed.chunks(piece.max(1)) {
            decoder.feed(Bytes::copy_from_slice(chunk));
            while let Some(piece) = decoder.next_piece()? {
                out.extend_from_slice(&piece);
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    fn compress_all(data: &[u8], piece: usize) -> Vec<u8> {
        let mut encoder = ZstdEncoder::new(SEND_LEVEL).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        for chunk in data.chunks(piece.max(1)) {
            out.extend_from_slice(&encoder.compress(chunk).unwrap_or_else(|e| panic!("{e}")));
        }
        out.extend_from_slice(&encoder.finish().unwrap_or_else(|e| panic!("{e}")));
        out
    }

    proptest! {
        #[test]
        fn round_trips_in_any_pieces(data in proptest::collection::vec(0u8..4, 0..20_000), a in 1usize..5000, b in 1usize..5000) {
            let compressed = compress_all(&data, a);
            let back = decompress_all(&compressed, b, data.len() as u64).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(back, data);
        }
    }

    #[test]
    fn the_empty_blob_is_one_small_frame() {
        let compressed = compress_all(&[], 1);
        assert!(!compressed.is_empty());
        assert_eq!(decompress_all(&compressed, 3, 0).ok(), Some(Vec::new()));
    }

    #[test]
    fn concatenated_frames_decode_as_one_stream() {
        let mut compressed = compress_all(b"hello ", 100);
        compressed.extend(compress_all(b"world", 100));
        assert_eq!(
            decompress_all(&compressed, 7, 11).ok(),
            Some(b"hello world".to_vec())
        );
    }

    #[test]
    fn a_bomb_stops_at_the_declared_size() {
        let compressed = compress_all(&vec![0u8; 64 << 20], 1 << 20);
        assert!(compressed.len() < 64 << 10);
        let mut decoder = ZstdDecoder::new(1000).unwrap_or_else(|e| panic!("{e}"));
        decoder.feed(Bytes::from(compressed));
        assert!(matches!(
            decoder.next_piece(),
            Err(CompressionError::TooLong(1000))
        ));
    }

    #[test]
    fn truncated_and_garbage_streams_are_refused() {
        let compressed = compress_all(&[7u8; 5000], 100);
        let cut = &compressed[..compressed.len() - 2];
        assert!(matches!(
            decompress_all(cut, 10, 5000),
            Err(CompressionError::Truncated)
        ));
        assert!(matches!(
            decompress_all(b"not zstd at all", 10, 5000),
            Err(CompressionError::Invalid(_))
        ));
    }
}
