//! Generated code for casket's own protos (`proto/`); regenerate with `cargo xtask codegen`.

/// BuildStream 1.6.8's `buildstream.v2` package: the ReferenceStorage service.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod buildstream {
    include!("generated/buildstream.v2.rs");
}
