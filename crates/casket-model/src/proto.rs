//! Wire types, re-exported from the `bazel-remote-apis` bindings.
//!
//! Conversions between these and the validated model types live next to the model types
//! (`Digest::from_proto`, `Directory::decode`), so this module only names things.

pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
pub use bazel_remote_apis::google::protobuf;
