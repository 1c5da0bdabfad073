//! The server's TOML configuration file (`casket serve --config FILE`). Flags and environment
//! variables override it; it overrides the defaults. Relative paths are relative to the file.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! store = "/var/cache/casket"
//! anonymous = "read"              # none | read | write
//! token_file = "tokens"           # lines: TOKEN | write TOKEN | read TOKEN
//! quota = "500G"
//! grace = "10m"                   # never evict what was used this recently
//! remote_asset = true
//! monitoring_listen = "127.0.0.1:9090"
//! max_batch_size = "4M"           # advertised batch limit (at most 8M)
//! disabled_methods = ["ContentAddressableStorage/GetTree"]
//!
//! [tls]
//! certificate = "server.pem"
//! key = "server.key"
//! client_ca = "clients-ca.pem"    # optional: verified client certificates may write
//! require_client_certificate = false
//!
//! [instances.release]             # instance name "release" gets its own store
//! store = "/var/cache/casket-release"
//! quota = "100G"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use casket_remote::server::Access;
use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// gRPC address.
    pub listen: Option<SocketAddr>,
    /// The default namespace's store.
    pub store: Option<PathBuf>,
    /// Rights of callers without credentials.
    #[serde(default, deserialize_with = "access")]
    pub anonymous: Option<Access>,
    /// Bearer tokens and their rights.
    pub token_file: Option<PathBuf>,
    /// The default store's quota, e.g. `"500G"`.
    #[serde(default, deserialize_with = "size")]
    pub quota: Option<u64>,
    /// Objects used this recently are never evicted, e.g. `"10m"`.
    #[serde(default, deserialize_with = "duration")]
    pub grace: Option<Duration>,
    /// Whether to offer the Remote Asset API.
    pub remote_asset: Option<bool>,
    /// Address of the `/metrics` and `/status` HTTP port.
    pub monitoring_listen: Option<SocketAddr>,
    /// The batch limit advertised to clients, e.g. `"4M"`.
    #[serde(default, deserialize_with = "size")]
    pub max_batch_size: Option<u64>,
    /// Methods answered with UNIMPLEMENTED, as `Service/Method`.
    #[serde(default)]
    pub disabled_methods: Vec<String>,
    /// TLS, and client certificates.
    pub tls: Option<TlsConfig>,
    /// Instance names served from their own stores.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub certificate: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) to verify client certificates against.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a verified certificate.
    #[serde(default)]
    pub require_client_certificate: bool,
}

/// `[instances.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// This instance's store.
    pub store: PathBuf,
    /// Its quota.
    #[serde(default, deserialize_with = "size")]
    pub quota: Option<u64>,
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_size(&text).map(Some).map_err(serde::de::Error::custom)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
}

fn access<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Access>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl ServeConfig {
    /// Reads and checks `path`; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: ServeConfig =
            toml::from_str(&text).with_context(|| format!("invalid configuration {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.store.as_mut().map(resolve);
        config.token_file.as_mut().map(resolve);
        if let Some(tls) = &mut config.tls {
            resolve(&mut tls.certificate);
            resolve(&mut tls.key);
            tls.client_ca.as_mut().map(resolve);
        }
        for instance in config.instances.values_mut() {
            resolve(&mut instance.store);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_with_paths_resolved() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("casket.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:1234"
store = "store"
anonymous = "none"
token_file = "/etc/tokens"
quota = "2G"
grace = "5m"
monitoring_listen = "127.0.0.1:9090"
[tls]
certificate = "c.pem"
key = "k.pem"
[instances.release]
store = "/srv/release"
quota = "1G"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = ServeConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(config.store, Some(dir.path().join("store")));
        assert_eq!(config.token_file, Some(PathBuf::from("/etc/tokens")));
        assert_eq!(config.anonymous, Some(Access::None));
        assert_eq!(config.quota, Some(2 << 30));
        assert_eq!(config.grace, Some(Duration::from_secs(300)));
        assert_eq!(config.tls.map(|t| t.certificate), Some(dir.path().join("c.pem")));
        assert_eq!(config.instances["release"].quota, Some(1 << 30));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("casket.toml");
        for (text, expected) in [
            ("lisen = \"x\"", "unknown field `lisen`"),
            ("quota = \"lots\"", "not a size"),
            ("anonymous = \"admin\"", "unknown access"),
        ] {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            let error = format!(
                "{:#}",
                ServeConfig::load(&path)
                    .err()
                    .map_or(anyhow::anyhow!("none"), |e| e)
            );
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
