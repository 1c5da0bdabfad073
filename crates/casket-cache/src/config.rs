//! The `[store]` configuration ([`StoreConfig`], one recursive serde enum: disk | blocks |
//! memory | s3 | tiered { near, far }) and the factory that opens it as a [`Namespace`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use casket_store::{
    BlobStore, BlockOptions, BlockStore, DiskOptions, DiskStore, ExistenceCacheOptions, MemoryStore,
    ObjectRecords, ObjectRefs, ObjectStoreBlobs, S3Options, StoreError, TieredStore,
};
use serde::Deserialize;

use crate::namespace::Namespace;
use crate::quota::{EvictionListener, Quota, QuotaOptions};
use crate::units::{de_duration, de_size};

/// A store, composed recursively: `[store]`, or `store = "DIR"` for a disk store.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// A disk store.
    Disk {
        /// Its directory.
        path: PathBuf,
        /// Most disk space it may use, e.g. `"50G"`; least recently used blobs go beyond it.
        #[serde(default, deserialize_with = "de_size")]
        quota: Option<u64>,
    },
    /// A block store: small blobs packed into large block files behind an index in memory,
    /// large ones files of their own.
    Blocks {
        /// Its directory.
        path: PathBuf,
        /// Most disk space it may use, e.g. `"50G"`; the oldest blocks go beyond it, their
        /// recently used blobs copied forward.
        #[serde(default, deserialize_with = "de_size")]
        quota: Option<u64>,
        /// Blobs up to this size go into blocks [default: 1M, at most 64M].
        #[serde(default, deserialize_with = "de_size")]
        small_blob_limit: Option<u64>,
        /// Blocks are sealed at this size [default: a sixteenth of the quota, 256K to 64M].
        #[serde(default, deserialize_with = "de_size")]
        block_size: Option<u64>,
    },
    /// Everything in memory, gone when the server stops (for tests and demos).
    Memory,
    /// A bucket in S3 or an S3-compatible object store.
    S3(S3Config),
    /// A disk or block store in front of another store (the store of record).
    Tiered {
        /// The local tier: `kind = "disk"` or `kind = "blocks"`.
        near: Box<StoreConfig>,
        /// The store of record, shared by every frontend.
        far: Box<StoreConfig>,
    },
}

/// `kind = "s3"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// An S3-compatible endpoint; AWS when absent (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The region to sign for (`AWS_REGION` when absent).
    pub region: Option<String>,
    /// A key prefix, so several caches can share a bucket.
    #[serde(default)]
    pub prefix: String,
    /// The access key id (else the AWS chain).
    pub access_key_id: Option<String>,
    /// The secret access key (else the AWS chain).
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint.
    #[serde(default)]
    pub allow_http: bool,
    /// `BUCKET.ENDPOINT` addressing instead of `ENDPOINT/BUCKET`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// How many digests the positive existence cache remembers (0 turns it off).
    pub existence_cache_entries: Option<u64>,
    /// How long the existence cache trusts a digest it saw present, e.g. `"5m"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub existence_cache_ttl: Option<Duration>,
}

impl S3Config {
    /// How to reach the bucket.
    pub fn options(&self) -> S3Options {
        S3Options {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: self.allow_http,
            virtual_hosted_style: self.virtual_hosted_style,
        }
    }

    /// The existence cache's size and lifetime.
    pub fn existence_cache(&self) -> ExistenceCacheOptions {
        let default = ExistenceCacheOptions::default();
        ExistenceCacheOptions {
            entries: self.existence_cache_entries.unwrap_or(default.entries),
            ttl: self.existence_cache_ttl.unwrap_or(default.ttl),
        }
    }

    /// Where the bucket is, for messages.
    pub fn description(&self) -> String {
        let at = self
            .endpoint
            .as_ref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default();
        format!("s3://{}/{}{at}", self.bucket, self.prefix)
    }
}

impl StoreConfig {
    /// A server's store at `path`: the store already there (a block store or a disk store), or
    /// a new block store where there is none. The block store is the server's default: it
    /// serves every small-blob workload faster than the disk store and large blobs the same
    /// (docs/benchmarks.md), and a server needs no hard-link checkouts.
    pub fn for_server(path: PathBuf) -> StoreConfig {
        if DiskStore::exists_at(&path) && !BlockStore::exists_at(&path) {
            StoreConfig::Disk { path, quota: None }
        } else {
            StoreConfig::Blocks {
                path,
                quota: None,
                small_blob_limit: None,
                block_size: None,
            }
        }
    }

    /// The same store with `limit` as its quota unless it sets one (disk and block stores).
    pub fn with_default_quota(self, limit: Option<u64>) -> StoreConfig {
        match self {
            StoreConfig::Disk { path, quota } => StoreConfig::Disk {
                path,
                quota: quota.or(limit),
            },
            StoreConfig::Blocks {
                path,
                quota,
                small_blob_limit,
                block_size,
            } => StoreConfig::Blocks {
                path,
                quota: quota.or(limit),
                small_blob_limit,
                block_size,
            },
            other => other,
        }
    }

    /// Makes relative disk paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        match self {
            StoreConfig::Disk { path, .. } | StoreConfig::Blocks { path, .. } if path.is_relative() => {
                *path = base.join(&*path);
            }
            StoreConfig::Tiered { near, far } => {
                near.resolve(base);
                far.resolve(base);
            }
            _ => {}
        }
    }

    /// The bucket of an `s3` store, or of the far tier of a tiered one.
    pub fn bucket(&self) -> Option<&S3Config> {
        match self {
            StoreConfig::S3(s3) => Some(s3),
            StoreConfig::Tiered { far, .. } => far.bucket(),
            _ => None,
        }
    }
}

/// Why a configured store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A disk store could not be opened, or its usage scanned.
    #[error("cannot open the store at {}: {source}", .path.display())]
    Disk {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: Box<StoreError>,
    },
    /// No client could be set up for a bucket.
    #[error("cannot set up a client for {bucket}: {source}")]
    Bucket {
        /// The bucket, as described by [`S3Config::description`].
        bucket: String,
        /// Why.
        source: Box<StoreError>,
    },
    /// A tiered store's near tier is not a disk or block store.
    #[error("the near tier of a tiered store must be kind = \"disk\" or \"blocks\"")]
    NearNotLocal,
}

/// How stores are opened: the quota behaviour (its limit applies to a disk store, or a tiered
/// store's near disk, that sets none of its own), durability, and who hears of evictions.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// The quota.
    pub quota: QuotaOptions,
    /// `fsync` every write before it is acknowledged.
    pub fsync: bool,
    /// Told of evictions.
    pub listener: Arc<dyn EvictionListener>,
}

/// Opens the bucket `config` names as a namespace (nothing is sent yet).
pub fn open_bucket(config: &S3Config) -> Result<Namespace, OpenError> {
    let store = config.options().connect().map_err(|source| OpenError::Bucket {
        bucket: config.description(),
        source: Box::new(source),
    })?;
    let prefix = config.prefix.as_str();
    Ok(Namespace {
        blobs: Arc::new(ObjectStoreBlobs::with_existence_cache(
            store.clone(),
            prefix,
            config.existence_cache(),
        )),
        refs: Arc::new(ObjectRefs::new(store.clone(), prefix)),
        action_cache: Arc::new(ObjectRecords::new(store.clone(), prefix, "ac")),
        assets: Arc::new(ObjectRecords::new(store.clone(), prefix, "assets")),
        entries: Arc::new(ObjectRecords::new(store, prefix, "entries")),
        quota: None,
        description: config.description(),
    })
}

fn open_disk(path: &Path, fsync: bool) -> Result<DiskStore, OpenError> {
    DiskStore::open(
        path,
        DiskOptions {
            fsync,
            ..DiskOptions::default()
        },
    )
    .map_err(|source| OpenError::Disk {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// Opens a block store, with the quota's limit (unless it sets its own) and grace.
async fn open_blocks(config: &StoreConfig, options: &OpenOptions) -> Result<BlockStore, OpenError> {
    let StoreConfig::Blocks {
        path,
        quota,
        small_blob_limit,
        block_size,
    } = config
    else {
        return Err(OpenError::NearNotLocal);
    };
    let defaults = BlockOptions::default();
    let block_options = BlockOptions {
        capacity: quota.or(options.quota.limit),
        small_blob_limit: small_blob_limit.unwrap_or(defaults.small_blob_limit),
        block_size: *block_size,
        grace: options.quota.grace,
        fsync: options.fsync,
        ..defaults
    };
    let root = path.clone();
    tokio::task::spawn_blocking(move || BlockStore::open(&root, block_options))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))
        .and_then(|opened| opened)
        .map_err(|source| OpenError::Disk {
            path: path.clone(),
            source: Box::new(source),
        })
}

async fn quota(disk: &DiskStore, limit: Option<u64>, options: &OpenOptions) -> Result<Arc<Quota>, OpenError> {
    let quota = QuotaOptions {
        limit: limit.or(options.quota.limit),
        ..options.quota
    };
    Quota::new(disk, quota, options.listener.clone())
        .await
        .map(Arc::new)
        .map_err(|source| OpenError::Disk {
            path: disk.root().to_owned(),
            source: Box::new(source),
        })
}

/// Opens `config` as a namespace.
pub async fn open_namespace(config: &StoreConfig, options: &OpenOptions) -> Result<Namespace, OpenError> {
    Ok(match config {
        StoreConfig::Disk { path, quota: limit } => {
            let disk = open_disk(path, options.fsync)?;
            let quota = quota(&disk, *limit, options).await?;
            Namespace::on_disk(&disk).with_quota(quota)
        }
        StoreConfig::Blocks { .. } => Namespace::on_blocks(&open_blocks(config, options).await?),
        StoreConfig::Memory => {
            let records: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            Namespace {
                blobs: Arc::new(MemoryStore::new()),
                refs: Arc::new(ObjectRefs::new(records.clone(), "")),
                action_cache: Arc::new(ObjectRecords::new(records.clone(), "", "ac")),
                assets: Arc::new(ObjectRecords::new(records.clone(), "", "assets")),
                entries: Arc::new(ObjectRecords::new(records, "", "entries")),
                quota: None,
                description: "memory".to_owned(),
            }
        }
        StoreConfig::S3(s3) => open_bucket(s3)?,
        StoreConfig::Tiered { near, far } => {
            let far_options = OpenOptions {
                quota: QuotaOptions {
                    limit: None,
                    ..options.quota
                },
                ..options.clone()
            };
            let far = Box::pin(open_namespace(far, &far_options)).await?;
            let (near, budget, root): (Arc<dyn BlobStore>, Option<Arc<Quota>>, PathBuf) = match near.as_ref()
            {
                StoreConfig::Disk { path, quota: limit } => {
                    let disk = open_disk(path, options.fsync)?;
                    let budget = quota(&disk, *limit, options).await?;
                    (Arc::new(disk.clone()), Some(budget), disk.root().to_owned())
                }
                blocks @ StoreConfig::Blocks { .. } => {
                    let block = open_blocks(blocks, options).await?;
                    (Arc::new(block.clone()), None, block.root().to_owned())
                }
                _ => return Err(OpenError::NearNotLocal),
            };
            let budget = budget.map(|budget| budget as Arc<dyn casket_store::SpaceBudget>);
            Namespace {
                blobs: Arc::new(TieredStore::new(near, far.blobs, budget)),
                description: format!("{} in front of {}", root.display(), far.description),
                quota: None,
                ..far
            }
        }
    })
}
