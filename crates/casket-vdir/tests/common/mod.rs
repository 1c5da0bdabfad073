//! Test material shared by the crate's tests and bench.

pub mod trees;
