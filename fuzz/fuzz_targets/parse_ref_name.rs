//! Any text: a valid ref name is relative and never climbs out of the refs folder.
#![no_main]

use casket_model::RefName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(name) = RefName::new(text) {
        assert!(!name.as_str().starts_with('/'));
        assert!(name.as_str().split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
        assert!(!name.as_str().contains('\0'));
    }
});
