//! buildbox-casd's command line, as BuildStream 2 writes it: `--name=value` (or `--name value`)
//! flags and one positional cache root. Every flag casd 1.4.25 documents is known here and is
//! either honoured, ignored on purpose (with the reason logged at start), or refused with a
//! message saying why; an unknown flag is a usage error, as it is for casd.

use std::path::PathBuf;
use std::time::Duration;

use casket_cache::units::parse_size;

use crate::daemon::{Bind, DaemonOptions, LowWater, RemoteSpec};

/// What a command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// `--version` (casd ignores the rest of the line, and so do we).
    Version,
    /// `--help`.
    Help,
    /// Run the daemon.
    Run(Box<DaemonOptions>),
}

/// A command line that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// A flag casd does not have.
    #[error("unknown option --{0}")]
    Unknown(String),
    /// A flag that needs a value got none.
    #[error("--{0} needs a value")]
    MissingValue(String),
    /// A value that does not parse.
    #[error("--{flag}={value}: {reason}")]
    Invalid {
        /// The flag.
        flag: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A casd feature casket does not offer.
    #[error("--{flag} is not supported by casket: {reason}")]
    Unsupported {
        /// The flag.
        flag: String,
        /// What to do instead.
        reason: &'static str,
    },
    /// No cache root, or more than one.
    #[error("expected exactly one cache path, got {0}")]
    Root(usize),
}

/// casd's flags that take no value (they may still be given `=true` or `=false`).
const SWITCHES: [&str; 14] = [
    "help",
    "version",
    "verbose",
    "protect-session-blobs",
    "fail-fast-during-cleanup",
    "exec-fallback-to-local",
    "cache-failures",
    "capture-allow-file-moves",
    "read-only-remote",
    "store-writable-objects",
    "googleapi-auth",
    "cas-googleapi-auth",
    "ac-googleapi-auth",
    "ra-googleapi-auth",
];

/// Flags that take effect (see `apply`).
const HONOURED: [&str; 24] = [
    "bind",
    "unix-socket-mode",
    "log-level",
    "verbose",
    "quota-high",
    "quota-low",
    "cleanup-threshold",
    "reserved",
    "protect-session-blobs",
    "read-only-remote",
    "digest-function",
    "local-server-instance",
    "server-instance",
    "cas-protocol",
    "cas-remote",
    "cas-instance",
    "cas-server-cert",
    "cas-client-key",
    "cas-client-cert",
    "cas-access-token",
    "cas-retry-limit",
    "cas-retry-delay",
    "cas-request-timeout",
    "cas-keepalive-time",
];

/// Flags accepted and ignored, with the reason logged at start.
const IGNORED: [(&str, &str); 27] = [
    ("cache-failures", "casket runs no local actions"),
    (
        "buildbox-run",
        "casket has no local Execution service (remote-apis-socket)",
    ),
    ("runner-arg", "casket has no local Execution service"),
    ("jobs", "casket has no local Execution service"),
    ("exec-hybrid-queue-limit", "casket has no Execution service"),
    ("exec-fallback-to-local", "casket has no Execution service"),
    (
        "fail-fast-during-cleanup",
        "expiry runs in the background; writes never wait for a sweep",
    ),
    (
        "capture-allow-file-moves",
        "captures always copy: a moved file could still be changed by its owner",
    ),
    ("store-writable-objects", "objects are always read-only"),
    (
        "shutdown-deadline",
        "casket exits within half a second of SIGTERM",
    ),
    ("metrics-mode", "no metrics publisher"),
    ("metrics-publish-interval", "no metrics publisher"),
    ("metrics-prefix", "no metrics publisher"),
    ("num-digest-threads", "hashing runs on tokio's blocking pool"),
    ("num-io-threads", "transfers share one bounded pool of requests"),
    ("findmissingblobs-cache-ttl", "FindMissingBlobs is never cached"),
    (
        "ac-validation-cache-ttl",
        "action results are checked on every read",
    ),
    ("permit-keepalive-time", "clients' keepalives are accepted"),
    ("unix-socket-group", "the socket keeps the daemon's group"),
    ("enable-chunking-for-instance", "blobs are transferred whole"),
    ("allow-pre-unstage-command", "pre-unstage commands are refused"),
    (
        "token-reload-interval",
        "the token file is read on each connection",
    ),
    (
        "cas-token-reload-interval",
        "the token file is read on each connection",
    ),
    (
        "retry-on-code",
        "retries follow casket's client (UNAVAILABLE and friends)",
    ),
    (
        "cas-retry-on-code",
        "retries follow casket's client (UNAVAILABLE and friends)",
    ),
    (
        "cas-min-throughput",
        "requests have a deadline, not a throughput floor",
    ),
    ("cas-load-balancing-policy", "one channel per remote"),
];

/// Flags refused: they ask for something casket does not do.
const REFUSED: [(&str, &str); 8] = [
    (
        "remote",
        "use --cas-remote; Remote Asset and ActionCache remotes come from GetInstanceNameForRemotes",
    ),
    (
        "ac-remote",
        "ActionCache remotes come from GetInstanceNameForRemotes",
    ),
    (
        "ra-remote",
        "Remote Asset remotes come from GetInstanceNameForRemotes",
    ),
    ("exec-remote", "casket does not proxy remote execution"),
    (
        "proxy-instance",
        "proxy instances come from GetInstanceNameForRemotes",
    ),
    ("credential-helper", "use --cas-access-token with a token file"),
    (
        "cas-credential-helper",
        "use --cas-access-token with a token file",
    ),
    ("googleapi-auth", "use --cas-access-token with a token file"),
];

/// The other per-service connection settings casd has (`ac-`, `ra-`, `exec-`): ignored,
/// because those remotes are refused.
const SERVICE_SETTINGS: [&str; 15] = [
    "instance",
    "server-cert",
    "client-key",
    "client-cert",
    "access-token",
    "token-reload-interval",
    "googleapi-auth",
    "credential-helper",
    "retry-limit",
    "retry-delay",
    "retry-on-code",
    "request-timeout",
    "min-throughput",
    "keepalive-time",
    "load-balancing-policy",
];

/// Parses casd's arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Invocation, FlagError> {
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    let mut positional = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            positional.push(arg);
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None if SWITCHES.contains(&flag) => (flag.to_owned(), None),
            // Before taking the next argument as its value.
            None if !known(flag) => return Err(FlagError::Unknown(flag.to_owned())),
            None => match args.next_if(|next| !next.starts_with("--")) {
                Some(value) => (flag.to_owned(), Some(value)),
                None => return Err(FlagError::MissingValue(flag.to_owned())),
            },
        };
        match name.as_str() {
            "version" => return Ok(Invocation::Version),
            "help" => return Ok(Invocation::Help),
            _ => flags.push((name, value)),
        }
    }
    let [root] = <[String; 1]>::try_from(positional).map_err(|p| FlagError::Root(p.len()))?;
    let mut options = DaemonOptions::new(PathBuf::from(root));
    let mut cas = RemoteSpec::default();
    for (name, value) in flags {
        apply(&mut options, &mut cas, &name, value)?;
    }
    if !cas.url.is_empty() {
        options.storage_service = Some(cas);
    }
    Ok(Invocation::Run(Box::new(options)))
}

/// Whether casd has the flag `name`.
fn known(name: &str) -> bool {
    let other_service = ["ac-", "ra-", "exec-", ""]
        .iter()
        .filter_map(|prefix| name.strip_prefix(prefix))
        .any(|setting| SERVICE_SETTINGS.contains(&setting));
    other_service
        || HONOURED.contains(&name)
        || SWITCHES.contains(&name)
        || IGNORED.iter().any(|(flag, _)| *flag == name)
        || REFUSED.iter().any(|(flag, _)| *flag == name)
}

/// Applies one flag.
fn apply(
    options: &mut DaemonOptions,
    cas: &mut RemoteSpec,
    name: &str,
    value: Option<String>,
) -> Result<(), FlagError> {
    let value_of = |value: Option<String>| value.ok_or_else(|| FlagError::MissingValue(name.to_owned()));
    let invalid = |value: &str, reason: String| FlagError::Invalid {
        flag: name.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let size = |value: &str| parse_size(value).map_err(|e| invalid(value, e));
    let seconds = |value: &str| {
        value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| invalid(value, "expected a number of seconds".into()))
    };
    let switch = |value: Option<String>| match value.as_deref() {
        None | Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(invalid(other, "expected true or false".into())),
    };
    if let Some((_, reason)) = REFUSED.iter().find(|(flag, _)| *flag == name) {
        return Err(FlagError::Unsupported {
            flag: name.to_owned(),
            reason,
        });
    }
    if let Some((_, reason)) = IGNORED.iter().find(|(flag, _)| *flag == name) {
        options.ignored.push(format!("--{name}: {reason}"));
        return Ok(());
    }
    match name {
        "bind" => {
            let value = value_of(value)?;
            let bind = Bind::parse(&value).map_err(|e| invalid(&value, e))?;
            options.binds.push(bind);
        }
        "unix-socket-mode" => {
            let value = value_of(value)?;
            let mode = u32::from_str_radix(&value, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| invalid(&value, "expected an octal mode such as 0770".into()))?;
            options.socket_mode = Some(mode);
        }
        "log-level" => {
            let value = value_of(value)?;
            options.log_level = match value.as_str() {
                "trace" | "debug" | "info" | "error" => value,
                "warning" => "warn".to_owned(),
                _ => {
                    return Err(invalid(
                        &value,
                        "expected trace, debug, info, warning or error".into(),
                    ));
                }
            };
        }
        "verbose" => {
            if switch(value)? {
                options.log_level = "debug".to_owned();
            }
        }
        "quota-high" => options.quota_high = Some(size(&value_of(value)?)?),
        "quota-low" => options.quota_low = Some(low_water(&value_of(value)?).map_err(|e| invalid("", e))?),
        "cleanup-threshold" => {
            let value = value_of(value)?;
            options.cleanup_threshold =
                Some(percent(&value).ok_or_else(|| invalid(&value, "expected N%".into()))?);
        }
        "reserved" => options.reserved = Some(size(&value_of(value)?)?),
        "protect-session-blobs" => options.protect_session_blobs = switch(value)?,
        "read-only-remote" => cas.read_only = switch(value)?,
        "digest-function" => {
            let value = value_of(value)?;
            if !value.eq_ignore_ascii_case("sha256") {
                return Err(invalid(&value, "BuildStream's caches are SHA-256".into()));
            }
        }
        "local-server-instance" | "server-instance" => options.local_instances.push(value_of(value)?),
        "cas-protocol" => {
            let value = value_of(value)?;
            if value != "grpc" {
                return Err(invalid(&value, "casket speaks gRPC to its remote".into()));
            }
        }
        "cas-remote" => cas.url = value_of(value)?,
        "cas-instance" => cas.instance = value_of(value)?,
        "cas-server-cert" => cas.server_cert = Some(value_of(value)?.into()),
        "cas-client-key" => cas.client_key = Some(value_of(value)?.into()),
        "cas-client-cert" => cas.client_cert = Some(value_of(value)?.into()),
        "cas-access-token" => cas.access_token = Some(value_of(value)?.into()),
        "cas-retry-limit" => {
            let value = value_of(value)?;
            cas.retry_limit = Some(
                value
                    .parse()
                    .map_err(|_| invalid(&value, "expected a count".into()))?,
            );
        }
        "cas-retry-delay" => {
            let value = value_of(value)?;
            let ms: u64 = value
                .parse()
                .map_err(|_| invalid(&value, "expected milliseconds".into()))?;
            cas.retry_delay = Some(Duration::from_millis(ms));
        }
        "cas-request-timeout" => {
            cas.request_timeout = Some(seconds(&value_of(value)?)?).filter(|d| !d.is_zero())
        }
        "cas-keepalive-time" => cas.keepalive = Some(seconds(&value_of(value)?)?).filter(|d| !d.is_zero()),
        other if known(other) => options.ignored.push(format!(
            "--{other}: only the CAS remote (--cas-*) is configured on the command line"
        )),
        other => return Err(FlagError::Unknown(other.to_owned())),
    }
    Ok(())
}

/// `N%` as a fraction.
fn percent(text: &str) -> Option<f64> {
    let number: f64 = text.strip_suffix('%')?.parse().ok()?;
    (0.0..=100.0).contains(&number).then_some(number / 100.0)
}

/// `--quota-low`: a size, or a percentage of the quota.
fn low_water(text: &str) -> Result<LowWater, String> {
    if text.ends_with('%') {
        return percent(text)
            .map(LowWater::Fraction)
            .ok_or_else(|| format!("{text:?}: expected a percentage from 0% to 100%"));
    }
    parse_size(text).map(LowWater::Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<DaemonOptions, FlagError> {
        match parse(args.iter().map(|a| (*a).to_owned()))? {
            Invocation::Run(options) => Ok(*options),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn buildstream_command_lines_parse() {
        let options = run(&[
            "--bind=unix:/tmp/buildstreamX/cas/casserver-1.sock",
            "--log-level=warning",
            "--cache-failures=false",
            "--quota-high=2147483648",
            "--quota-low=50%",
            "--reserved=1073741824",
            "--protect-session-blobs",
            "--buildbox-run=/venv/buildbox-run",
            "--jobs=6",
            "--cas-remote=http://127.0.0.1:50931",
            "--cas-keepalive-time=60",
            "--cas-retry-limit=3",
            "--cas-retry-delay=500",
            "--cas-request-timeout=30",
            "/home/u/.cache/buildstream",
        ])
        .expect("parses");
        assert_eq!(options.root, PathBuf::from("/home/u/.cache/buildstream"));
        assert_eq!(
            options.binds,
            [Bind::Unix("/tmp/buildstreamX/cas/casserver-1.sock".into())]
        );
        assert_eq!(options.log_level, "warn");
        assert_eq!(options.quota_high, Some(2 << 30));
        assert!(matches!(options.quota_low, Some(LowWater::Fraction(f)) if (f - 0.5).abs() < 1e-9));
        assert_eq!(options.reserved, Some(1 << 30));
        assert!(options.protect_session_blobs);
        assert_eq!(options.ignored.len(), 3, "{:?}", options.ignored);
        let cas = options.storage_service.expect("a storage service");
        assert_eq!(cas.url, "http://127.0.0.1:50931");
        assert_eq!(cas.retry_limit, Some(3));
        assert_eq!(cas.retry_delay, Some(Duration::from_millis(500)));
        assert_eq!(cas.request_timeout, Some(Duration::from_secs(30)));
        assert_eq!(cas.keepalive, Some(Duration::from_secs(60)));
    }

    #[test]
    fn every_flag_applied_is_known() {
        for name in HONOURED {
            assert!(known(name), "{name}");
        }
        assert!(!known("frobnicate"));
        assert!(known("ra-retry-limit") && known("cas-min-throughput"));
    }

    #[test]
    fn version_wins_over_the_rest_of_the_line() {
        let parsed = parse(["--version".to_owned(), "/".to_owned()]).expect("parses");
        assert!(matches!(parsed, Invocation::Version));
    }

    #[test]
    fn space_separated_values_and_tcp_binds() {
        let options = run(&["--bind", "127.0.0.1:0", "--quota-low", "1G", "/c"]).expect("parses");
        assert_eq!(options.binds, [Bind::Tcp("127.0.0.1:0".parse().expect("addr"))]);
        assert!(matches!(options.quota_low, Some(LowWater::Bytes(b)) if b == 1 << 30));
    }

    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        for (args, message) in [
            (&["--frobnicate=1", "/c"][..], "unknown option --frobnicate"),
            (&["--frobnicate", "/c"], "unknown option --frobnicate"),
            (
                &["--ra-remote=http://x:1", "/c"],
                "Remote Asset remotes come from",
            ),
            (&["--quota-low=120%", "/c"], "0% to 100%"),
            (&["--digest-function=SHA1", "/c"], "SHA-256"),
            (&["--bind=unix:", "/c"], "socket path"),
            (&["/a", "/b"], "exactly one cache path, got 2"),
            (&["--log-level=loud", "/c"], "expected trace"),
        ] {
            let error = run(args).expect_err("refused").to_string();
            assert!(error.contains(message), "{args:?}: {error}");
        }
    }
}
