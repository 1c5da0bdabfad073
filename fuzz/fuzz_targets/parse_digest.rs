//! Any text: parsing never panics, and what parses prints back to itself.
#![no_main]

use casket_model::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string(), text);
        assert!(digest.size() <= i64::MAX as u64);
    }
});
