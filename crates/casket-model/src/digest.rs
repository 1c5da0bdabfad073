//! Content digests: a digest function, a 32-byte hash and a size.

use std::fmt;
use std::str::FromStr;

use crate::proto::reapi;

/// A hash function blobs can be addressed by. It travels with every [`Digest`], so adding a
/// function never changes a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    /// SHA-256, the REAPI default and the only function BuildStream 1 and Bazel 4 speak.
    Sha256,
    /// BLAKE3 with a 32-byte output.
    Blake3,
}

impl DigestFunction {
    /// Every supported function, default first.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// The lowercase name used in resource names and on disk (`sha256`, `blake3`).
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// Parses a name as printed by [`DigestFunction::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The REAPI `DigestFunction.Value` of this function.
    pub fn to_proto(self) -> reapi::digest_function::Value {
        match self {
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256,
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3,
        }
    }

    /// Maps a REAPI `DigestFunction.Value`; `UNKNOWN` (0) means SHA-256 as the spec says, and an
    /// unsupported function is `None`.
    pub fn from_proto(value: i32) -> Option<Self> {
        match reapi::digest_function::Value::try_from(value).ok()? {
            reapi::digest_function::Value::Unknown | reapi::digest_function::Value::Sha256 => {
                Some(DigestFunction::Sha256)
            }
            reapi::digest_function::Value::Blake3 => Some(DigestFunction::Blake3),
            _ => None,
        }
    }

    /// The digest of the empty blob, which every store holds implicitly.
    pub fn empty_digest(self) -> Digest {
        let hash = match self {
            DigestFunction::Sha256 => EMPTY_SHA256,
            DigestFunction::Blake3 => EMPTY_BLAKE3,
        };
        Digest {
            function: self,
            hash,
            size: 0,
        }
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SHA-256 of nothing (checked against the hasher in the tests).
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27,
    0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// BLAKE3 of nothing.
const EMPTY_BLAKE3: [u8; 32] = [
    0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9, 0x49, 0x9b,
    0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f, 0x32, 0x62,
];

/// Why a digest could not be parsed or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text is not `hash/size`.
    #[error("digest {0:?} is not of the form HASH/SIZE")]
    Syntax(String),
    /// The hash is not 64 lowercase hex digits.
    #[error("digest hash {0:?} is not 64 lowercase hex digits")]
    Hash(String),
    /// The size is negative, not a number, or larger than `i64::MAX`.
    #[error("digest size {0:?} is not an integer between 0 and 2^63-1")]
    Size(String),
    /// The digest function is not one casket supports.
    #[error("unsupported digest function {0:?}")]
    Function(String),
}

/// The address of a blob: which function hashed it, the hash, and the blob's length in bytes.
///
/// A `Digest` is always well-formed: 32 hash bytes and a size that fits the wire's `int64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    hash: [u8; 32],
    size: u64,
}

impl Digest {
    /// Builds a digest from its parts; fails if `size` does not fit the wire's `int64`.
    pub fn new(function: DigestFunction, hash: [u8; 32], size: u64) -> Result<Self, DigestError> {
        if size > i64::MAX as u64 {
            return Err(DigestError::Size(size.to_string()));
        }
        Ok(Digest { function, hash, size })
    }

    /// Hashes `data` with `function`.
    pub fn of(function: DigestFunction, data: &[u8]) -> Self {
        let mut hasher = crate::DigestHasher::new(function);
        hasher.update(data);
        hasher.finish()
    }

    /// Parses `HASH/SIZE` (the REAPI text form) as a digest of `function`.
    pub fn parse(function: DigestFunction, text: &str) -> Result<Self, DigestError> {
        let (hash, size) = text
            .split_once('/')
            .ok_or_else(|| DigestError::Syntax(text.to_owned()))?;
        Self::from_parts(function, hash, size)
    }

    /// Validates a wire digest, which does not say which function made it.
    pub fn from_proto(function: DigestFunction, digest: &reapi::Digest) -> Result<Self, DigestError> {
        if digest.size_bytes < 0 {
            return Err(DigestError::Size(digest.size_bytes.to_string()));
        }
        Self::new(
            function,
            parse_hash(&digest.hash)?,
            digest.size_bytes.unsigned_abs(),
        )
    }

    fn from_parts(function: DigestFunction, hash: &str, size: &str) -> Result<Self, DigestError> {
        // Canonical decimal only: digits, no sign, no leading zero, so text round-trips.
        let size_ok = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let size = size_ok
            .then(|| size.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| DigestError::Size(size.to_owned()))?;
        Self::new(function, parse_hash(hash)?, size)
    }

    /// The function that produced the hash.
    pub fn function(&self) -> DigestFunction {
        self.function
    }

    /// The raw hash bytes.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The hash as 64 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        String::from_utf8(self.hash_hex_bytes().to_vec()).expect("hex digits are ASCII")
    }

    /// The hash as 64 lowercase hex digits, without allocating (for hot paths that build file
    /// names).
    pub fn hash_hex_bytes(&self) -> [u8; 64] {
        hex_digits(&self.hash)
    }

    /// The blob's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True for the empty blob of this digest's function.
    pub fn is_empty_blob(&self) -> bool {
        *self == self.function.empty_digest()
    }

    /// The wire form (the function is carried out of band on the wire).
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }
}

/// Each byte's value as a lowercase hex digit, or [`NOT_HEX`].
const HEX_VALUES: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A value with a bit above the low nibble: no hex digit has it.
const NOT_HEX: u8 = 0x10;

/// Parses a hash written as 64 lowercase hex digits (nothing else is accepted).
pub fn parse_hash(text: &str) -> Result<[u8; 32], DigestError> {
    let invalid = || DigestError::Hash(text.to_owned());
    let digits: &[u8; 64] = text.as_bytes().try_into().map_err(|_| invalid())?;
    parse_hex_digits(digits).ok_or_else(invalid)
}

/// The hash that 64 lowercase hex digits spell, or `None` if any is not one.
pub fn parse_hex_digits(digits: &[u8; 64]) -> Option<[u8; 32]> {
    // Without a branch per digit (a FindMissingBlobs of 10,000 digests spent a third of its
    // time here): bad digits are collected and checked once at the end.
    let mut hash = [0u8; 32];
    let mut seen = 0u8;
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (HEX_VALUES[usize::from(pair[0])], HEX_VALUES[usize::from(pair[1])]);
        seen |= high | low;
        *byte = (high << 4) | (low & 0xf);
    }
    (seen & NOT_HEX == 0).then_some(hash)
}

/// The lowercase hex digits of a hash.
pub fn hex_digits(hash: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(hash) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out
}

/// `HASH/SIZE` for SHA-256; other functions are prefixed, e.g. `blake3:HASH/SIZE`, so that
/// [`FromStr`] round-trips.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function != DigestFunction::Sha256 {
            write!(f, "{}:", self.function)?;
        }
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses `HASH/SIZE` (SHA-256) or `FUNCTION:HASH/SIZE`.
impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some((name, rest)) => {
                let function =
                    DigestFunction::from_name(name).ok_or_else(|| DigestError::Function(name.to_owned()))?;
                Digest::parse(function, rest)
            }
            None => Digest::parse(DigestFunction::Sha256, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_blob_has_the_well_known_digest() {
        let empty = DigestFunction::Sha256.empty_digest();
        assert_eq!(empty.to_string(), format!("{EMPTY_SHA256}/0"));
        assert!(empty.is_empty_blob());
        for function in DigestFunction::ALL {
            assert_eq!(function.empty_digest(), Digest::of(function, b""));
        }
        let zero_size_other_hash = Digest::parse(DigestFunction::Sha256, &format!("{}/0", "0".repeat(64)));
        assert!(!zero_size_other_hash.expect("valid").is_empty_blob());
    }

    #[test]
    fn parse_is_strict() {
        let ok = format!("{EMPTY_SHA256}/0");
        assert!(ok.parse::<Digest>().is_ok());
        for bad in [
            format!("{}/0", EMPTY_SHA256.to_uppercase()),
            format!("{}/0", &EMPTY_SHA256[1..]),
            format!("{EMPTY_SHA256}0/0"),
            format!("{EMPTY_SHA256}/-1"),
            format!("{EMPTY_SHA256}/+1"),
            format!("{EMPTY_SHA256}/00"),
            format!("{EMPTY_SHA256}/044"),
            format!("{EMPTY_SHA256}/"),
            format!("{EMPTY_SHA256}/9223372036854775808"),
            format!("{EMPTY_SHA256} /0"),
            EMPTY_SHA256.to_owned(),
            format!("md5:{EMPTY_SHA256}/0"),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn proto_sizes_are_validated() {
        let negative = reapi::Digest {
            hash: EMPTY_SHA256.into(),
            size_bytes: -1,
        };
        assert_eq!(
            Digest::from_proto(DigestFunction::Sha256, &negative),
            Err(DigestError::Size("-1".into()))
        );
    }

    #[test]
    fn blake3_is_distinguished_in_text() {
        let d = Digest::of(DigestFunction::Blake3, b"abc");
        assert!(d.to_string().starts_with("blake3:"));
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        assert_ne!(d, Digest::of(DigestFunction::Sha256, b"abc"));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(hash in any::<[u8; 32]>(), size in 0..=i64::MAX as u64, blake in any::<bool>()) {
            let function = if blake { DigestFunction::Blake3 } else { DigestFunction::Sha256 };
            let d = Digest::new(function, hash, size).expect("size fits");
            prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
            prop_assert_eq!(Digest::from_proto(function, &d.to_proto()), Ok(d));
        }

        #[test]
        fn parse_never_panics(text in ".{0,80}") {
            let _ = text.parse::<Digest>();
        }

        #[test]
        fn one_digit_that_is_not_lowercase_hex_spoils_a_hash(
            hash in "[0-9a-f]{64}",
            at in 0..64usize,
            bad in "[A-Fg-z/:\\x00]",
        ) {
            let whole = format!("{hash}/1");
            prop_assert!(whole.parse::<Digest>().is_ok());
            let spoiled = format!("{}{bad}{}/1", &hash[..at], &hash[at + 1..]);
            prop_assert!(spoiled.parse::<Digest>().is_err());
        }
    }
}
