//! The block store's on-disk formats: a record (header, then content) in a block file, and a
//! sealed block's index file.
//!
//! A record header is 48 bytes, little-endian: magic `CKR1`, kind (blob or tombstone), digest
//! function, two zero bytes, content size (u32), when it was written (u32 seconds since the
//! UNIX epoch), the 32-byte hash. A blob's content follows its header; a tombstone (a delete)
//! has none. Records are packed back to back from offset 0.
//!
//! An index file lists a sealed block's records (offset and header fields, 46 bytes each)
//! behind a header naming the block and its length, and ends with the BLAKE3 hash of
//! everything before it, so a torn or stale index is detected and the block is scanned
//! instead.

use casket_model::{Digest, DigestFunction};

/// Bytes in a record header.
pub(crate) const HEADER_LEN: usize = 48;
const MAGIC: [u8; 4] = *b"CKR1";
const INDEX_MAGIC: [u8; 4] = *b"CKX1";
const INDEX_HEADER_LEN: usize = 16;
const INDEX_ENTRY_LEN: usize = 46;
const CHECKSUM_LEN: usize = 32;

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A blob: its content follows.
    Blob,
    /// The blob was deleted: earlier records of it no longer count.
    Tombstone,
}

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) digest: Digest,
    /// Seconds since the UNIX epoch.
    pub(crate) written: u32,
}

impl Header {
    /// Bytes the record takes in the block, header included.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN as u64
            + match self.kind {
                Kind::Blob => self.digest.size(),
                Kind::Tombstone => 0,
            }
    }

    /// Appends the header to `out`. The digest's size must fit in a u32 (the store's small-blob
    /// limit guarantees it).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(kind_code(self.kind));
        out.push(function_code(self.digest.function()));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(self.digest.size() as u32).to_le_bytes());
        out.extend_from_slice(&self.written.to_le_bytes());
        out.extend_from_slice(self.digest.hash());
    }

    /// Parses a header; `None` unless every field is valid.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        if bytes[..4] != MAGIC || bytes[6..8] != [0, 0] {
            return None;
        }
        let kind = kind_from_code(bytes[4])?;
        let function = function_from_code(bytes[5])?;
        let size = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
        let written = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
        let hash: [u8; 32] = bytes[16..48].try_into().ok()?;
        Some(Header {
            kind,
            digest: Digest::new(function, hash, size.into()).ok()?,
            written,
        })
    }
}

/// One record of a sealed block, as its index file lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Where the record's header starts.
    pub(crate) offset: u32,
    pub(crate) header: Header,
}

/// Encodes a sealed block's index: block `seq`, `len` bytes long, holding `entries`.
pub(crate) fn encode_index(seq: u32, len: u64, entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN + CHECKSUM_LEN);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let mut header = Vec::with_capacity(HEADER_LEN);
    for entry in entries {
        out.extend_from_slice(&entry.offset.to_le_bytes());
        header.clear();
        entry.header.encode(&mut header);
        // The magic and the two zero bytes are implied.
        out.extend_from_slice(&header[4..6]);
        out.extend_from_slice(&header[8..]);
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Decodes the index of block `seq`, `len` bytes long; `None` if it is torn, stale, for
/// another block or lists a record beyond the block's end.
pub(crate) fn decode_index(bytes: &[u8], seq: u32, len: u64) -> Option<Vec<IndexEntry>> {
    let body_len = bytes.len().checked_sub(CHECKSUM_LEN)?;
    let (body, checksum) = bytes.split_at(body_len);
    if blake3::hash(body).as_bytes() != checksum || body.len() < INDEX_HEADER_LEN || body[..4] != INDEX_MAGIC
    {
        return None;
    }
    let indexed_seq = u32::from_le_bytes(body[4..8].try_into().ok()?);
    let indexed_len = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let records = &body[INDEX_HEADER_LEN..];
    if indexed_seq != seq || indexed_len != len || records.len() % INDEX_ENTRY_LEN != 0 {
        return None;
    }
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    records
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|record| {
            let offset = u32::from_le_bytes(record[..4].try_into().ok()?);
            header[4..6].copy_from_slice(&record[4..6]);
            header[8..].copy_from_slice(&record[6..]);
            let header = Header::decode(&header)?;
            (u64::from(offset) + header.record_len() <= len).then_some(IndexEntry { offset, header })
        })
        .collect()
}

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Blob => 0,
        Kind::Tombstone => 1,
    }
}

fn kind_from_code(code: u8) -> Option<Kind> {
    match code {
        0 => Some(Kind::Blob),
        1 => Some(Kind::Tombstone),
        _ => None,
    }
}

/// A digest function's code in records and in the in-memory index.
pub(crate) fn function_code(function: DigestFunction) -> u8 {
    match function {
        DigestFunction::Sha256 => 0,
        DigestFunction::Blake3 => 1,
    }
}

fn function_from_code(code: u8) -> Option<DigestFunction> {
    match code {
        0 => Some(DigestFunction::Sha256),
        1 => Some(DigestFunction::Blake3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: Kind, function: DigestFunction, data: &[u8], written: u32) -> Header {
        Header {
            kind,
            digest: Digest::of(function, data),
            written,
        }
    }

    #[test]
    fn headers_round_trip() {
        for function in DigestFunction::ALL {
            for kind in [Kind::Blob, Kind::Tombstone] {
                let h = header(kind, function, b"hello", 1_700_000_000);
                let mut out = Vec::new();
                h.encode(&mut out);
                assert_eq!(out.len(), HEADER_LEN);
                assert_eq!(Header::decode(&out), Some(h));
            }
        }
    }

    #[test]
    fn damaged_headers_are_refused() {
        let mut out = Vec::new();
        header(Kind::Blob, DigestFunction::Sha256, b"x", 1).encode(&mut out);
        for (at, value) in [(0, b'X'), (4, 7), (5, 9), (6, 1)] {
            let mut bad = out.clone();
            bad[at] = value;
            assert_eq!(Header::decode(&bad), None, "byte {at}");
        }
        assert_eq!(Header::decode(&out[..HEADER_LEN - 1]), None);
        assert_eq!(Header::decode(&[0; HEADER_LEN]), None);
    }

    #[test]
    fn indexes_round_trip_and_detect_damage() {
        let entries = vec![
            IndexEntry {
                offset: 0,
                header: header(Kind::Blob, DigestFunction::Sha256, b"abc", 5),
            },
            IndexEntry {
                offset: 51,
                header: header(Kind::Tombstone, DigestFunction::Blake3, b"gone", 6),
            },
        ];
        let encoded = encode_index(7, 99, &entries);
        assert_eq!(decode_index(&encoded, 7, 99), Some(entries));
        assert_eq!(decode_index(&encoded, 8, 99), None, "another block");
        assert_eq!(decode_index(&encoded, 7, 98), None, "another length");
        assert_eq!(decode_index(&encoded[..encoded.len() - 1], 7, 99), None, "torn");
        let mut flipped = encoded.clone();
        flipped[20] ^= 1;
        assert_eq!(decode_index(&flipped, 7, 99), None, "flipped bit");
        let beyond = encode_index(
            1,
            10,
            &[IndexEntry {
                offset: 0,
                header: header(Kind::Blob, DigestFunction::Sha256, b"abc", 5),
            }],
        );
        assert_eq!(decode_index(&beyond, 1, 10), None, "a record past the end");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), seq: u32, len: u64) {
            let _ = Header::decode(&bytes);
            let _ = decode_index(&bytes, seq, len);
        }
    }
}
