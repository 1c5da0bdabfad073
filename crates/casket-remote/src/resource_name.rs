//! ByteStream resource names (REAPI v2):
//!
//! ```text
//! read:  {instance/}blobs/{function/}{hash}/{size}
//!        {instance/}compressed-blobs/{compressor}/{function/}{hash}/{size}
//! write: {instance/}uploads/{uuid}/blobs/{function/}{hash}/{size}{/metadata...}
//!        {instance/}uploads/{uuid}/compressed-blobs/{compressor}/{function/}{hash}/{size}{/...}
//! ```
//!
//! The instance name may span several segments or be empty. Reserved words (`blobs`,
//! `compressed-blobs`, `uploads`) never appear inside an instance name, so parsing anchors on
//! the first of them. The function segment is omitted for SHA-256.

use casket_model::{Digest, DigestFunction};

/// Why a resource name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resource name {name:?}: {reason}")]
pub struct ResourceNameError {
    name: String,
    reason: String,
}

impl ResourceNameError {
    fn new(name: &str, reason: impl Into<String>) -> Self {
        ResourceNameError {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A compression format of `compressed-blobs/` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressor {
    /// Zstandard.
    Zstd,
}

/// A parsed resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    /// The instance name (may be empty).
    pub instance: String,
    /// The blob.
    pub digest: Digest,
    /// Set for `compressed-blobs/` names.
    pub compressor: Option<Compressor>,
    /// The client's upload id, for write names.
    pub upload: Option<String>,
}

impl ResourceName {
    /// Parses a `Read` resource name.
    pub fn parse_read(name: &str) -> Result<Self, ResourceNameError> {
        let segments: Vec<&str> = name.split('/').collect();
        let at = segments
            .iter()
            .position(|s| matches!(*s, "blobs" | "compressed-blobs"))
            .ok_or_else(|| ResourceNameError::new(name, "no blobs/ or compressed-blobs/ segment"))?;
        if segments[..at].contains(&"uploads") {
            return Err(ResourceNameError::new(name, "an upload name is not readable"));
        }
        let (digest, compressor, rest) = parse_blob(name, &segments[at..])?;
        if !rest.is_empty() {
            return Err(ResourceNameError::new(name, "unexpected segments after the size"));
        }
        Ok(ResourceName {
            instance: instance(name, &segments[..at])?,
            digest,
            compressor,
            upload: None,
        })
    }

    /// Parses a `Write` resource name; anything after the size is metadata and ignored.
    pub fn parse_write(name: &str) -> Result<Self, ResourceNameError> {
        let segments: Vec<&str> = name.split('/').collect();
        let at = segments
            .iter()
            .position(|s| *s == "uploads")
            .ok_or_else(|| ResourceNameError::new(name, "no uploads/ segment"))?;
        let upload = segments
            .get(at + 1)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ResourceNameError::new(name, "no upload id after uploads/"))?;
        let (digest, compressor, _metadata) = parse_blob(name, &segments[at + 2..])?;
        Ok(ResourceName {
            instance: instance(name, &segments[..at])?,
            digest,
            compressor,
            upload: Some((*upload).to_owned()),
        })
    }
}

/// The instance name of `segments`: empty, or segments none of which is empty, `.` or `..`
/// (so a name never starts with `/` and never climbs out of anything it is joined to).
fn instance(name: &str, segments: &[&str]) -> Result<String, ResourceNameError> {
    if let Some(bad) = segments.iter().find(|s| matches!(**s, "" | "." | "..")) {
        return Err(ResourceNameError::new(
            name,
            format!("the instance name has a {bad:?} segment"),
        ));
    }
    Ok(segments.join("/"))
}

/// `{instance/}blobs/{function/}{hash}/{size}` or its `compressed-blobs/zstd/` form.
pub fn read_name(instance: &str, digest: &Digest, compressor: Option<Compressor>) -> String {
    format!("{}{}", instance_prefix(instance), blob_path(digest, compressor))
}

/// `{instance/}uploads/{upload}/blobs/{function/}{hash}/{size}` or its compressed form.
pub fn write_name(instance: &str, upload: &str, digest: &Digest, compressor: Option<Compressor>) -> String {
    format!(
        "{}uploads/{upload}/{}",
        instance_prefix(instance),
        blob_path(digest, compressor)
    )
}

fn instance_prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

fn blob_path(digest: &Digest, compressor: Option<Compressor>) -> String {
    let kind = match compressor {
        None => "blobs",
        Some(Compressor::Zstd) => "compressed-blobs/zstd",
    };
    // The function segment is omitted for SHA-256, which servers infer from the hash length.
    let function = match digest.function() {
        DigestFunction::Sha256 => String::new(),
        other => format!("{}/", other.name()),
    };
    format!("{kind}/{function}{}/{}", digest.hash_hex(), digest.size())
}

/// Parses `blobs/...` or `compressed-blobs/...`, returning what follows the size.
fn parse_blob<'a>(
    name: &str,
    segments: &'a [&'a str],
) -> Result<(Digest, Option<Compressor>, &'a [&'a str]), ResourceNameError> {
    let bad = |reason: &str| ResourceNameError::new(name, reason);
    let (compressor, mut rest) = match segments.first() {
        Some(&"blobs") => (None, &segments[1..]),
        Some(&"compressed-blobs") => match segments.get(1) {
            Some(&"zstd") => (Some(Compressor::Zstd), &segments[2..]),
            Some(other) => return Err(bad(&format!("unsupported compressor {other:?}"))),
            None => return Err(bad("no compressor after compressed-blobs/")),
        },
        _ => return Err(bad("expected blobs/ or compressed-blobs/")),
    };
    let mut function = DigestFunction::Sha256;
    if let Some(named) = rest.first().and_then(|s| DigestFunction::from_name(s)) {
        function = named;
        rest = &rest[1..];
    }
    let [hash, size, rest @ ..] = rest else {
        return Err(bad("expected HASH/SIZE"));
    };
    let digest = Digest::parse(function, &format!("{hash}/{size}")).map_err(|e| bad(&e.to_string()))?;
    Ok((digest, compressor, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn formatted_names_parse_back() {
        for function in DigestFunction::ALL {
            let digest = Digest::of(function, b"named");
            for compressor in [None, Some(Compressor::Zstd)] {
                for instance in ["", "a", "a/b"] {
                    let read =
                        ResourceName::parse_read(&read_name(instance, &digest, compressor)).expect("read");
                    assert_eq!(
                        (read.instance.as_str(), read.digest, read.compressor),
                        (instance, digest, compressor)
                    );
                    let write = ResourceName::parse_write(&write_name(instance, "u-1", &digest, compressor))
                        .expect("write");
                    assert_eq!(
                        (write.instance.as_str(), write.digest, write.upload.as_deref()),
                        (instance, digest, Some("u-1"))
                    );
                }
            }
        }
    }

    #[test]
    fn reads() {
        let plain = ResourceName::parse_read(&format!("blobs/{HASH}/0")).expect("plain");
        assert_eq!((plain.instance.as_str(), plain.compressor), ("", None));
        let deep = ResourceName::parse_read(&format!("a/b/c/blobs/{HASH}/0")).expect("instance");
        assert_eq!(deep.instance, "a/b/c");
        let zstd = ResourceName::parse_read(&format!("i/compressed-blobs/zstd/{HASH}/0")).expect("zstd");
        assert_eq!(zstd.compressor, Some(Compressor::Zstd));
        let blake = ResourceName::parse_read(&format!("blobs/blake3/{HASH}/7")).expect("blake3");
        assert_eq!(blake.digest.function(), DigestFunction::Blake3);
        for bad in [
            format!("blobs/{HASH}"),
            format!("blobs/{HASH}/x"),
            format!("blobs/{HASH}/1/extra"),
            format!("compressed-blobs/lz4/{HASH}/0"),
            format!("uploads/u/blobs/{HASH}/0"),
            format!("blobs/{}/0", &HASH[1..]),
            "".to_owned(),
        ] {
            assert!(ResourceName::parse_read(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_names_that_climb_or_are_absolute_are_refused() {
        for instance in ["../../etc/passwd", "/abs", "a//b", "a/./b", "a/..", "."] {
            let read = format!("{instance}/blobs/{HASH}/0");
            let error = ResourceName::parse_read(&read).expect_err(&read).to_string();
            assert!(error.contains("instance name"), "{read}: {error}");
            let write = format!("{instance}/uploads/u/blobs/{HASH}/0");
            assert!(ResourceName::parse_write(&write).is_err(), "{write}");
        }
        let nested = ResourceName::parse_read(&format!("a/b.c/blobs/{HASH}/0")).expect("nested");
        assert_eq!(nested.instance, "a/b.c");
    }

    #[test]
    fn writes() {
        let w = ResourceName::parse_write(&format!("uploads/1234/blobs/{HASH}/0")).expect("plain");
        assert_eq!((w.instance.as_str(), w.upload.as_deref()), ("", Some("1234")));
        let meta =
            ResourceName::parse_write(&format!("inst/uploads/u/blobs/{HASH}/0/some/metadata")).expect("meta");
        assert_eq!(meta.instance, "inst");
        let z =
            ResourceName::parse_write(&format!("uploads/u/compressed-blobs/zstd/{HASH}/0")).expect("zstd");
        assert_eq!(z.compressor, Some(Compressor::Zstd));
        for bad in [
            format!("blobs/{HASH}/0"),
            format!("uploads//blobs/{HASH}/0"),
            format!("uploads/u/{HASH}/0"),
        ] {
            assert!(ResourceName::parse_write(&bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(name in "[a-z0-9/]{0,120}") {
            let _ = ResourceName::parse_read(&name);
            let _ = ResourceName::parse_write(&name);
        }

        #[test]
        fn instances_round_trip(instance in "([a-z]{1,6}/){0,3}", size in 0u64..1_000_000) {
            let name = format!("{instance}blobs/{HASH}/{size}");
            let parsed = ResourceName::parse_read(&name).expect("valid");
            prop_assert_eq!(parsed.instance, instance.trim_end_matches('/'));
            prop_assert_eq!(parsed.digest.size(), size);
        }
    }
}
