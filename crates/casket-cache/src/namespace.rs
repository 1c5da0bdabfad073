//! [`Namespace`]: one store's blobs, refs, action results and assets, under one quota; and
//! [`Namespaces`], which instance name is served by which.

use std::collections::HashMap;
use std::sync::Arc;

use casket_store::{BlobStore, DiskRecords, DiskRefs, DiskStore, RecordStore, RefStore};

use crate::quota::{Quota, QuotaStore};

/// Everything one cache keeps: what every frontend serves and what expiry walks.
#[derive(Clone, Debug)]
pub struct Namespace {
    /// The content-addressable store (under the quota, where there is one).
    pub blobs: Arc<dyn BlobStore>,
    /// Named roots: BuildStream's refs.
    pub refs: Arc<dyn RefStore>,
    /// REAPI action results, keyed by [`casket_store::action_key`].
    pub action_cache: Arc<dyn RecordStore>,
    /// Remote Asset entries.
    pub assets: Arc<dyn RecordStore>,
    /// The disk store's quota and exact usage, when `blobs` is a disk store under one.
    pub quota: Option<Arc<Quota>>,
    /// What the store is, for messages and `/status` (its directory, for a disk store).
    pub description: String,
}

impl Namespace {
    /// `store`, with its refs, action results and assets beside it, and no quota.
    pub fn on_disk(store: &DiskStore) -> Self {
        Namespace {
            blobs: Arc::new(store.clone()),
            refs: Arc::new(DiskRefs::new(store)),
            action_cache: Arc::new(DiskRecords::new(store, "ac")),
            assets: Arc::new(DiskRecords::new(store, "assets")),
            quota: None,
            description: store.root().display().to_string(),
        }
    }

    /// The largest blob this namespace can store, if there is a limit: no blob larger than the
    /// quota fits.
    pub fn max_blob_size(&self) -> Option<u64> {
        self.quota.as_ref().and_then(|quota| quota.limit())
    }

    /// The same namespace with its blobs under `quota` (a quota of its own disk store).
    pub fn with_quota(self, quota: Arc<Quota>) -> Self {
        Namespace {
            blobs: Arc::new(QuotaStore::new(quota.clone())),
            quota: Some(quota),
            ..self
        }
    }
}

/// Which namespace serves each instance name: the named ones from the configuration, and the
/// default one for every other instance name (including the empty one).
#[derive(Clone, Debug)]
pub struct Namespaces {
    default: Namespace,
    by_instance: HashMap<String, Namespace>,
}

impl Namespaces {
    /// Every instance name served by `default`.
    pub fn new(default: Namespace) -> Self {
        Namespaces {
            default,
            by_instance: HashMap::new(),
        }
    }

    /// Serves `instance` from `namespace` instead of the default one.
    pub fn insert(&mut self, instance: impl Into<String>, namespace: Namespace) {
        self.by_instance.insert(instance.into(), namespace);
    }

    /// The namespace serving `instance`.
    pub fn get(&self, instance: &str) -> &Namespace {
        self.by_instance.get(instance).unwrap_or(&self.default)
    }

    /// Every namespace, the default one first, with the instance name it serves (`None` for
    /// the default).
    pub fn all(&self) -> impl Iterator<Item = (Option<&str>, &Namespace)> {
        std::iter::once((None, &self.default))
            .chain(self.by_instance.iter().map(|(k, v)| (Some(k.as_str()), v)))
    }
}
