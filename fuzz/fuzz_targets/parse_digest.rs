//! Any text: parsing never panics, what parses prints back to a text that parses to the same
//! digest, and the only accepted spelling besides the printed one is an explicit `sha256:`.
#![no_main]

use casket_model::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(digest) = text.parse::<Digest>() {
        let printed = digest.to_string();
        assert_eq!(printed.parse::<Digest>(), Ok(digest));
        assert!(text == printed || text == format!("sha256:{printed}"), "{text:?} printed as {printed:?}");
        assert!(digest.size() <= i64::MAX as u64);
    }
});
