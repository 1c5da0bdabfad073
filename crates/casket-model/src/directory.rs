//! REAPI `Directory` messages as validated, canonical values.
//!
//! A [`Directory`] holds its entries in one map keyed by [`EntryName`], so names are unique
//! across files, directories and symlinks and always sorted by UTF-8 bytes. [`Directory::encode`]
//! therefore always produces the canonical encoding, and [`Directory::decode`] accepts only
//! bytes that are that encoding: a decoded directory re-encodes to exactly the bytes that were
//! hashed, so its digest can be trusted.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use prost::Message;

use crate::proto::{protobuf, reapi};
use crate::{Digest, DigestError, DigestFunction, EntryName, NameError};

/// Why bytes or a wire message are not a valid canonical `Directory`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The bytes are not a protobuf `Directory` at all.
    #[error("not a Directory message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An entry name is empty, `.`, `..`, or contains `/` or NUL.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Two entries share a name, within one list or across files, directories and symlinks.
    #[error("duplicate entry name {0:?}")]
    Duplicate(String),
    /// A list is not sorted by name bytes.
    #[error("entries are not sorted by name: {0:?} is out of order")]
    Unsorted(String),
    /// A file or directory entry lacks a digest or has a malformed one.
    #[error("entry {name:?} has an invalid digest: {source}")]
    Digest {
        /// The entry's name.
        name: String,
        /// What was wrong with the digest.
        source: DigestError,
    },
    /// A symlink target is empty or contains NUL.
    #[error("symlink {0:?} has an empty target or one containing NUL")]
    SymlinkTarget(String),
    /// Node properties are out of range or unsorted.
    #[error("invalid node properties on {0:?}")]
    Properties(String),
    /// The message is valid but its bytes are not the canonical encoding (unknown fields,
    /// field order, default values written out, ...), so its digest would not be reproducible.
    #[error("Directory bytes are not in canonical encoding")]
    NotCanonical,
}

/// A protobuf timestamp: seconds since the Unix epoch and non-negative nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub seconds: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

/// Optional metadata on a node (REAPI `NodeProperties`). Empty by default; casket captures
/// `mtime` and `unix_mode` only when asked to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeProperties {
    /// The modification time.
    pub mtime: Option<Timestamp>,
    /// The permission bits, at most `0o7777`.
    pub unix_mode: Option<u32>,
    /// Other name/value properties, kept sorted by name.
    pub other: BTreeMap<String, String>,
}

impl NodeProperties {
    /// True when no property is set (the message is then omitted on the wire).
    pub fn is_empty(&self) -> bool {
        self.mtime.is_none() && self.unix_mode.is_none() && self.other.is_empty()
    }

    /// The wire message, or `None` when no property is set.
    pub fn to_proto(&self) -> Option<reapi::NodeProperties> {
        (!self.is_empty()).then(|| reapi::NodeProperties {
            properties: self
                .other
                .iter()
                .map(|(name, value)| reapi::NodeProperty {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            mtime: self.mtime.map(|t| protobuf::Timestamp {
                seconds: t.seconds,
                nanos: t.nanos as i32,
            }),
            unix_mode: self.unix_mode.map(|value| protobuf::UInt32Value { value }),
        })
    }

    fn from_proto(owner: &str, props: Option<&reapi::NodeProperties>) -> Result<Self, DirectoryError> {
        let Some(props) = props else {
            return Ok(NodeProperties::default());
        };
        let bad = || DirectoryError::Properties(owner.to_owned());
        let mtime = match &props.mtime {
            Some(t) if (0..1_000_000_000).contains(&t.nanos) => Some(Timestamp {
                seconds: t.seconds,
                nanos: t.nanos.unsigned_abs(),
            }),
            Some(_) => return Err(bad()),
            None => None,
        };
        let unix_mode = match props.unix_mode {
            Some(m) if m.value <= 0o7777 => Some(m.value),
            Some(_) => return Err(bad()),
            None => None,
        };
        let mut other = BTreeMap::new();
        for p in &props.properties {
            let sorted = other
                .keys()
                .next_back()
                .is_none_or(|last: &String| *last < p.name);
            if !sorted {
                return Err(bad());
            }
            other.insert(p.name.clone(), p.value.clone());
        }
        Ok(NodeProperties {
            mtime,
            unix_mode,
            other,
        })
    }
}

/// A regular file entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileNode {
    /// The digest of the file's content.
    pub digest: Digest,
    /// Whether the file is executable (the owner's execute bit on capture).
    pub executable: bool,
    /// Optional metadata.
    pub properties: NodeProperties,
}

/// A symbolic link entry. The target is stored verbatim: it may be absolute, relative,
/// dangling, or point outside the tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SymlinkNode {
    target: String,
    /// Optional metadata.
    pub properties: NodeProperties,
}

impl SymlinkNode {
    /// A symlink to `target`, which must be non-empty and free of NUL.
    pub fn new(target: impl Into<String>) -> Option<Self> {
        let target = target.into();
        (!target.is_empty() && !target.contains('\0')).then_some(SymlinkNode {
            target,
            properties: NodeProperties::default(),
        })
    }

    /// The link target, verbatim.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// A regular file.
    File(FileNode),
    /// A subdirectory, by the digest of its own `Directory` message.
    Directory(Digest),
    /// A symbolic link.
    Symlink(SymlinkNode),
}

/// The kind of a [`Node`], without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
}

impl Node {
    /// The kind of this node.
    pub fn kind(&self) -> NodeKind {
        match self {
            Node::File(_) => NodeKind::File,
            Node::Directory(_) => NodeKind::Directory,
            Node::Symlink(_) => NodeKind::Symlink,
        }
    }

    /// The digest the node refers to, for files and directories.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Node::File(f) => Some(&f.digest),
            Node::Directory(d) => Some(d),
            Node::Symlink(_) => None,
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::File => "file",
            NodeKind::Directory => "directory",
            NodeKind::Symlink => "symlink",
        })
    }
}

impl Borrow<str> for EntryName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// One level of a Merkle tree: named entries, unique and sorted, plus optional properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    entries: BTreeMap<EntryName, Node>,
    properties: NodeProperties,
}

impl Directory {
    /// An empty directory. Its encoding is zero bytes, so its digest is the empty blob's.
    pub fn new() -> Self {
        Directory::default()
    }

    /// Adds or replaces the entry `name`, returning the node it replaced.
    pub fn insert(&mut self, name: EntryName, node: Node) -> Option<Node> {
        self.entries.insert(name, node)
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.entries.get(name)
    }

    /// Removes and returns the entry called `name`.
    pub fn remove(&mut self, name: &str) -> Option<Node> {
        self.entries.remove(name)
    }

    /// Entries in name-byte order.
    pub fn entries(&self) -> std::collections::btree_map::Iter<'_, EntryName, Node> {
        self.entries.iter()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Properties of the directory itself.
    pub fn properties(&self) -> &NodeProperties {
        &self.properties
    }

    /// Replaces the properties of the directory itself.
    pub fn set_properties(&mut self, properties: NodeProperties) {
        self.properties = properties;
    }

    /// The wire message, in canonical order.
    pub fn to_proto(&self) -> reapi::Directory {
        let mut proto = reapi::Directory {
            node_properties: self.properties.to_proto(),
            ..Default::default()
        };
        for (name, node) in &self.entries {
            let name = name.as_str().to_owned();
            match node {
                Node::File(f) => proto.files.push(reapi::FileNode {
                    name,
                    digest: Some(f.digest.to_proto()),
                    is_executable: f.executable,
                    node_properties: f.properties.to_proto(),
                }),
                Node::Directory(d) => proto.directories.push(reapi::DirectoryNode {
                    name,
                    digest: Some(d.to_proto()),
                }),
                Node::Symlink(s) => proto.symlinks.push(reapi::SymlinkNode {
                    name,
                    target: s.target.clone(),
                    node_properties: s.properties.to_proto(),
                }),
            }
        }
        proto
    }

    /// The canonical encoding: the bytes whose hash is this directory's digest.
    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// The digest of the canonical encoding under `function`.
    pub fn digest(&self, function: DigestFunction) -> Digest {
        Digest::of(function, &self.encode())
    }

    /// Decodes and validates `bytes`, refusing anything but the canonical encoding of a valid
    /// directory. Child digests are taken to be of `function`.
    pub fn decode(function: DigestFunction, bytes: &[u8]) -> Result<Self, DirectoryError> {
        let directory = Directory::from_proto(function, &reapi::Directory::decode(bytes)?)?;
        if directory.encode() != bytes {
            return Err(DirectoryError::NotCanonical);
        }
        Ok(directory)
    }

    /// Validates a wire message: names valid, each list sorted, names unique across lists,
    /// digests well-formed, symlink targets non-empty.
    pub fn from_proto(function: DigestFunction, proto: &reapi::Directory) -> Result<Self, DirectoryError> {
        let digest = |name: &str, d: Option<&reapi::Digest>| {
            let d = d.ok_or_else(|| DirectoryError::Digest {
                name: name.to_owned(),
                source: DigestError::Syntax(String::new()),
            })?;
            Digest::from_proto(function, d).map_err(|source| DirectoryError::Digest {
                name: name.to_owned(),
                source,
            })
        };
        let mut entries = BTreeMap::new();
        let mut add = |last: &mut Option<String>, name: &str, node: Node| {
            if last.as_deref().is_some_and(|last| last >= name) {
                return Err(if last.as_deref() == Some(name) {
                    DirectoryError::Duplicate(name.to_owned())
                } else {
                    DirectoryError::Unsorted(name.to_owned())
                });
            }
            *last = Some(name.to_owned());
            if entries.insert(EntryName::new(name)?, node).is_some() {
                return Err(DirectoryError::Duplicate(name.to_owned()));
            }
            Ok(())
        };
        let mut last = None;
        for f in &proto.files {
            let node = Node::File(FileNode {
                digest: digest(&f.name, f.digest.as_ref())?,
                executable: f.is_executable,
                properties: NodeProperties::from_proto(&f.name, f.node_properties.as_ref())?,
            });
            add(&mut last, &f.name, node)?;
        }
        let mut last = None;
        for d in &proto.directories {
            add(
                &mut last,
                &d.name,
                Node::Directory(digest(&d.name, d.digest.as_ref())?),
            )?;
        }
        let mut last = None;
        for s in &proto.symlinks {
            let mut node = SymlinkNode::new(s.target.clone())
                .ok_or_else(|| DirectoryError::SymlinkTarget(s.name.clone()))?;
            node.properties = NodeProperties::from_proto(&s.name, s.node_properties.as_ref())?;
            add(&mut last, &s.name, Node::Symlink(node))?;
        }
        Ok(Directory {
            entries,
            properties: NodeProperties::from_proto(".", proto.node_properties.as_ref())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sha(data: &[u8]) -> Digest {
        Digest::of(DigestFunction::Sha256, data)
    }

    fn file(name: &str, data: &[u8]) -> reapi::FileNode {
        reapi::FileNode {
            name: name.into(),
            digest: Some(sha(data).to_proto()),
            ..Default::default()
        }
    }

    fn decode_proto(proto: &reapi::Directory) -> Result<Directory, DirectoryError> {
        Directory::decode(DigestFunction::Sha256, &proto.encode_to_vec())
    }

    #[test]
    fn empty_directory_is_the_empty_blob() {
        assert_eq!(Directory::new().encode(), Vec::<u8>::new());
        assert!(Directory::new().digest(DigestFunction::Sha256).is_empty_blob());
    }

    #[test]
    fn refuses_bad_names() {
        for name in ["", ".", "..", "a/b", "../x", "a\0"] {
            let proto = reapi::Directory {
                files: vec![file(name, b"x")],
                ..Default::default()
            };
            assert!(
                matches!(decode_proto(&proto), Err(DirectoryError::Name(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn refuses_unsorted_and_duplicates() {
        let unsorted = reapi::Directory {
            files: vec![file("b", b"1"), file("a", b"2")],
            ..Default::default()
        };
        assert_eq!(decode_proto(&unsorted), Err(DirectoryError::Unsorted("a".into())));
        let dup = reapi::Directory {
            files: vec![file("a", b"1"), file("a", b"2")],
            ..Default::default()
        };
        assert_eq!(decode_proto(&dup), Err(DirectoryError::Duplicate("a".into())));
        let across = reapi::Directory {
            files: vec![file("a", b"1")],
            symlinks: vec![reapi::SymlinkNode {
                name: "a".into(),
                target: "t".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        assert_eq!(decode_proto(&across), Err(DirectoryError::Duplicate("a".into())));
    }

    #[test]
    fn refuses_missing_digest_and_empty_target() {
        let no_digest = reapi::Directory {
            directories: vec![reapi::DirectoryNode {
                name: "d".into(),
                digest: None,
            }],
            ..Default::default()
        };
        assert!(matches!(
            decode_proto(&no_digest),
            Err(DirectoryError::Digest { .. })
        ));
        let empty_target = reapi::Directory {
            symlinks: vec![reapi::SymlinkNode {
                name: "l".into(),
                target: String::new(),
                node_properties: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            decode_proto(&empty_target),
            Err(DirectoryError::SymlinkTarget("l".into()))
        );
    }

    #[test]
    fn refuses_non_canonical_bytes() {
        let proto = reapi::Directory {
            files: vec![file("a", b"1")],
            ..Default::default()
        };
        let mut bytes = proto.encode_to_vec();
        // An unknown field (number 15, varint 1) appended to a valid message.
        bytes.extend_from_slice(&[0x78, 0x01]);
        assert_eq!(
            Directory::decode(DigestFunction::Sha256, &bytes),
            Err(DirectoryError::NotCanonical)
        );
    }

    #[derive(Debug, Clone)]
    enum Entry {
        File(Vec<u8>, bool),
        Dir(Vec<u8>),
        Link(String),
    }

    fn arb_entries() -> impl Strategy<Value = BTreeMap<String, Entry>> {
        let entry = prop_oneof![
            (proptest::collection::vec(any::<u8>(), 0..8), any::<bool>())
                .prop_map(|(d, x)| Entry::File(d, x)),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Entry::Dir),
            "[^\u{0}]{1,12}".prop_map(Entry::Link),
        ];
        proptest::collection::btree_map("[^/\u{0}]{1,10}", entry, 0..12)
            .prop_filter("names must be valid", |m| m.keys().all(|k| k != "." && k != ".."))
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(entries in arb_entries(), mtime in proptest::option::of((any::<i64>(), 0u32..1_000_000_000))) {
            let mut dir = Directory::new();
            for (name, entry) in &entries {
                let node = match entry {
                    Entry::File(data, executable) => Node::File(FileNode {
                        digest: sha(data),
                        executable: *executable,
                        properties: NodeProperties {
                            mtime: mtime.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                            ..Default::default()
                        },
                    }),
                    Entry::Dir(data) => Node::Directory(sha(data)),
                    Entry::Link(target) => Node::Symlink(SymlinkNode::new(target.clone()).expect("valid target")),
                };
                dir.insert(EntryName::new(name.clone()).expect("valid name"), node);
            }
            let bytes = dir.encode();
            let decoded = Directory::decode(DigestFunction::Sha256, &bytes).expect("canonical");
            prop_assert_eq!(&decoded, &dir);
            prop_assert_eq!(decoded.encode(), bytes);
            let proto = dir.to_proto();
            let sorted = |names: Vec<&String>| names.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes());
            prop_assert!(sorted(proto.files.iter().map(|f| &f.name).collect()));
            prop_assert!(sorted(proto.directories.iter().map(|d| &d.name).collect()));
            prop_assert!(sorted(proto.symlinks.iter().map(|s| &s.name).collect()));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Directory::decode(DigestFunction::Sha256, &bytes);
        }
    }
}
