//! `<stage>/state.json`: what enrollment wrote and what was there before, so refresh
//! knows the CA and node, and `remove` can put every file back.

use crate::error::{Error, Result};
use crate::fsx;
use crate::root::Root;
use crate::txn::Original;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A JSON file this tool wrote; `None` when it is absent.
fn load_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<Option<T>> {
    let Some(bytes) = fsx::read_opt(path)? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Failed(format!("{} is unreadable: {e}", path.display())))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub ca_url: String,
    pub ca_fingerprint: String,
    pub node: String,
    /// Host private key paths, in the order the CA certified them.
    pub host_keys: Vec<PathBuf>,
    /// The host key that signs node proofs.
    pub proof_key: PathBuf,
    pub sshd_port: u16,
    /// Every file the tool manages, as it was before the tool first wrote it.
    pub originals: Vec<Original>,
    /// Directories enrollment created (removed again by `remove` when empty).
    pub created_dirs: Vec<PathBuf>,
    /// `--discovery`: the discovery command and sudoers drop-in are managed files.
    #[serde(default)]
    pub discovery: bool,
    /// Enrollment created the discovery account (so `remove` deletes it again).
    #[serde(default)]
    pub created_discovery_user: bool,
}

impl State {
    pub fn load(root: &Root) -> Result<Option<State>> {
        load_json(&root.state_file())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| Error::Failed(format!("cannot encode state: {e}")))?;
        v.push(b'\n');
        Ok(v)
    }

    /// Adds originals the state does not know yet (the first capture of a path wins:
    /// later captures are of our own files).
    pub fn absorb(&mut self, originals: &[Original], created_dirs: &[PathBuf]) {
        for o in originals {
            if !self.originals.iter().any(|k| k.path == o.path) {
                self.originals.push(o.clone());
            }
        }
        for d in created_dirs {
            if !self.created_dirs.contains(d) {
                self.created_dirs.push(d.clone());
            }
        }
    }
}

/// What retrying a failed deregistration needs: the CA, the node's name, and the host
/// key that proves it is that node (host keys stay on the node after `remove`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingDeregistration {
    pub ca_url: String,
    pub ca_fingerprint: String,
    pub node: String,
    pub proof_key: PathBuf,
    /// Directories saving it created (removed again with it, when empty).
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
}

impl PendingDeregistration {
    pub fn of(state: &State) -> Self {
        PendingDeregistration {
            ca_url: state.ca_url.clone(),
            ca_fingerprint: state.ca_fingerprint.clone(),
            node: state.node.clone(),
            proof_key: state.proof_key.clone(),
            created_dirs: Vec::new(),
        }
    }

    pub fn load(root: &Root) -> Result<Option<Self>> {
        load_json(&root.pending_deregistration())
    }

    pub fn save(mut self, root: &Root) -> Result<()> {
        let path = root.pending_deregistration();
        if let Some(dir) = path.parent() {
            self.created_dirs = fsx::create_dirs(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(&self).map_err(|e| Error::Failed(format!("cannot encode: {e}")))?;
        fsx::write_atomic(&path, &bytes, 0o600)
    }

    /// Forgets it, and the directories saving it created.
    pub fn clear(self, root: &Root) -> Result<()> {
        fsx::remove_durable(&root.pending_deregistration())?;
        for d in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        Ok(())
    }
}
