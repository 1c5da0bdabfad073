//! [`Namespace`]: one store's blobs, refs, action results and assets, under one quota; and
//! [`Namespaces`], which instance name is served by which.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use casket_store::{BlobStore, BlockStore, DiskRecords, DiskRefs, DiskStore, RecordStore, RefStore};

use crate::quota::{Capacity, Quota, QuotaStore};

/// Everything one cache keeps: what every frontend serves and what expiry walks.
#[derive(Clone, Debug)]
pub struct Namespace {
    /// The content-addressable store (under the quota, where there is one).
    pub blobs: Arc<dyn BlobStore>,
    /// Named roots: BuildStream's refs.
    pub refs: Arc<dyn RefStore>,
    /// REAPI action results, keyed by [`casket_store::ActionId::key`].
    pub action_cache: Arc<dyn RecordStore>,
    /// Remote Asset entries.
    pub assets: Arc<dyn RecordStore>,
    /// Generic entries (`crate::entries`): blobs named by keys of other tools' own.
    pub entries: Arc<dyn RecordStore>,
    /// The store's exact usage and limit: a disk store's quota, or a block store.
    pub quota: Option<Arc<dyn Capacity>>,
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
            entries: Arc::new(DiskRecords::new(store, "entries")),
            quota: None,
            description: store.root().display().to_string(),
        }
    }

    /// `store`, with its refs, action results and assets beside its large blobs, under the
    /// capacity it keeps itself.
    pub fn on_blocks(store: &BlockStore) -> Self {
        Namespace {
            blobs: Arc::new(store.clone()),
            quota: Some(Arc::new(store.clone())),
            description: store.root().display().to_string(),
            ..Namespace::on_disk(store.disk())
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
            quota: Some(quota as Arc<dyn Capacity>),
            ..self
        }
    }
}

/// Which namespace serves each instance name: the named ones (from the configuration, or added
/// while serving, as the local CAS daemon's remote proxies are), and the default one for the
/// empty name and, unless the namespaces are strict, for every unknown name.
#[derive(Debug)]
pub struct Namespaces {
    default: Arc<Namespace>,
    /// Whether unknown instance names are refused rather than served by the default.
    strict: bool,
    by_instance: RwLock<HashMap<String, Arc<Namespace>>>,
}

impl Namespaces {
    /// Every instance name served by `default`.
    pub fn new(default: Namespace) -> Self {
        Namespaces {
            default: Arc::new(default),
            strict: false,
            by_instance: RwLock::default(),
        }
    }

    /// Only the empty instance name served by `default`; other names only once inserted.
    pub fn strict(default: Namespace) -> Self {
        Namespaces {
            strict: true,
            ..Namespaces::new(default)
        }
    }

    /// Serves `instance` from `namespace` instead of the default one.
    pub fn insert(&self, instance: impl Into<String>, namespace: Namespace) {
        self.write().insert(instance.into(), Arc::new(namespace));
    }

    /// The namespace serving `instance`, or `None` for an unknown name of strict namespaces.
    pub fn get(&self, instance: &str) -> Option<Arc<Namespace>> {
        if let Some(namespace) = self.read().get(instance) {
            return Some(namespace.clone());
        }
        (instance.is_empty() || !self.strict).then(|| self.default.clone())
    }

    /// The namespace serving the empty instance name.
    pub fn default_namespace(&self) -> &Arc<Namespace> {
        &self.default
    }

    /// Every namespace, the default one first, with the instance name it serves (`None` for
    /// the default).
    pub fn all(&self) -> Vec<(Option<String>, Arc<Namespace>)> {
        let named = self.read();
        std::iter::once((None, self.default.clone()))
            .chain(named.iter().map(|(k, v)| (Some(k.clone()), v.clone())))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Namespace>>> {
        // A panic while holding the lock left the map itself intact.
        self.by_instance
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Namespace>>> {
        self.by_instance
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
