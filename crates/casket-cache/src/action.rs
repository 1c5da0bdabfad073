//! REAPI action results: what a result references ([`references`], used both to decide a hit
//! and to keep its blobs through expiry), when it is a hit ([`get_action_result`]: only when
//! every blob it needs is in the store of record), and which results are accepted
//! ([`put_action_result`]: valid digests, and output paths a client can trust).

use bytes::Bytes;
use casket_model::proto::reapi;
use casket_model::{Digest, DigestFunction, EntryName};
use casket_store::{ActionId, BlobStore, BlobStoreExt};
use casket_tree::Gaps;
use prost::Message;

use crate::error::{CacheError, Result};
use crate::namespace::Namespace;

/// What an action result references.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct References {
    /// Blobs a hit needs: output files, stdout and stderr, output-directory Tree blobs and the
    /// files inside them, and every directory and file under output directories given as
    /// root digests.
    pub needed: Vec<Digest>,
    /// The output Trees that were read. Clients may store their directories as blobs too, so
    /// expiry keeps those (hashing them only then), but a hit does not need them (Bazel uploads
    /// only the Tree).
    pub output_trees: Vec<reapi::Tree>,
    /// Why the result can never be a hit (an output Tree blob that is not a Tree), if so.
    pub unusable: Option<String>,
}

/// Everything `result` (whose digests are of `function`) references, reading its output
/// Trees and directory trees from `blobs`. Absent Trees and directories are listed, not
/// errors; store failures are errors; invalid digests are `Corrupt`.
pub async fn references(
    blobs: &dyn BlobStore,
    function: DigestFunction,
    result: &reapi::ActionResult,
) -> Result<References> {
    let digest = |d: Option<&reapi::Digest>| {
        crate::error::digest(function, d)
            .map_err(|e| CacheError::Corrupt(format!("an action result names {e}")))
    };
    let mut references = References::default();
    for file in &result.output_files {
        references.needed.push(digest(file.digest.as_ref())?);
    }
    for log in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        references.needed.push(digest(Some(log))?);
    }
    for directory in &result.output_directories {
        if directory.tree_digest.is_some() || directory.root_directory_digest.is_none() {
            let tree_digest = digest(directory.tree_digest.as_ref())?;
            references.needed.push(tree_digest);
            if let Some(bytes) = blobs.get_bytes(&tree_digest).await? {
                match reapi::Tree::decode(bytes.as_ref()) {
                    Ok(tree) => {
                        for child in tree.root.iter().chain(&tree.children) {
                            for file in &child.files {
                                references.needed.push(digest(file.digest.as_ref())?);
                            }
                        }
                        references.output_trees.push(tree);
                    }
                    Err(e) => {
                        references.unusable = Some(format!("output tree {tree_digest} is not a Tree: {e}"));
                    }
                }
            }
        }
        if let Some(root) = &directory.root_directory_digest {
            let root = digest(Some(root))?;
            let walk =
                casket_tree::walk(blobs, &root, casket_tree::default_concurrency(), Gaps::Skip).await?;
            references.needed.extend(walk.reachable());
        }
    }
    Ok(references)
}

/// The stored result for `action`, if it and everything it needs are present; a miss is
/// `NotFound` saying why. Presence is asked of the store of record, past any existence cache
/// (a hit whose outputs expired from a shared bucket must be a miss), and the check marks
/// everything as used.
pub async fn get_action_result(namespace: &Namespace, action: ActionId) -> Result<reapi::ActionResult> {
    let bytes = namespace
        .action_cache
        .get(&action.key())
        .await?
        .ok_or_else(|| CacheError::NotFound(format!("no result for action {action}")))?;
    let result = reapi::ActionResult::decode(bytes.as_ref())
        .map_err(|e| CacheError::Corrupt(format!("stored result for {action} is corrupt: {e}")))?;
    let references = references(namespace.blobs.as_ref(), action.function, &result).await?;
    if let Some(why) = references.unusable {
        return Err(CacheError::NotFound(format!(
            "result for action {action} is unusable: {why}"
        )));
    }
    let missing = namespace.blobs.find_missing_uncached(&references.needed).await?;
    if let Some(first) = missing.first() {
        return Err(CacheError::NotFound(format!(
            "result for action {action} references {} missing blobs, such as {first}",
            missing.len()
        )));
    }
    Ok(result)
}

/// Stores `result` for `action` after checking it: every digest valid, every output path
/// relative and clean (clients write outputs where these paths say).
pub async fn put_action_result(
    namespace: &Namespace,
    action: ActionId,
    result: &reapi::ActionResult,
) -> Result<()> {
    check_action_result(action.function, result)?;
    namespace
        .action_cache
        .put(&action.key(), Bytes::from(result.encode_to_vec()))
        .await?;
    Ok(())
}

/// Refuses a result with an invalid digest or an output path that is absolute, has empty,
/// `.` or `..` components, or NUL. Only an output directory may be the empty path (the whole
/// working directory, as REAPI allows). The deprecated symlink lists are checked too: older
/// clients still fill them.
#[allow(deprecated)]
pub fn check_action_result(function: DigestFunction, result: &reapi::ActionResult) -> Result<()> {
    let check_digest = |d: Option<&reapi::Digest>, what: &str| {
        crate::error::digest(function, d).map_err(|e| CacheError::Invalid(format!("{what}: {e}")))
    };
    for file in &result.output_files {
        check_path(&file.path, false)?;
        check_digest(file.digest.as_ref(), &file.path)?;
    }
    for directory in &result.output_directories {
        check_path(&directory.path, true)?;
        if directory.tree_digest.is_some() || directory.root_directory_digest.is_none() {
            check_digest(directory.tree_digest.as_ref(), &directory.path)?;
        }
        if let Some(root) = &directory.root_directory_digest {
            check_digest(Some(root), &directory.path)?;
        }
    }
    let symlinks = result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks);
    for symlink in symlinks {
        check_path(&symlink.path, false)?;
    }
    for (log, what) in [
        (&result.stdout_digest, "stdout"),
        (&result.stderr_digest, "stderr"),
    ] {
        if let Some(log) = log {
            check_digest(Some(log), what)?;
        }
    }
    Ok(())
}

fn check_path(path: &str, may_be_empty: bool) -> Result<()> {
    if path.is_empty() && may_be_empty {
        return Ok(());
    }
    if path.split('/').all(|c| EntryName::new(c).is_ok()) {
        return Ok(());
    }
    Err(CacheError::Invalid(format!(
        "output path {path:?} must be relative, with no empty, '.' or '..' components and no NUL"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> reapi::OutputFile {
        reapi::OutputFile {
            path: path.to_owned(),
            digest: Some(Digest::of(DigestFunction::Sha256, b"x").to_proto()),
            ..Default::default()
        }
    }

    #[test]
    fn hostile_output_paths_are_refused_naming_the_path() {
        for bad in [
            "../../etc/passwd",
            "/abs",
            "a//b",
            "a/./b",
            "a/",
            "",
            "a\0b",
            ".",
            "a/..",
        ] {
            let result = reapi::ActionResult {
                output_files: vec![file(bad)],
                ..Default::default()
            };
            let error = check_action_result(DigestFunction::Sha256, &result)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(&format!("{bad:?}")), "{bad:?}: {error}");
        }
        let symlink = reapi::ActionResult {
            output_symlinks: vec![reapi::OutputSymlink {
                path: "../up".into(),
                target: "/anywhere".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check_action_result(DigestFunction::Sha256, &symlink).is_err());
    }

    #[test]
    fn clean_paths_and_the_whole_working_directory_are_accepted() {
        let tree = Some(Digest::of(DigestFunction::Sha256, b"tree").to_proto());
        let result = reapi::ActionResult {
            output_files: vec![file("bazel-out/k8/bin/app"), file("a.o")],
            output_directories: vec![reapi::OutputDirectory {
                path: String::new(),
                tree_digest: tree,
                ..Default::default()
            }],
            output_symlinks: vec![reapi::OutputSymlink {
                path: "lib/link".into(),
                target: "../../elsewhere".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        check_action_result(DigestFunction::Sha256, &result).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn invalid_digests_are_refused() {
        let mut bad = file("out");
        if let Some(d) = &mut bad.digest {
            d.hash = "nothex".into();
        }
        let result = reapi::ActionResult {
            output_files: vec![bad],
            ..Default::default()
        };
        assert!(matches!(
            check_action_result(DigestFunction::Sha256, &result),
            Err(CacheError::Invalid(_))
        ));
    }
}
