//! The root of a build sandbox, offered both as a virtual directory and as a real path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use casket_model::DigestFunction;
use casket_store::BlobStore;
use tokio::sync::Mutex;

use crate::error::{Result, VdirError, io_error};
use crate::{CasDirectory, Directory, FileDirectory};

/// A sandbox root (BuildStream's `Sandbox.get_virtual_directory` and `get_directory`).
///
/// It starts as a tree in the CAS, so staging is CAS-to-CAS imports that touch no disk. The
/// first call to [`SandboxRoot::real_directory`] writes the tree to the sandbox path; from then
/// on every [`SandboxRoot::virtual_directory`] is a fresh view of that path, never cached, so
/// changes made through the real path are always seen. Handles obtained before the switch
/// still show the tree as it was then.
#[derive(Debug)]
pub struct SandboxRoot {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Virtual(CasDirectory),
    Real,
}

impl SandboxRoot {
    /// An empty sandbox root whose real form will be `path` (which must be missing or an
    /// empty directory when it is first needed), staged in `store` until then.
    pub fn new(path: impl Into<PathBuf>, store: Arc<dyn BlobStore>, function: DigestFunction) -> SandboxRoot {
        SandboxRoot {
            path: path.into(),
            state: Mutex::new(State::Virtual(CasDirectory::empty(store, function))),
        }
    }

    /// The root as a virtual directory: the cached CAS tree until the real path has been
    /// handed out, a fresh view of the real path after.
    pub async fn virtual_directory(&self) -> Result<Box<dyn Directory>> {
        match &*self.state.lock().await {
            State::Virtual(tree) => Ok(Box::new(tree.clone())),
            State::Real => Ok(Box::new(FileDirectory::open(&self.path)?)),
        }
    }

    /// The root as a real directory, written out from the CAS tree on the first call.
    pub async fn real_directory(&self) -> Result<&Path> {
        let mut state = self.state.lock().await;
        if let State::Virtual(tree) = &*state {
            if let Ok(mut entries) = std::fs::read_dir(&self.path)
                && entries.next().is_some()
            {
                return Err(VdirError::Exists {
                    path: self.path.display().to_string(),
                });
            }
            std::fs::create_dir_all(&self.path).map_err(io_error("create directory", &self.path))?;
            tree.export_files(&self.path, false).await?;
            *state = State::Real;
        }
        Ok(&self.path)
    }
}
