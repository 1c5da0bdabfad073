//! Named trees (BuildStream's artifact refs): served only while their trees are complete.

use casket_model::{Digest, RefName};

use crate::error::{CacheError, Result};
use crate::namespace::Namespace;

/// The validated ref name of `key`.
pub fn ref_name(key: &str) -> Result<RefName> {
    RefName::new(key).map_err(|e| CacheError::Invalid(e.to_string()))
}

/// The root `name` points at, if its tree is complete in the store of record; otherwise
/// `NotFound`, so that a client pushes it again rather than trusting a broken artifact.
/// Reading a ref counts as using it.
pub async fn get_ref(namespace: &Namespace, name: &RefName) -> Result<Digest> {
    let root = namespace
        .refs
        .get(name)
        .await?
        .ok_or_else(|| CacheError::NotFound(format!("no ref {name}")))?;
    if let Some(problem) = casket_tree::Tree::problem(namespace.blobs.as_ref(), &root).await? {
        return Err(CacheError::NotFound(format!(
            "ref {name} is incomplete: {problem}"
        )));
    }
    Ok(root)
}

/// Points every one of `names` at `root`.
pub async fn set_refs(namespace: &Namespace, names: &[RefName], root: &Digest) -> Result<()> {
    for name in names {
        namespace.refs.set(name, root).await?;
    }
    Ok(())
}
