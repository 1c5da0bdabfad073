//! Test material shared by the crate's tests and bench.

pub(crate) mod peers;
pub mod trees;
