//! The vocabulary of casket: pure values, no I/O, no async runtime.
//!
//! * [`Digest`] names a blob by digest function, hash and size.
//! * [`DigestHasher`] turns a byte stream into a [`Digest`]; every verified write uses one.
//! * [`EntryName`] is one path component, [`RefName`] a slash-separated artifact name.
//! * [`Directory`] is a REAPI `Directory` message that is canonical by construction: decoding
//!   one from the wire validates it, and encoding it always yields the canonical bytes.
//!
//! The REAPI wire types live in [`proto`]; they are never used where a validated value is meant.

mod digest;
mod directory;
mod hasher;
mod name;
pub mod proto;

pub use digest::{Digest, DigestError, DigestFunction, hex_digits, parse_hash, parse_hex_digits};
pub use directory::{
    Directory, DirectoryError, FileNode, Node, NodeKind, NodeProperties, SymlinkNode, Timestamp,
};
pub use hasher::DigestHasher;
pub use name::{EntryName, NameError, RefName};
