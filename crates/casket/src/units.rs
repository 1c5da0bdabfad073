//! Human sizes and durations: parsed by `casket_cache::units` (configuration files share the
//! syntax), formatted here for output.

pub use casket_cache::units::{parse_duration, parse_size};

/// Formats bytes with a binary unit, e.g. `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}
