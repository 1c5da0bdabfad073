//! `build.buildgrid.LocalContentAddressableStorage`, as BuildStream 2 and buildbox-run call it
//! (../shared/notes/buildbox-casd.md, §1.3): captures into the local store, staging out of it,
//! and transfers between it and the instance's remote (the storage service for the local
//! instance, the proxied remote for an instance from GetInstanceNameForRemotes) through
//! casket's client. Each handler decodes, calls the tree, client or cache layer, and encodes;
//! errors become statuses in `casket_remote::status`.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::rpc;
use bytes::Bytes;
use casket_model::{Digest, DigestFunction, Timestamp};
use casket_remote::client::RemoteCas;
use casket_remote::client::transfer::{
    TransferError, pull_blobs, pull_directories, pull_tree, push_blobs, push_tree,
};
use casket_remote::status::{from_capture, from_staging, from_store, from_transfer, from_tree};
use casket_store::{BlobStore, BlobStoreExt};
use casket_tree::{CaptureOptions, Tree, TreeError, capture};
use futures::Stream;
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::daemon::Daemon;
use crate::proto::local_content_addressable_storage_server::LocalContentAddressableStorage;
use crate::proto::*;
use crate::stage::stage;

/// The LocalCAS service.
pub(crate) struct LocalCas {
    daemon: Arc<Daemon>,
}

impl LocalCas {
    pub(crate) fn new(daemon: Arc<Daemon>) -> Self {
        LocalCas { daemon }
    }

    /// The remote behind `instance`: the storage service for the local instance, the proxied
    /// CAS for a proxy instance, `None` when there is none; INVALID_ARGUMENT for an unknown
    /// name, PERMISSION_DENIED to `write` to a read-only remote, and UNAVAILABLE while the
    /// storage service cannot be reached.
    async fn remote(&self, instance: &str, write: bool) -> Result<Option<RemoteCas>, Status> {
        if write && self.writes_refused(instance) {
            return Err(Status::permission_denied("the remote is read-only"));
        }
        if let Some(proxy) = self.daemon.remotes.get(instance) {
            return Ok(proxy.cas.clone());
        }
        self.daemon
            .namespaces
            .get(instance)
            .ok_or_else(|| Status::invalid_argument(format!("Invalid instance name {instance:?}")))?;
        match &self.daemon.storage_service {
            Some(remote) => remote
                .get()
                .await
                .map(|remote| Some(remote.clone()))
                .map_err(|e| Status::unavailable(format!("storage service {}: {e}", remote.url()))),
            None => Ok(None),
        }
    }

    /// The remote behind `instance`, which must have one.
    async fn required_remote(&self, instance: &str, write: bool) -> Result<RemoteCas, Status> {
        self.remote(instance, write).await?.ok_or_else(|| {
            Status::failed_precondition(format!(
                "instance {instance:?} has no remote CAS to transfer with"
            ))
        })
    }

    /// The local store, under the quota.
    fn disk(&self) -> Arc<dyn BlobStore> {
        self.daemon.disk.clone()
    }
}

/// SHA-256 digests from the wire, all valid or INVALID_ARGUMENT.
fn digests(wire: &[reapi::Digest]) -> Result<Vec<Digest>, Status> {
    wire.iter().map(|d| digest(Some(d))).collect()
}

/// One SHA-256 digest from the wire.
fn digest(wire: Option<&reapi::Digest>) -> Result<Digest, Status> {
    let wire = wire.ok_or_else(|| Status::invalid_argument("a digest is required"))?;
    Digest::from_proto(DigestFunction::Sha256, wire).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn rpc_status(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    }
}

/// The failures of moving `wanted` from `source` to `dest` with `copy`: NOT_FOUND for what
/// `source` lacks and, after a failed copy, its status for what `dest` still lacks (a batch
/// may have half succeeded). Successes are not listed.
async fn move_blobs<F, Fut>(
    wanted: &[Digest],
    source: &dyn BlobStore,
    dest: &dyn BlobStore,
    copy: F,
) -> Result<Vec<(Digest, rpc::Status)>, Status>
where
    F: FnOnce(Vec<Digest>) -> Fut,
    Fut: Future<Output = Result<(), TransferError>>,
{
    let absent: HashSet<Digest> = source
        .find_missing(wanted)
        .await
        .map_err(from_store)?
        .into_iter()
        .collect();
    let available: Vec<Digest> = wanted.iter().filter(|d| !absent.contains(d)).copied().collect();
    let mut failed: Vec<(Digest, rpc::Status)> = absent.iter().map(|d| (*d, not_found(d))).collect();
    if available.is_empty() {
        return Ok(failed);
    }
    if let Err(e) = copy(available.clone()).await {
        let status = rpc_status(&from_transfer(e));
        let still = dest.find_missing(&available).await.map_err(from_store)?;
        failed.extend(still.into_iter().map(|d| (d, status.clone())));
    }
    Ok(failed)
}

fn not_found(digest: &Digest) -> rpc::Status {
    rpc_status(&Status::not_found(format!("blob {digest} not found")))
}

/// Where a captured path is: `path` itself (absolute) without a `root`; with one, `path`
/// resolved inside it (a leading `/` is the root; `..` may not climb out: NOT_FOUND, as
/// with casd).
fn capture_path(root: &str, path: &str) -> Result<PathBuf, Status> {
    use std::path::Component;
    if root.is_empty() {
        if !Path::new(path).is_absolute() {
            return Err(Status::invalid_argument(format!(
                "path {path:?} is not absolute and no root is given"
            )));
        }
        return Ok(PathBuf::from(path));
    }
    if !Path::new(root).is_absolute() {
        return Err(Status::invalid_argument(format!("root {root:?} is not absolute")));
    }
    let mut inside = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => inside.push(name),
            Component::ParentDir if inside.pop() => {}
            Component::ParentDir => {
                return Err(Status::not_found(format!("{path:?} leads out of {root:?}")));
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(Path::new(root).join(inside))
}

/// What CaptureTree and CaptureFiles record of each node (unknown names are ignored).
struct Properties {
    mtime: bool,
    /// The permission bits kept in `unix_mode`, when it is asked for.
    unix_mode: Option<u32>,
}

impl Properties {
    /// casd's rules: `unix_mode_mask` clears bits (and matters only with `unix_mode`).
    fn of(names: &[String], unix_mode_mask: Option<u32>) -> Self {
        Properties {
            mtime: names.iter().any(|n| n == "mtime"),
            unix_mode: names
                .iter()
                .any(|n| n == "unix_mode")
                .then(|| !unix_mode_mask.unwrap_or(0) & 0o7777),
        }
    }
}

impl LocalCas {
    /// Captures one directory: its root digest and, as asked, its `Tree`'s digest.
    async fn capture_tree(
        &self,
        path: &Path,
        properties: &Properties,
        format: reapi::command::OutputDirectoryFormat,
    ) -> Result<(Option<Digest>, Digest), Status> {
        use reapi::command::OutputDirectoryFormat as Format;
        let meta =
            std::fs::metadata(path).map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
        if !meta.is_dir() {
            return Err(Status::not_found(format!(
                "{} is not a directory",
                path.display()
            )));
        }
        let disk = self.disk();
        let options = CaptureOptions {
            mtime: properties.mtime,
            unix_mode: properties.unix_mode.is_some(),
            unix_mode_mask: properties.unix_mode.unwrap_or(0o7777),
            skip_special_files: true,
            casd_properties: true,
            ..CaptureOptions::default()
        };
        let captured = capture(disk.as_ref(), path, &options, &())
            .await
            .map_err(from_capture)?;
        let root = captured.root;
        if format == Format::DirectoryOnly {
            return Ok((None, root));
        }
        // The root, then every other directory once, by digest: casd's order, so both
        // daemons store the same Tree.
        let mut directories = captured.encoded_directories;
        let (_, root_bytes) = directories.pop().expect("the root is encoded last");
        directories.sort_by_key(|(digest, _)| *digest.hash());
        directories.dedup_by_key(|(digest, _)| *digest);
        let decode = |bytes: &Bytes| {
            reapi::Directory::decode(bytes.as_ref())
                .map_err(|e| Status::internal(format!("re-reading a directory: {e}")))
        };
        let tree = reapi::Tree {
            root: Some(decode(&root_bytes)?),
            children: directories
                .iter()
                .map(|(_, bytes)| decode(bytes))
                .collect::<Result<_, _>>()?,
        };
        let tree = disk
            .put_bytes(DigestFunction::Sha256, tree.encode_to_vec().into())
            .await
            .map_err(|e| {
                from_capture(TreeError::Store {
                    path: path.display().to_string(),
                    source: Box::new(e),
                })
            })?;
        Ok((Some(tree), root))
    }

    /// NOT_FOUND unless every directory of the tree at `root` (and every file, with `files`)
    /// is in the local cache.
    async fn check_local_tree(&self, root: &Digest, files: bool) -> Result<(), Status> {
        let disk = self.disk();
        let tree = Tree::load(disk.as_ref(), root, casket_tree::default_concurrency())
            .await
            .map_err(from_tree)?;
        if files {
            if let Some((path, digest)) = tree.first_missing_file(disk.as_ref()).await.map_err(from_tree)? {
                return Err(Status::not_found(format!(
                    "{path} ({digest}) is not in the local cache"
                )));
            }
        }
        Ok(())
    }

    /// Uploads the tree at `root` to the instance's remote, unless there is none or it is
    /// read-only.
    async fn upload_captured(&self, instance: &str, root: &Digest) -> Result<(), Status> {
        if self.writes_refused(instance) {
            return Ok(());
        }
        match self.remote(instance, true).await? {
            Some(remote) => {
                push_tree(self.disk(), &remote, root, &())
                    .await
                    .map_err(from_transfer)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Uploads blobs to the instance's remote, unless there is none or it is read-only.
    async fn upload_files(&self, instance: &str, digests: &[Digest]) -> Result<(), Status> {
        if self.writes_refused(instance) {
            return Ok(());
        }
        match self.remote(instance, true).await? {
            Some(remote) => {
                push_blobs(self.disk(), &remote, digests, &())
                    .await
                    .map_err(from_transfer)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether the instance's remote takes no writes.
    fn writes_refused(&self, instance: &str) -> bool {
        match self.daemon.remotes.get(instance) {
            Some(proxy) => proxy.read_only,
            None => self.daemon.storage_service_read_only,
        }
    }
}

type StageStream = Pin<Box<dyn Stream<Item = Result<StageTreeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LocalContentAddressableStorage for LocalCas {
    async fn get_local_server_details(
        &self,
        _request: Request<GetLocalServerDetailsRequest>,
    ) -> Result<Response<LocalServerDetails>, Status> {
        let uname = rustix::system::uname();
        Ok(Response::new(LocalServerDetails {
            hostname: uname.nodename().to_string_lossy().into_owned(),
            process_uid: i64::from(rustix::process::getuid().as_raw()),
            // casd names its `cas` directory.
            storage_root: self.daemon.store.root().join("cas").display().to_string(),
        }))
    }

    async fn fetch_missing_blobs(
        &self,
        request: Request<FetchMissingBlobsRequest>,
    ) -> Result<Response<FetchMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        let wanted = digests(&request.blob_digests)?;
        let disk = self.disk();
        let missing = disk.find_missing(&wanted).await.map_err(from_store)?;
        let failed = match self.remote(&request.instance_name, false).await? {
            _ if missing.is_empty() => Vec::new(),
            None => missing.iter().map(|d| (*d, not_found(d))).collect(),
            Some(remote) => {
                let fetch = |present| pull_blobs(&remote, disk.clone(), present);
                move_blobs(&missing, &remote, disk.as_ref(), fetch).await?
            }
        };
        // BuildStream reads a field that does not exist from any successful entry: only
        // failures may be listed.
        Ok(Response::new(FetchMissingBlobsResponse {
            responses: failed
                .into_iter()
                .map(|(d, status)| fetch_missing_blobs_response::Response {
                    digest: Some(d.to_proto()),
                    status: Some(status),
                })
                .collect(),
        }))
    }

    async fn upload_missing_blobs(
        &self,
        request: Request<UploadMissingBlobsRequest>,
    ) -> Result<Response<UploadMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        let wanted = digests(&request.blob_digests)?;
        let remote = self.required_remote(&request.instance_name, true).await?;
        let disk = self.disk();
        let (local, to) = (disk.clone(), &remote);
        let upload =
            move |present: Vec<Digest>| async move { push_blobs(local, to, &present, &()).await.map(drop) };
        let failed = move_blobs(&wanted, disk.as_ref(), &remote, upload).await?;
        Ok(Response::new(UploadMissingBlobsResponse {
            responses: failed
                .into_iter()
                .map(|(d, status)| upload_missing_blobs_response::Response {
                    digest: Some(d.to_proto()),
                    status: Some(status),
                })
                .collect(),
        }))
    }

    async fn fetch_tree(
        &self,
        request: Request<FetchTreeRequest>,
    ) -> Result<Response<FetchTreeResponse>, Status> {
        let request = request.into_inner();
        let root = digest(request.root_digest.as_ref())?;
        let disk = self.disk();
        match self.remote(&request.instance_name, false).await? {
            Some(remote) if request.fetch_file_blobs => {
                pull_tree(&remote, disk, &root, Arc::new(()))
                    .await
                    .map_err(from_transfer)?;
            }
            Some(remote) => {
                pull_directories(&remote, disk, &root)
                    .await
                    .map_err(from_transfer)?;
            }
            // Without a remote, FetchTree says whether the tree is complete locally.
            None => self.check_local_tree(&root, request.fetch_file_blobs).await?,
        }
        Ok(Response::new(FetchTreeResponse {}))
    }

    async fn upload_tree(
        &self,
        request: Request<UploadTreeRequest>,
    ) -> Result<Response<UploadTreeResponse>, Status> {
        let request = request.into_inner();
        let root = digest(request.root_digest.as_ref())?;
        match self.remote(&request.instance_name, true).await? {
            Some(remote) => {
                push_tree(self.disk(), &remote, &root, &())
                    .await
                    .map_err(from_transfer)?;
            }
            // Nowhere to upload to: casd then says whether the tree is complete here.
            None => self.check_local_tree(&root, true).await?,
        }
        Ok(Response::new(UploadTreeResponse {}))
    }

    type StageTreeStream = StageStream;

    async fn stage_tree(
        &self,
        request: Request<Streaming<StageTreeRequest>>,
    ) -> Result<Response<Self::StageTreeStream>, Status> {
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("StageTree needs a first request"))?;
        if !first.pre_unstage_commands.is_empty() {
            return Err(Status::invalid_argument(
                "casket casd runs no pre-unstage commands",
            ));
        }
        if !first.remote_apis_socket_path.is_empty() {
            return Err(Status::invalid_argument(
                "casket casd cannot serve a REAPI socket inside a staged tree",
            ));
        }
        let root = digest(first.root_digest.as_ref())?;
        if let Some(remote) = self.remote(&first.instance_name, false).await? {
            pull_tree(&remote, self.disk(), &root, Arc::new(()))
                .await
                .map_err(from_transfer)?;
        }
        let path = match first.path.as_str() {
            "" => None,
            path if Path::new(path).is_absolute() => Some(Path::new(path)),
            path => {
                return Err(Status::invalid_argument(format!(
                    "staging path {path:?} is not absolute"
                )));
            }
        };
        let staged = stage(&self.disk(), &root, &self.daemon.staging, path)
            .await
            .map_err(from_staging)?;
        let staged_path = staged.path.display().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx
            .send(Ok(StageTreeResponse {
                path: staged_path.clone(),
            }))
            .await;
        // The second request (or the end of the stream, or a broken connection) unstages.
        tokio::spawn(async move {
            let _ = requests.message().await;
            let answer = match staged.unstage().await {
                Ok(()) => Ok(StageTreeResponse::default()),
                Err(e) => Err(Status::internal(format!("unstage {staged_path}: {e}"))),
            };
            let _ = tx.send(answer).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn capture_tree(
        &self,
        request: Request<CaptureTreeRequest>,
    ) -> Result<Response<CaptureTreeResponse>, Status> {
        let request = request.into_inner();
        let properties = Properties::of(&request.node_properties, request.unix_mode_mask.map(|m| m.value));
        let format = reapi::command::OutputDirectoryFormat::try_from(request.output_directory_format)
            .map_err(|_| Status::invalid_argument("unknown output_directory_format"))?;
        let mut responses = Vec::with_capacity(request.path.len());
        for path in &request.path {
            let captured = match capture_path(&request.root, path) {
                Ok(full) => self.capture_tree(&full, &properties, format).await,
                Err(e) => Err(e),
            };
            let captured = match captured {
                Ok((tree, root)) if !request.skip_upload => self
                    .upload_captured(&request.instance_name, &root)
                    .await
                    .map(|()| (tree, root)),
                other => other,
            };
            responses.push(match captured {
                Ok((tree, root)) => capture_tree_response::Response {
                    path: path.clone(),
                    // As casd answers: an empty tree digest for DIRECTORY_ONLY, no root
                    // directory digest for TREE_ONLY.
                    tree_digest: Some(tree.map(|t| t.to_proto()).unwrap_or_default()),
                    root_directory_digest: (format != reapi::command::OutputDirectoryFormat::TreeOnly)
                        .then(|| root.to_proto()),
                    status: Some(rpc::Status::default()),
                },
                Err(status) => capture_tree_response::Response {
                    status: Some(rpc_status(&status)),
                    ..Default::default()
                },
            });
        }
        Ok(Response::new(CaptureTreeResponse { responses }))
    }

    async fn capture_files(
        &self,
        request: Request<CaptureFilesRequest>,
    ) -> Result<Response<CaptureFilesResponse>, Status> {
        let request = request.into_inner();
        let properties = Properties::of(&request.node_properties, request.unix_mode_mask.map(|m| m.value));
        let disk = self.disk();
        let mut responses = Vec::with_capacity(request.path.len());
        let mut stored = Vec::new();
        for path in &request.path {
            let captured = match capture_path(&request.root, path) {
                Ok(full) => capture_file(disk.as_ref(), &full, &properties).await,
                Err(e) => Err(e),
            };
            responses.push(match captured {
                Ok((digest, is_executable, node_properties)) => {
                    stored.push(digest);
                    capture_files_response::Response {
                        path: path.clone(),
                        digest: Some(digest.to_proto()),
                        status: Some(rpc::Status::default()),
                        is_executable,
                        node_properties,
                    }
                }
                Err(status) => capture_files_response::Response {
                    path: path.clone(),
                    status: Some(rpc_status(&status)),
                    ..Default::default()
                },
            });
        }
        if !request.skip_upload && !stored.is_empty() {
            self.upload_files(&request.instance_name, &stored).await?;
        }
        Ok(Response::new(CaptureFilesResponse { responses }))
    }

    async fn get_instance_name_for_remote(
        &self,
        request: Request<GetInstanceNameForRemoteRequest>,
    ) -> Result<Response<GetInstanceNameForRemoteResponse>, Status> {
        let request = request.into_inner();
        let remote = Remote {
            url: request.url,
            instance_name: request.instance_name,
            server_cert: request.server_cert,
            client_key: request.client_key,
            client_cert: request.client_cert,
            ..Default::default()
        };
        // casd names the CAS alone.
        let request = GetInstanceNameForRemotesRequest {
            content_addressable_storage: Some(remote),
            ..Default::default()
        };
        let instance_name = self.daemon.remotes.register(&self.daemon, &request).await?;
        Ok(Response::new(GetInstanceNameForRemoteResponse { instance_name }))
    }

    async fn get_instance_name_for_remotes(
        &self,
        request: Request<GetInstanceNameForRemotesRequest>,
    ) -> Result<Response<GetInstanceNameForRemotesResponse>, Status> {
        let instance_name = self
            .daemon
            .remotes
            .register(&self.daemon, request.get_ref())
            .await?;
        Ok(Response::new(GetInstanceNameForRemotesResponse { instance_name }))
    }

    async fn get_instance_name_for_namespace(
        &self,
        _request: Request<GetInstanceNameForNamespaceRequest>,
    ) -> Result<Response<GetInstanceNameForNamespaceResponse>, Status> {
        Err(Status::new(
            Code::Unimplemented,
            "namespaces are not supported (as in buildbox-casd 1.4.25)",
        ))
    }

    async fn get_local_disk_usage(
        &self,
        _request: Request<GetLocalDiskUsageRequest>,
    ) -> Result<Response<GetLocalDiskUsageResponse>, Status> {
        // The cache's own size, exactly, whether or not there is a quota: BuildStream compares
        // it with the quota to decide that the cache is full.
        let usage = self.daemon.quota.usage();
        Ok(Response::new(GetLocalDiskUsageResponse {
            size_bytes: i64::try_from(usage.stored_bytes).unwrap_or(i64::MAX),
            quota_bytes: i64::try_from(self.daemon.quota_high).unwrap_or(i64::MAX),
        }))
    }
}

/// Stores one regular file: its digest, whether it is executable, and the properties asked for.
async fn capture_file(
    disk: &dyn BlobStore,
    path: &Path,
    properties: &Properties,
) -> Result<(Digest, bool, Option<reapi::NodeProperties>), Status> {
    // A symlink is followed, as casd does.
    let path =
        &std::fs::canonicalize(path).map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
    let meta = std::fs::metadata(path).map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Status::not_found(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let digest = disk
        .ingest_file(path, DigestFunction::Sha256)
        .await
        .map_err(|e| {
            from_capture(TreeError::Store {
                path: path.display().to_string(),
                source: Box::new(e),
            })
        })?;
    let mode = meta.permissions().mode();
    let node_properties = casket_model::NodeProperties {
        // To the microsecond, as casd records it.
        mtime: properties.mtime.then(|| Timestamp {
            seconds: meta.mtime(),
            nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32 / 1000 * 1000,
        }),
        unix_mode: properties.unix_mode.map(|mask| mode & mask),
        ..Default::default()
    };
    Ok((digest, mode & 0o100 != 0, node_properties.to_proto()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_paths_resolve_inside_the_root_as_casd_does() {
        let ok = |root, path| capture_path(root, path).expect("resolves");
        assert_eq!(ok("", "/abs/out"), PathBuf::from("/abs/out"));
        assert_eq!(
            ok("/stage", "buildstream/probe/built.bst/."),
            PathBuf::from("/stage/buildstream/probe/built.bst")
        );
        assert_eq!(
            ok("/stage", "/etc"),
            PathBuf::from("/stage/etc"),
            "an absolute path stays inside the root"
        );
        assert_eq!(ok("/stage", "a/../b"), PathBuf::from("/stage/b"));
        let code = |root, path| capture_path(root, path).expect_err("refused").code();
        assert_eq!(code("/stage", "../outside"), Code::NotFound);
        assert_eq!(code("/stage", "a/../../outside"), Code::NotFound);
        assert_eq!(code("", "relative"), Code::InvalidArgument);
        assert_eq!(code("relative-root", "x"), Code::InvalidArgument);
    }

    #[test]
    fn the_unix_mode_mask_clears_bits_and_only_with_unix_mode() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let props = Properties::of(&names(&["unix_mode"]), None);
        assert_eq!(props.unix_mode, Some(0o7777));
        assert!(!props.mtime);
        assert_eq!(
            Properties::of(&names(&["unix_mode"]), Some(0o022)).unix_mode,
            Some(0o7755)
        );
        assert_eq!(
            Properties::of(&names(&["unix_mode"]), Some(0o7777)).unix_mode,
            Some(0)
        );
        // buildbox-run sends an empty mask and no property names: nothing is recorded.
        let run = Properties::of(&[], Some(0));
        assert_eq!(run.unix_mode, None);
        assert!(Properties::of(&names(&["mtime", "unknown"]), None).mtime);
    }
}
