//! Incremental hashing of a byte stream into a [`Digest`].

use sha2::Digest as _;

use crate::{Digest, DigestFunction};

/// Hashes bytes fed in any number of pieces and yields the [`Digest`] of their concatenation.
#[derive(Clone)]
pub struct DigestHasher {
    state: State,
    len: u64,
}

#[derive(Clone)]
enum State {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl DigestHasher {
    /// Starts an empty hash with `function`.
    pub fn new(function: DigestFunction) -> Self {
        let state = match function {
            DigestFunction::Sha256 => State::Sha256(sha2::Sha256::new()),
            DigestFunction::Blake3 => State::Blake3(Box::default()),
        };
        DigestHasher { state, len: 0 }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Sha256(h) => h.update(data),
            State::Blake3(h) => {
                h.update(data);
            }
        }
        self.len += data.len() as u64;
    }

    /// How many bytes have been fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (function, hash) = match self.state {
            State::Sha256(h) => (DigestFunction::Sha256, h.finalize().into()),
            State::Blake3(h) => (DigestFunction::Blake3, *h.finalize().as_bytes()),
        };
        Digest::new(function, hash, self.len).expect("no stream is longer than 2^63 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hash_like_the_whole() {
        for function in DigestFunction::ALL {
            let mut h = DigestHasher::new(function);
            h.update(b"hello ");
            h.update(b"world");
            assert_eq!(h.finish(), Digest::of(function, b"hello world"));
        }
    }

    #[test]
    fn known_vectors() {
        assert_eq!(
            Digest::of(DigestFunction::Sha256, b"abc").hash_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Digest::of(DigestFunction::Blake3, b"").hash_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
