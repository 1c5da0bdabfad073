//! Opening a configured store ([`StoreConfig`]) as what the server serves (a [`Namespace`]) or
//! what `casket gc` expires (an [`ObjectBucket`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use casket_remote::server::{Metrics, Namespace, Quota, QuotaOptions};
use casket_store::{
    DiskOptions, DiskStore, MemoryStore, ObjectRecords, ObjectRefs, ObjectStoreBlobs, TieredStore,
};

use crate::config::{S3Config, StoreConfig};

/// Blobs, refs, action results and assets in one bucket under one prefix.
#[derive(Clone, Debug)]
pub struct ObjectBucket {
    /// The blobs.
    pub blobs: ObjectStoreBlobs,
    /// The refs.
    pub refs: ObjectRefs,
    /// The action results.
    pub action_cache: ObjectRecords,
    /// The Remote Asset entries.
    pub assets: ObjectRecords,
    /// Where it is, for messages.
    pub description: String,
}

impl ObjectBucket {
    /// Connects to the bucket `config` names (nothing is sent yet).
    pub fn open(config: &S3Config) -> anyhow::Result<Self> {
        let store = config
            .options()
            .connect()
            .with_context(|| format!("cannot set up a client for bucket {:?}", config.bucket))?;
        let prefix = config.prefix.as_str();
        Ok(ObjectBucket {
            blobs: ObjectStoreBlobs::with_existence_cache(store.clone(), prefix, config.existence_cache()),
            refs: ObjectRefs::new(store.clone(), prefix),
            action_cache: ObjectRecords::new(store.clone(), prefix, "ac"),
            assets: ObjectRecords::new(store, prefix, "assets"),
            description: format!(
                "s3://{}/{}{}",
                config.bucket,
                config.prefix,
                config
                    .endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
        })
    }

    /// The bucket of an `s3` store, or of the far tier of a tiered one.
    pub fn of(config: &StoreConfig) -> Option<anyhow::Result<Self>> {
        match config {
            StoreConfig::S3(s3) => Some(Self::open(s3)),
            StoreConfig::Tiered { far, .. } => Self::of(far),
            _ => None,
        }
    }

    fn namespace(self) -> Namespace {
        Namespace {
            blobs: Arc::new(self.blobs),
            refs: Arc::new(self.refs),
            action_cache: Arc::new(self.action_cache),
            assets: Arc::new(self.assets),
            quota: None,
            description: self.description,
        }
    }
}

fn open_disk(path: &Path, fsync: bool) -> anyhow::Result<DiskStore> {
    DiskStore::open(path, DiskOptions { fsync })
        .with_context(|| format!("cannot open the store at {}", path.display()))
}

async fn quota(
    disk: &DiskStore,
    options: QuotaOptions,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<Quota>> {
    let quota = Quota::new(disk, options, metrics.clone())
        .await
        .with_context(|| format!("cannot scan the store at {}", disk.root().display()))?;
    Ok(Arc::new(quota))
}

/// Opens `config` as a namespace. `options` is the quota behaviour; its limit applies to a
/// disk store (or a tiered store's near disk) that sets none of its own.
pub async fn open_namespace(
    config: &StoreConfig,
    options: QuotaOptions,
    fsync: bool,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Namespace> {
    Ok(match config {
        StoreConfig::Disk { path, quota: limit } => {
            let disk = open_disk(path, fsync)?;
            let options = QuotaOptions {
                limit: limit.or(options.limit),
                ..options
            };
            Namespace {
                quota: Some(quota(&disk, options, metrics).await?),
                ..Namespace::on_disk(&disk)
            }
        }
        StoreConfig::Memory => {
            let records: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            Namespace {
                blobs: Arc::new(MemoryStore::new()),
                refs: Arc::new(ObjectRefs::new(records.clone(), "")),
                action_cache: Arc::new(ObjectRecords::new(records.clone(), "", "ac")),
                assets: Arc::new(ObjectRecords::new(records, "", "assets")),
                quota: None,
                description: "memory".to_owned(),
            }
        }
        StoreConfig::S3(s3) => ObjectBucket::open(s3)?.namespace(),
        StoreConfig::Tiered { near, far } => {
            let StoreConfig::Disk { path, quota: limit } = near.as_ref() else {
                bail!("the near tier of a tiered store must be kind = \"disk\"");
            };
            let far = Box::pin(open_namespace(
                far,
                QuotaOptions {
                    limit: None,
                    ..options
                },
                fsync,
                metrics,
            ))
            .await?;
            let disk = open_disk(path, fsync)?;
            let near_quota = QuotaOptions {
                limit: limit.or(options.limit),
                ..options
            };
            let budget = quota(&disk, near_quota, metrics).await?;
            Namespace {
                blobs: Arc::new(TieredStore::new(disk.clone(), far.blobs, Some(budget))),
                description: format!("{} in front of {}", disk.root().display(), far.description),
                quota: None,
                ..far
            }
        }
    })
}
