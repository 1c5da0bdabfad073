//! Validated names: directory entries and refs.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {name:?}: {reason}")]
pub struct NameError {
    kind: &'static str,
    name: String,
    reason: &'static str,
}

impl NameError {
    fn new(kind: &'static str, name: &str, reason: &'static str) -> Self {
        NameError {
            kind,
            name: name.to_owned(),
            reason,
        }
    }

    /// The refused name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why it was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// One path component of a directory entry: not empty, not `.` or `..`, no `/` and no NUL.
///
/// Ordering is by UTF-8 bytes, the order REAPI requires inside a `Directory`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryName(String);

impl EntryName {
    /// Validates `name` as a single path component.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let reason = match name.as_str() {
            "" => Some("empty name"),
            "." | ".." => Some("'.' and '..' are not entry names"),
            n if n.contains('/') => Some("contains '/'"),
            n if n.contains('\0') => Some("contains NUL"),
            _ => None,
        };
        match reason {
            Some(reason) => Err(NameError::new("entry name", &name, reason)),
            None => Ok(EntryName(name)),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for EntryName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for EntryName {
    type Error = NameError;
    fn try_from(name: &str) -> Result<Self, NameError> {
        EntryName::new(name)
    }
}

/// The longest ref name accepted, in bytes.
const MAX_REF_LEN: usize = 1024;

/// The name of a ref (an artifact name such as `project/element/cachekey`): relative,
/// slash-separated components that are each a valid [`EntryName`], no control characters,
/// at most 1024 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName(String);

impl RefName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty name")
        } else if name.len() > MAX_REF_LEN {
            Some("longer than 1024 bytes")
        } else if name.starts_with('/') {
            Some("absolute names are not refs")
        } else if name.chars().any(char::is_control) {
            Some("contains a control character")
        } else if name.split('/').any(|c| EntryName::new(c).is_err()) {
            Some("every '/'-separated component must be non-empty and not '.' or '..'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NameError::new("ref name", &name, reason)),
            None => Ok(RefName(name)),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for RefName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        RefName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        for ok in ["a", "...", ".hidden", "ü", "a b", "-"] {
            assert!(EntryName::new(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(EntryName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ref_names() {
        for ok in ["project/element/cachekey", "a", "p/hello.bst/0123abcd", "x/.../y"] {
            assert!(RefName::new(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a/.", "a\nb", "a\0b",
        ] {
            assert!(RefName::new(bad).is_err(), "{bad:?}");
        }
        assert!(RefName::new("x".repeat(1025)).is_err());
    }
}
