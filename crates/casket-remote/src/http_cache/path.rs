//! What an HTTP cache path names. bazel-remote's paths, `/[INSTANCE/]cas/HASH` and
//! `/[INSTANCE/]ac/HASH` (SHA-256; `cas/blake3/HASH` and `ac/blake3/HASH` for BLAKE3), and
//! casket's generic entries, `/[INSTANCE/]kv/KEY`, for tools that store opaque values under
//! keys of their own. `kv` is a reserved word: the first segment spelled so starts the key, so
//! every layout of such a tool (ccache's `bazel` layout writes `…/ac/HASH`) stays an entry.
//!
//! Segments are percent-decoded one by one, and each must then be a valid entry name: not
//! empty, `.` or `..`, no `/`, NUL or control character. So no path climbs out of anything.

use casket_model::{DigestFunction, EntryName, RefName, parse_hash};
use casket_store::ActionId;
use percent_encoding::percent_decode_str;

/// The reserved segment that starts a generic entry's key.
pub(crate) const ENTRIES: &str = "kv";

/// What a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A CAS blob, by hash alone.
    Cas {
        /// The instance name (empty for the default).
        instance: String,
        /// The blob's digest function.
        function: DigestFunction,
        /// Its hash.
        hash: [u8; 32],
    },
    /// An action result.
    Ac {
        /// The instance name.
        instance: String,
        /// The action.
        action: ActionId,
    },
    /// A generic entry.
    Entry {
        /// The instance name.
        instance: String,
        /// The entry's key.
        key: RefName,
    },
    /// A WebDAV collection of entries: a key prefix ending in `/` (collections are implicit:
    /// every one exists).
    Collection {
        /// The instance name.
        instance: String,
        /// The keys' common prefix, without the slash (empty for all of `kv/`).
        prefix: String,
    },
}

impl Target {
    /// The instance name the path is in.
    pub(crate) fn instance(&self) -> &str {
        match self {
            Target::Cas { instance, .. }
            | Target::Ac { instance, .. }
            | Target::Entry { instance, .. }
            | Target::Collection { instance, .. } => instance,
        }
    }

    /// A short label for metrics: `cas`, `ac` or `kv`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Target::Cas { .. } => "cas",
            Target::Ac { .. } => "ac",
            Target::Entry { .. } | Target::Collection { .. } => ENTRIES,
        }
    }
}

/// Parses a request path (without its query); the error says what is wrong, for a 400 body.
pub(crate) fn parse_target(path: &str) -> Result<Target, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("the path {path:?} is not absolute"))?;
    // A trailing slash names a collection (WebDAV clients ask for them), only under kv/.
    let (rest, collection) = match rest.strip_suffix('/') {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let segments = rest
        .split('/')
        .map(decode_segment)
        .collect::<Result<Vec<String>, String>>()?;
    if let Some(at) = segments.iter().position(|s| s == ENTRIES) {
        let instance = segments[..at].join("/");
        let key = segments[at + 1..].join("/");
        if collection {
            return Ok(Target::Collection {
                instance,
                prefix: key,
            });
        }
        if key.is_empty() {
            return Err(format!("{path:?} names no key after /{ENTRIES}/"));
        }
        return Ok(Target::Entry {
            instance,
            key: RefName::new(key).map_err(|e| format!("the key in {path:?}: {e}"))?,
        });
    }
    if collection {
        return Err(usage(path));
    }
    let n = segments.len();
    let (kind_at, function) = match segments.get(n.wrapping_sub(2)).map(String::as_str) {
        Some(name) if n >= 3 && is_kind(&segments[n - 3]) => match DigestFunction::from_name(name) {
            Some(function) => (n - 3, function),
            None => (n - 2, DigestFunction::Sha256),
        },
        Some(_) => (n - 2, DigestFunction::Sha256),
        None => return Err(usage(path)),
    };
    if !is_kind(&segments[kind_at]) {
        return Err(usage(path));
    }
    let hash = parse_hash(&segments[n - 1]).map_err(|_| {
        format!(
            "{:?} is not a hash: 64 lowercase hex digits expected",
            segments[n - 1]
        )
    })?;
    let instance = segments[..kind_at].join("/");
    Ok(match segments[kind_at].as_str() {
        "cas" => Target::Cas {
            instance,
            function,
            hash,
        },
        _ => Target::Ac {
            instance,
            action: ActionId { function, hash },
        },
    })
}

fn is_kind(segment: &str) -> bool {
    matches!(segment, "cas" | "ac")
}

fn usage(path: &str) -> String {
    format!(
        "{path:?} is not a cache path: expected /[INSTANCE/]cas/HASH, /[INSTANCE/]ac/HASH or \
         /[INSTANCE/]{ENTRIES}/KEY"
    )
}

/// One percent-decoded segment, which must be a valid entry name without control characters.
fn decode_segment(raw: &str) -> Result<String, String> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| format!("the path segment {raw:?} is not UTF-8"))?;
    EntryName::new(decoded.as_ref()).map_err(|e| format!("the path segment {raw:?}: {e}"))?;
    if decoded.chars().any(char::is_control) {
        return Err(format!("the path segment {raw:?} has a control character"));
    }
    Ok(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn cas(instance: &str, function: DigestFunction) -> Target {
        Target::Cas {
            instance: instance.to_owned(),
            function,
            hash: parse_hash(HASH).unwrap_or_default(),
        }
    }

    #[test]
    fn bazel_remote_paths_name_blobs_and_actions() {
        assert_eq!(
            parse_target(&format!("/cas/{HASH}")),
            Ok(cas("", DigestFunction::Sha256))
        );
        assert_eq!(
            parse_target(&format!("/team/ci/cas/{HASH}")),
            Ok(cas("team/ci", DigestFunction::Sha256))
        );
        assert_eq!(
            parse_target(&format!("/cas/blake3/{HASH}")),
            Ok(cas("", DigestFunction::Blake3))
        );
        let action = ActionId {
            function: DigestFunction::Sha256,
            hash: parse_hash(HASH).unwrap_or_default(),
        };
        assert_eq!(
            parse_target(&format!("/x/ac/{HASH}")),
            Ok(Target::Ac {
                instance: "x".to_owned(),
                action
            })
        );
    }

    #[test]
    fn everything_after_kv_is_a_key_even_an_ac_path() {
        let entry = |instance: &str, key: &str| {
            Ok(Target::Entry {
                instance: instance.to_owned(),
                key: RefName::new(key).unwrap_or_else(|e| panic!("{e}")),
            })
        };
        assert_eq!(
            parse_target(&format!("/kv/ccache/ac/{HASH}")),
            entry("", &format!("ccache/ac/{HASH}"))
        );
        assert_eq!(parse_target("/ci/kv/gradle/0af3"), entry("ci", "gradle/0af3"));
        assert_eq!(parse_target("/kv/a%20b"), entry("", "a b"));
        let collection = |prefix: &str| {
            Ok(Target::Collection {
                instance: String::new(),
                prefix: prefix.to_owned(),
            })
        };
        assert_eq!(parse_target("/kv/"), collection(""));
        assert_eq!(parse_target("/kv/sccache/a/"), collection("sccache/a"));
        assert!(parse_target(&format!("/cas/{HASH}/")).is_err());
    }

    #[test]
    fn paths_that_climb_or_are_not_cache_paths_are_refused() {
        for bad in [
            "/kv//",
            "/kv/../etc/passwd",
            "/kv/a/%2e%2e/b",
            "/kv/a%2fb",
            "/kv/a//b",
            "/../cas/x",
            &format!("/%2e%2e/cas/{HASH}"),
            &format!("//cas/{HASH}"),
            &format!("/cas/{}", HASH.to_uppercase()),
            "/cas/abc",
            &format!("/blobs/{HASH}"),
            "/",
            "",
            "/kv/nul%00",
            "/kv/bell%07",
            "/kv/%ff",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn no_accepted_path_has_a_climbing_or_empty_part(path in "(/(\\.|\\.\\.|%2e|%2f|kv|cas|ac|[a-f0-9]{1,3}|)){1,6}") {
            if let Ok(target) = parse_target(&path) {
                let key = match &target {
                    Target::Entry { key, .. } => key.as_str().to_owned(),
                    _ => String::new(),
                };
                for part in target.instance().split('/').chain(key.split('/')).filter(|p| !p.is_empty() || target.instance().is_empty()) {
                    prop_assert!(part.is_empty() || EntryName::new(part).is_ok(), "{path} gave {part:?}");
                }
            }
        }
    }
}
