//! FindMissingBlobs without a `String` per digest.
//!
//! An existence check of 10,000 digests is one 700 KB message. The generated types decode every
//! hash into its own `String`, then the handler parses it and answers with fresh `String`s:
//! allocation and copying that cost more than the block store's lookups. These messages read a
//! hash of 64 lowercase hex digits straight into its 32 bytes and write hashes straight from
//! them, and leave everything else (other fields, other lengths, bad UTF-8, unknown fields) to
//! prost's own routines, so they accept and refuse exactly what the generated types do.
//! [`CasService`] routes FindMissingBlobs to them and every other method to the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::{Buf, BufMut};
use casket_model::Digest;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::MAX_MESSAGE_BYTES;
use super::cas::Cas;

/// The method this module answers.
const FIND_MISSING_PATH: &str = "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";

/// A hash as read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WireHash {
    /// 64 lowercase hex digits, already parsed: the only form a valid hash has.
    Parsed([u8; 32]),
    /// Anything else, kept for the same validation and error as a generated `Digest`.
    Text(String),
}

impl Default for WireHash {
    fn default() -> Self {
        WireHash::Text(String::new())
    }
}

/// A REAPI `Digest` whose hash is parsed as it is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WireDigest {
    pub(crate) hash: WireHash,
    pub(crate) size_bytes: i64,
}

impl WireDigest {
    /// The digest of `function` this names, validated as [`casket_cache::digest`] validates a
    /// generated `Digest` (with its errors).
    pub(crate) fn to_digest(&self, function: casket_model::DigestFunction) -> casket_cache::Result<Digest> {
        match &self.hash {
            WireHash::Parsed(hash) if self.size_bytes >= 0 => {
                Digest::new(function, *hash, self.size_bytes.unsigned_abs())
                    .map_err(|e| casket_cache::CacheError::Invalid(e.to_string()))
            }
            _ => casket_cache::digest(function, Some(&self.to_proto())),
        }
    }

    fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: match &self.hash {
                WireHash::Parsed(hash) => {
                    String::from_utf8_lossy(&casket_model::hex_digits(hash)).into_owned()
                }
                WireHash::Text(text) => text.clone(),
            },
            size_bytes: self.size_bytes,
        }
    }

    /// Reads field 1 (`hash`): 64 lowercase hex digits in one contiguous chunk are parsed in
    /// place; anything else goes through prost's string field, errors included.
    fn merge_hash(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        const HEX_LEN: u8 = 64;
        if wire_type == WireType::LengthDelimited {
            let chunk = buf.chunk();
            // A length of 64 is the one-byte varint 64.
            if let Some((&HEX_LEN, rest)) = chunk.split_first()
                && let Some(digits) = rest.first_chunk::<64>()
                && let Some(hash) = casket_model::parse_hex_digits(digits)
            {
                self.hash = WireHash::Parsed(hash);
                buf.advance(1 + 64);
                return Ok(());
            }
        }
        let mut text = String::new();
        encoding::string::merge(wire_type, &mut text, buf, ctx)?;
        let parsed = <&[u8; 64]>::try_from(text.as_bytes())
            .ok()
            .and_then(casket_model::parse_hex_digits);
        self.hash = parsed.map_or(WireHash::Text(text), WireHash::Parsed);
        Ok(())
    }
}

impl From<&Digest> for WireDigest {
    fn from(digest: &Digest) -> Self {
        WireDigest {
            hash: WireHash::Parsed(*digest.hash()),
            // Digests hold sizes up to i64::MAX.
            size_bytes: digest.size() as i64,
        }
    }
}

impl Message for WireDigest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.hash {
            WireHash::Parsed(hash) => {
                encoding::encode_key(1, WireType::LengthDelimited, buf);
                encoding::encode_varint(64, buf);
                buf.put_slice(&casket_model::hex_digits(hash));
            }
            WireHash::Text(text) if !text.is_empty() => encoding::string::encode(1, text, buf),
            WireHash::Text(_) => {}
        }
        if self.size_bytes != 0 {
            encoding::int64::encode(2, &self.size_bytes, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => self.merge_hash(wire_type, buf, ctx),
            2 => encoding::int64::merge(wire_type, &mut self.size_bytes, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let hash = match &self.hash {
            WireHash::Parsed(_) => 1 + 1 + 64,
            WireHash::Text(text) if !text.is_empty() => encoding::string::encoded_len(1, text),
            WireHash::Text(_) => 0,
        };
        let size = if self.size_bytes != 0 {
            encoding::int64::encoded_len(2, &self.size_bytes)
        } else {
            0
        };
        hash + size
    }

    fn clear(&mut self) {
        *self = WireDigest::default();
    }
}

/// `FindMissingBlobsRequest` (fields 1 to 3; others are skipped, as the generated type does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FindMissingRequest {
    pub(crate) instance_name: String,
    pub(crate) blob_digests: Vec<WireDigest>,
    pub(crate) digest_function: i32,
}

impl Message for FindMissingRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.instance_name.is_empty() {
            encoding::string::encode(1, &self.instance_name, buf);
        }
        encoding::message::encode_repeated(2, &self.blob_digests, buf);
        if self.digest_function != 0 {
            encoding::int32::encode(3, &self.digest_function, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::string::merge(wire_type, &mut self.instance_name, buf, ctx),
            2 => encoding::message::merge_repeated(wire_type, &mut self.blob_digests, buf, ctx),
            3 => encoding::int32::merge(wire_type, &mut self.digest_function, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let name = if self.instance_name.is_empty() {
            0
        } else {
            encoding::string::encoded_len(1, &self.instance_name)
        };
        let function = if self.digest_function != 0 {
            encoding::int32::encoded_len(3, &self.digest_function)
        } else {
            0
        };
        name + encoding::message::encoded_len_repeated(2, &self.blob_digests) + function
    }

    fn clear(&mut self) {
        *self = FindMissingRequest::default();
    }
}

/// `FindMissingBlobsResponse` (its digests are field 2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FindMissingResponse {
    pub(crate) missing_blob_digests: Vec<WireDigest>,
}

impl Message for FindMissingResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::message::encode_repeated(2, &self.missing_blob_digests, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            2 => encoding::message::merge_repeated(wire_type, &mut self.missing_blob_digests, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(2, &self.missing_blob_digests)
    }

    fn clear(&mut self) {
        self.missing_blob_digests.clear();
    }
}

/// The ContentAddressableStorage service: FindMissingBlobs on this module's messages, every
/// other method on the generated server.
#[derive(Clone)]
pub(crate) struct CasService {
    cas: Arc<Cas>,
    generated: ContentAddressableStorageServer<Cas>,
}

impl CasService {
    pub(crate) fn new(cas: Cas) -> Self {
        let cas = Arc::new(cas);
        let generated = ContentAddressableStorageServer::from_arc(cas.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        CasService { cas, generated }
    }
}

impl NamedService for CasService {
    const NAME: &'static str = <ContentAddressableStorageServer<Cas> as NamedService>::NAME;
}

/// FindMissingBlobs as a tonic unary service.
struct FindMissing(Arc<Cas>);

impl UnaryService<FindMissingRequest> for FindMissing {
    type Response = FindMissingResponse;
    type Future = BoxFuture<Response<FindMissingResponse>, Status>;

    fn call(&mut self, request: Request<FindMissingRequest>) -> Self::Future {
        let cas = self.0.clone();
        Box::pin(async move { cas.find_missing(request.into_inner()).await.map(Response::new) })
    }
}

impl<B> tower::Service<http::Request<B>> for CasService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != FIND_MISSING_PATH {
            return self.generated.call(request);
        }
        let method = FindMissing(self.cas.clone());
        Box::pin(async move {
            let mut grpc =
                Grpc::new(tonic_prost::ProstCodec::<FindMissingResponse, FindMissingRequest>::default())
                    .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
            Ok(grpc.unary(method, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casket_model::DigestFunction;
    use proptest::prelude::*;

    fn generated_digest() -> impl Strategy<Value = reapi::Digest> {
        let hash = prop_oneof![
            4 => proptest::array::uniform32(any::<u8>()).prop_map(|h| String::from_utf8_lossy(&casket_model::hex_digits(&h)).into_owned()),
            1 => "[0-9a-fA-F]{64}",
            1 => ".{0,70}",
        ];
        let size = prop_oneof![4 => 0..1_i64 << 40, 1 => any::<i64>()];
        (hash, size).prop_map(|(hash, size_bytes)| reapi::Digest { hash, size_bytes })
    }

    fn generated_request() -> impl Strategy<Value = reapi::FindMissingBlobsRequest> {
        (
            ".{0,12}",
            proptest::collection::vec(generated_digest(), 0..40),
            -2..4_i32,
        )
            .prop_map(|(instance_name, blob_digests, digest_function)| {
                reapi::FindMissingBlobsRequest {
                    instance_name,
                    blob_digests,
                    digest_function,
                }
            })
    }

    fn as_generated(wire: &FindMissingRequest) -> reapi::FindMissingBlobsRequest {
        reapi::FindMissingBlobsRequest {
            instance_name: wire.instance_name.clone(),
            blob_digests: wire.blob_digests.iter().map(WireDigest::to_proto).collect(),
            digest_function: wire.digest_function,
        }
    }

    /// What the handler makes of a request: its digests validated as the generated path does.
    fn validated(function: DigestFunction, digests: &[WireDigest]) -> Vec<Result<Digest, String>> {
        digests
            .iter()
            .map(|d| d.to_digest(function).map_err(|e| e.to_string()))
            .collect()
    }

    proptest! {
        /// The generated encoding decodes to the same request, validates to the same digests
        /// and errors, and encodes back byte for byte.
        #[test]
        fn agrees_with_the_generated_types(request in generated_request()) {
            let bytes = request.encode_to_vec();
            let wire = FindMissingRequest::decode(bytes.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&wire.instance_name, &request.instance_name);
            prop_assert_eq!(wire.digest_function, request.digest_function);
            for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
                let expected: Vec<_> = request
                    .blob_digests
                    .iter()
                    .map(|d| casket_cache::digest(function, Some(d)).map_err(|e| e.to_string()))
                    .collect();
                prop_assert_eq!(validated(function, &wire.blob_digests), expected);
            }
            prop_assert_eq!(wire.encoded_len(), bytes.len());
            prop_assert_eq!(wire.encode_to_vec(), bytes);
        }

        /// Damaged requests (valid ones with bytes overwritten and cut short) decode exactly
        /// when the generated type decodes them, to the same request.
        #[test]
        fn damaged_bytes_decode_as_the_generated_type_does(
            request in generated_request(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = request.encode_to_vec();
            if !bytes.is_empty() {
                for (at, byte) in damage {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let generated = reapi::FindMissingBlobsRequest::decode(bytes.as_slice());
            let wire = FindMissingRequest::decode(bytes.as_slice());
            prop_assert_eq!(generated.is_ok(), wire.is_ok());
            if let (Ok(generated), Ok(wire)) = (generated, wire) {
                prop_assert_eq!(as_generated(&wire), generated);
            }
        }

        /// Arbitrary bytes decode exactly when the generated type decodes them, to the same
        /// request.
        #[test]
        fn arbitrary_bytes_decode_as_the_generated_type_does(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let generated = reapi::FindMissingBlobsRequest::decode(bytes.as_slice());
            let wire = FindMissingRequest::decode(bytes.as_slice());
            prop_assert_eq!(generated.is_ok(), wire.is_ok());
            if let (Ok(generated), Ok(wire)) = (generated, wire) {
                prop_assert_eq!(as_generated(&wire), generated);
            }
        }

        /// A response encodes as the generated type encodes the same digests.
        #[test]
        fn responses_encode_as_the_generated_type(hashes in proptest::collection::vec((proptest::array::uniform32(any::<u8>()), 0..u64::MAX >> 1), 0..40)) {
            let digests: Vec<Digest> = hashes.iter().map(|(h, s)| Digest::new(DigestFunction::Sha256, *h, *s)).collect::<Result<_, _>>().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let wire = FindMissingResponse { missing_blob_digests: digests.iter().map(WireDigest::from).collect() };
            let generated = reapi::FindMissingBlobsResponse { missing_blob_digests: digests.iter().map(Digest::to_proto).collect() };
            prop_assert_eq!(wire.encode_to_vec(), generated.encode_to_vec());
            prop_assert_eq!(FindMissingResponse::decode(generated.encode_to_vec().as_slice()).ok(), Some(wire));
        }
    }

    #[test]
    fn a_hash_split_across_chunks_is_still_parsed() {
        let digest = reapi::Digest {
            hash: "ab".repeat(32),
            size_bytes: 7,
        };
        let bytes = reapi::FindMissingBlobsRequest {
            blob_digests: vec![digest.clone()],
            ..Default::default()
        }
        .encode_to_vec();
        let (front, back) = bytes.split_at(20);
        let wire = FindMissingRequest::decode(Buf::chain(front, back)).ok();
        let expected = WireDigest {
            hash: WireHash::Parsed([0xab; 32]),
            size_bytes: 7,
        };
        assert_eq!(wire.map(|w| w.blob_digests), Some(vec![expected]));
    }
}
