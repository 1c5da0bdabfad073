//! Finding the shared peers (`../shared`) and the one rule for a missing peer, for the tests of
//! both `casket-vdir` and `casket`: skip with a message under plain `cargo test`, fail under
//! `CASKET_REQUIRE_PEERS=1` (CI).
//!
//! One file compiled into both test trees (`casket`'s support includes it with `#[path]`; it
//! depends on this crate, so it reaches down, not sideways) rather than a function in a library
//! crate behind a feature: two small test-only functions do not earn a place in a library's API
//! or a crate of their own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The folder of shared test material (`peers/`, `oracle/`): `$CASKET_SHARED`, or `shared/`
/// beside the checkout.
pub(crate) fn shared_dir() -> PathBuf {
    std::env::var_os("CASKET_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

/// Whether peer `name` is available, given what is wrong with it (`None`: nothing). When it is
/// not: panics under `CASKET_REQUIRE_PEERS=1`, otherwise prints why the test is skipped and
/// returns false.
pub(crate) fn peer_available(name: &str, problem: Option<String>) -> bool {
    let Some(problem) = problem else { return true };
    if std::env::var("CASKET_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("peer {name} is required (CASKET_REQUIRE_PEERS=1) but unavailable: {problem}");
    }
    eprintln!("SKIPPED: peer {name} unavailable ({problem}); set it up with .ci/run");
    false
}
