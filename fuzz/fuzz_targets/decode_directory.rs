//! Any bytes: decoding never panics, and what decodes is canonical and valid.
#![no_main]

use casket_model::{Directory, DigestFunction, EntryName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(directory) = Directory::decode(DigestFunction::Sha256, bytes) {
        assert_eq!(directory.encode(), bytes, "decoded bytes must be canonical");
        let names: Vec<&EntryName> = directory.entries().map(|(name, _)| name).collect();
        assert!(names.windows(2).all(|w| w[0].as_str().as_bytes() < w[1].as_str().as_bytes()));
        for name in names {
            assert!(EntryName::new(name.as_str()).is_ok());
        }
    }
});
