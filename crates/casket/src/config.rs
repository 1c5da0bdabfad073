//! The server's TOML configuration file (`casket serve --config FILE`). Flags and environment
//! variables override it; it overrides the defaults. Relative paths are relative to the file.
//!
//! ```toml
//! listen = "0.0.0.0:50051"
//! store = "/var/cache/casket"     # a disk store; or a [store] table (below)
//! anonymous = "read"              # none | read | write
//! token_file = "tokens"           # lines: TOKEN | write TOKEN | read TOKEN
//! quota = "500G"
//! grace = "10m"                   # never evict what was used this recently
//! remote_asset = true
//! monitoring_listen = "127.0.0.1:9090"
//! http_listen = "0.0.0.0:8080"    # the HTTP cache protocol (Bazel's HTTP cache, ccache, Gradle)
//! max_batch_size = "4M"           # advertised batch limit (at most 8M)
//! disabled_methods = ["ContentAddressableStorage/GetTree"]
//! upload_lifetime = "10m"        # interrupted uploads kept this long for resumption
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
//!
//! `[store]` composes stores from one enum, `casket_cache::config::StoreConfig`, keyed by `kind`:
//!
//! ```toml
//! [store]
//! kind = "tiered"                 # disk | memory | s3 | tiered
//! [store.near]                    # a tiered store's near tier is a disk store
//! kind = "disk"
//! path = "/var/cache/casket"
//! quota = "50G"
//! [store.far]
//! kind = "s3"
//! bucket = "casket"
//! endpoint = "http://garage.internal:3900"   # AWS when absent
//! region = "garage"
//! prefix = "prod"                 # key prefix inside the bucket
//! allow_http = true
//! access_key_id = "GK..."         # else AWS_ACCESS_KEY_ID and the rest of the AWS chain
//! secret_access_key = "..."
//! existence_cache_entries = 1000000
//! existence_cache_ttl = "5m"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use casket_cache::config::StoreConfig;
use casket_cache::units::{de_duration as duration, de_size as size};
use casket_remote::server::Access;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// gRPC address.
    pub listen: Option<SocketAddr>,
    /// The default namespace's store: a directory, or a `[store]` table.
    #[serde(default, deserialize_with = "store")]
    pub store: Option<StoreConfig>,
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
    /// Address of the HTTP cache protocol's listener.
    pub http_listen: Option<SocketAddr>,
    /// The batch limit advertised to clients, e.g. `"4M"`.
    #[serde(default, deserialize_with = "size")]
    pub max_batch_size: Option<u64>,
    /// Methods answered with UNIMPLEMENTED, as `Service/Method`.
    #[serde(default)]
    pub disabled_methods: Vec<String>,
    /// TLS, and client certificates.
    pub tls: Option<TlsConfig>,
    /// How long an interrupted upload is kept for resumption, e.g. `"10m"`.
    #[serde(default, deserialize_with = "duration")]
    pub upload_lifetime: Option<Duration>,
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

fn store<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<StoreConfig>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(path) => Ok(Some(StoreConfig::for_server(PathBuf::from(path)))),
        table => StoreConfig::deserialize(table)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// `[instances.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// This instance's store: a directory, or a table as for `[store]`.
    #[serde(deserialize_with = "required_store")]
    pub store: StoreConfig,
    /// Its quota.
    #[serde(default, deserialize_with = "size")]
    pub quota: Option<u64>,
}

fn required_store<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StoreConfig, D::Error> {
    store(d)?.ok_or_else(|| serde::de::Error::custom("a store is required"))
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
        if let Some(store) = &mut config.store {
            store.resolve(base);
        }
        config.token_file.as_mut().map(resolve);
        if let Some(tls) = &mut config.tls {
            resolve(&mut tls.certificate);
            resolve(&mut tls.key);
            tls.client_ca.as_mut().map(resolve);
        }
        for instance in config.instances.values_mut() {
            instance.store.resolve(base);
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
        // No store there yet: the server's default, a block store.
        assert_eq!(
            config.store,
            Some(StoreConfig::Blocks {
                path: dir.path().join("store"),
                quota: None,
                small_blob_limit: None,
                block_size: None,
            })
        );
        assert_eq!(config.token_file, Some(PathBuf::from("/etc/tokens")));
        assert_eq!(config.anonymous, Some(Access::None));
        assert_eq!(config.quota, Some(2 << 30));
        assert_eq!(config.grace, Some(Duration::from_secs(300)));
        assert_eq!(config.tls.map(|t| t.certificate), Some(dir.path().join("c.pem")));
        assert_eq!(config.instances["release"].quota, Some(1 << 30));
    }

    #[test]
    fn store_tables_compose_recursively() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("casket.toml");
        std::fs::write(
            &path,
            r#"
[store]
kind = "tiered"
[store.near]
kind = "disk"
path = "near"
quota = "1G"
[store.far]
kind = "s3"
bucket = "b"
endpoint = "http://127.0.0.1:3900"
region = "garage"
allow_http = true
existence_cache_ttl = "1m"
[instances.scratch]
store = { kind = "memory" }
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = ServeConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let Some(StoreConfig::Tiered { near, far }) = config.store else {
            panic!("{:?}", config.store)
        };
        assert_eq!(
            *near,
            StoreConfig::Disk {
                path: dir.path().join("near"),
                quota: Some(1 << 30)
            }
        );
        let StoreConfig::S3(s3) = *far else {
            panic!("{far:?}")
        };
        assert_eq!(s3.options().endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert!(s3.options().allow_http);
        assert_eq!(s3.existence_cache().ttl, Duration::from_secs(60));
        assert_eq!(config.instances["scratch"].store, StoreConfig::Memory);
    }

    #[test]
    fn the_documented_three_frontend_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/three-frontends.toml");
        let config = ServeConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            matches!(config.store, Some(StoreConfig::Tiered { .. })),
            "{:?}",
            config.store
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("casket.toml");
        for (text, expected) in [
            ("lisen = \"x\"", "unknown field `lisen`"),
            ("quota = \"lots\"", "not a size"),
            ("anonymous = \"admin\"", "unknown access"),
            ("[store]\nkind = \"floppy\"", "unknown variant `floppy`"),
            (
                "[store]\nkind = \"s3\"\nbucket = \"b\"\nbuckit = 1",
                "unknown field `buckit`",
            ),
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
