//! Remote Asset entries: blobs and directories named by URI and qualifiers.
//!
//! An asset is stored once per URI under the hash of (URI, sorted qualifiers), as the Push
//! request that created it, so its references and expiry travel with it. A fetch is a hit only
//! if the content and everything it references are complete in the store of record; a push is
//! accepted only once they are stored.

use std::time::SystemTime;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::google::protobuf::Timestamp;
use bytes::Bytes;
use casket_model::proto::reapi;
use casket_model::{Digest, DigestFunction};
use prost::Message;

use crate::error::{CacheError, Result, digest, digest_function};
use crate::namespace::Namespace;

/// The two kinds of asset. Each is stored as the Push request that made it.
pub trait AssetRecord: Message + Default {
    /// The record's key prefix.
    const KIND: &'static str;
    /// Whether the content is a directory tree (else a blob).
    const DIRECTORY: bool;
    /// The URIs it is stored under.
    fn uris(&self) -> &[String];
    /// Its qualifiers.
    fn qualifiers(&self) -> &[asset::Qualifier];
    /// The digest function of its digests, by REAPI number.
    fn digest_function(&self) -> i32;
    /// The content: a blob or a root directory.
    fn content(&self) -> Option<&reapi::Digest>;
    /// Other blobs it keeps alive.
    fn references_blobs(&self) -> &[reapi::Digest];
    /// Other directory trees it keeps alive.
    fn references_directories(&self) -> &[reapi::Digest];
    /// When it stops being served, if ever.
    fn expire_at(&self) -> Option<&Timestamp>;
}

macro_rules! asset_record {
    ($type:ty, $kind:literal, $directory:literal, $content:ident) => {
        impl AssetRecord for $type {
            const KIND: &'static str = $kind;
            const DIRECTORY: bool = $directory;
            fn uris(&self) -> &[String] {
                &self.uris
            }
            fn qualifiers(&self) -> &[asset::Qualifier] {
                &self.qualifiers
            }
            fn digest_function(&self) -> i32 {
                self.digest_function
            }
            fn content(&self) -> Option<&reapi::Digest> {
                self.$content.as_ref()
            }
            fn references_blobs(&self) -> &[reapi::Digest] {
                &self.references_blobs
            }
            fn references_directories(&self) -> &[reapi::Digest] {
                &self.references_directories
            }
            fn expire_at(&self) -> Option<&Timestamp> {
                self.expire_at.as_ref()
            }
        }
    };
}

asset_record!(asset::PushBlobRequest, "blob", false, blob_digest);
asset_record!(
    asset::PushDirectoryRequest,
    "directory",
    true,
    root_directory_digest
);

/// The record key of `uri` with `qualifiers` (order-insensitive; a repeated name is refused).
fn key(kind: &str, uri: &str, qualifiers: &[asset::Qualifier]) -> Result<String> {
    let mut sorted: Vec<(&str, &str)> = qualifiers
        .iter()
        .map(|q| (q.name.as_str(), q.value.as_str()))
        .collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(CacheError::Invalid("a qualifier name appears twice".to_owned()));
    }
    let mut text = uri.to_owned();
    for (name, value) in sorted {
        text.push('\0');
        text.push_str(name);
        text.push('=');
        text.push_str(value);
    }
    Ok(format!(
        "{kind}/{}",
        Digest::of(DigestFunction::Sha256, text.as_bytes()).hash_hex()
    ))
}

fn require_uris(uris: &[String]) -> Result<()> {
    if uris.is_empty() {
        return Err(CacheError::Invalid("at least one URI is required".to_owned()));
    }
    Ok(())
}

fn expired(expire_at: Option<&Timestamp>) -> bool {
    let Some(t) = expire_at else { return false };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    t.seconds < now
}

/// What a record needs: its content digest, and every blob and directory tree it keeps
/// (the content included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetNeeds {
    /// The content.
    pub content: Digest,
    /// Blobs that must be present.
    pub blobs: Vec<Digest>,
    /// Roots of trees that must be complete.
    pub directories: Vec<Digest>,
}

fn needs<R: AssetRecord>(record: &R) -> Result<AssetNeeds> {
    let function = digest_function(record.digest_function())?;
    let all = |list: &[reapi::Digest]| {
        list.iter()
            .map(|d| digest(function, Some(d)))
            .collect::<Result<Vec<_>>>()
    };
    let content = digest(function, record.content())?;
    let mut blobs = all(record.references_blobs())?;
    let mut directories = all(record.references_directories())?;
    if R::DIRECTORY {
        directories.push(content);
    } else {
        blobs.push(content);
    }
    Ok(AssetNeeds {
        content,
        blobs,
        directories,
    })
}

/// What the asset record stored at `key` keeps alive, or `None` if it cannot be read as one
/// (for expiry).
pub fn record_needs(key: &str, bytes: &[u8]) -> Option<AssetNeeds> {
    fn decode<R: AssetRecord>(bytes: &[u8]) -> Option<AssetNeeds> {
        needs(&R::decode(bytes).ok()?).ok()
    }
    match key.split('/').next()? {
        asset::PushBlobRequest::KIND => decode::<asset::PushBlobRequest>(bytes),
        asset::PushDirectoryRequest::KIND => decode::<asset::PushDirectoryRequest>(bytes),
        _ => None,
    }
}

/// The first of `uris` with an unexpired record of kind `R` under `qualifiers` whose content
/// and references are all complete (checking them extends their lives): the URI, the record
/// and its content digest. A miss is `NotFound`.
pub async fn fetch_asset<R: AssetRecord>(
    namespace: &Namespace,
    uris: &[String],
    qualifiers: &[asset::Qualifier],
) -> Result<(String, R, Digest)> {
    require_uris(uris)?;
    for uri in uris {
        let Some(bytes) = namespace.assets.get(&key(R::KIND, uri, qualifiers)?).await? else {
            continue;
        };
        let record =
            R::decode(bytes.as_ref()).map_err(|e| CacheError::Corrupt(format!("asset {uri}: {e}")))?;
        if expired(record.expire_at()) {
            continue;
        }
        let needs = needs(&record)?;
        if complete(namespace, &needs).await? {
            return Ok((uri.clone(), record, needs.content));
        }
    }
    Err(CacheError::NotFound(
        "no complete asset for these URIs and qualifiers".to_owned(),
    ))
}

/// Stores `record` under each of its URIs, once everything it names is in the store (clients
/// upload content first): `Precondition` naming the first thing missing otherwise.
pub async fn push_asset<R: AssetRecord>(namespace: &Namespace, record: &R) -> Result<()> {
    require_uris(record.uris())?;
    let needs = needs(record)?;
    let named: Vec<Digest> = needs.blobs.iter().chain(&needs.directories).copied().collect();
    let missing = namespace.blobs.find_missing_uncached(&named).await?;
    if let Some(first) = missing.first() {
        return Err(CacheError::Precondition(format!(
            "{first} is not in the CAS: upload it first"
        )));
    }
    let bytes = Bytes::from(record.encode_to_vec());
    for uri in record.uris() {
        namespace
            .assets
            .put(&key(R::KIND, uri, record.qualifiers())?, bytes.clone())
            .await?;
    }
    Ok(())
}

/// Whether every blob and every tree of `needs` is complete (checking extends their lives).
async fn complete(namespace: &Namespace, needs: &AssetNeeds) -> Result<bool> {
    if !namespace
        .blobs
        .find_missing_uncached(&needs.blobs)
        .await?
        .is_empty()
    {
        return Ok(false);
    }
    for root in &needs.directories {
        if casket_tree::Tree::problem(namespace.blobs.as_ref(), root)
            .await?
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(true)
}
