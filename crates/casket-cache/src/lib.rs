//! The cache layer: what a build cache means, free of any protocol.
//!
//! Every frontend — the gRPC services of `casket serve`, and later BuildStream 2's LocalCAS
//! socket and the HTTP cache protocol — is a thin adapter that decodes a request, calls this
//! crate, and encodes the answer or maps a [`CacheError`] to its protocol's status. Policy lives
//! here, once:
//!
//! * [`Namespace`]: one cache's blobs, refs, action results and assets, and its quota;
//!   [`Namespaces`]: which instance name is served by which.
//! * [`action`]: what an action result references (one function, used to decide a hit and to
//!   keep its blobs through expiry), hits, and which results are accepted.
//! * [`asset`]: Remote Asset entries by URI and qualifiers; [`refs`]: named trees;
//!   [`entries`]: opaque values under other tools' own keys (ccache, Gradle).
//! * [`quota`]: a disk store's quota, served as the [`QuotaStore`] decorator.
//! * [`retention`]: expiry of a shared bucket by reachability from its roots.
//! * [`uploads`]: interrupted uploads kept for resumption, for an idle lifetime.
//! * [`config`]: the `[store]` configuration and the factory that opens it as a namespace.

pub mod action;
pub mod asset;
pub mod config;
pub mod entries;
mod error;
mod namespace;
pub mod quota;
pub mod refs;
pub mod retention;
pub mod units;
pub mod uploads;

pub use error::{CacheError, Result, digest, digest_function};
pub use namespace::{Namespace, Namespaces};
pub use quota::{EvictionListener, Quota, QuotaOptions, QuotaStore, Reservation};
