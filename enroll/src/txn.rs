//! A write-ahead journal around every change, so the node always ends in either the old
//! state or the new one.
//!
//! Before a path is first touched its original bytes and mode (or its absence) are
//! added to `<stage>/journal.json` and the journal is synced; only then is the path
//! written. [`Txn::rollback`] restores those originals byte for byte, removes the
//! directories the change created and reloads sshd if its configuration was touched. If
//! the process dies instead, the next run finds the journal and does the same
//! ([`recover`]). [`Txn::commit`] deletes the journal: from then on the change stands.

use crate::error::{Error, Result};
use crate::fsx;
use crate::root::Root;
use crate::sshd::SshdCtl;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A file as it was before the tool touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub path: PathBuf,
    /// Base64 of the bytes; `None` when the file did not exist.
    pub content: Option<String>,
    pub mode: Option<u32>,
}

impl Original {
    pub fn capture(path: &Path) -> Result<Original> {
        let bytes = fsx::read_opt(path)?;
        let mode = bytes.as_ref().and(fsx::mode_of(path));
        Ok(Original { path: path.to_path_buf(), content: bytes.map(|b| STANDARD.encode(b)), mode })
    }

    /// Puts the file back exactly as captured.
    pub fn restore(&self) -> Result<()> {
        match &self.content {
            None => fsx::remove_durable(&self.path),
            Some(b64) => {
                let bytes = STANDARD
                    .decode(b64)
                    .map_err(|_| Error::Failed(format!("the saved copy of {} is corrupt", self.path.display())))?;
                fsx::write_atomic(&self.path, &bytes, self.mode.unwrap_or(0o644))
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub created_dirs: Vec<PathBuf>,
    pub originals: Vec<Original>,
    /// The sshd configuration (drop-in or host certificates) was touched: a rollback must
    /// reload so the daemon forgets it.
    pub sshd_touched: bool,
}

pub struct Txn {
    path: PathBuf,
    journal: Journal,
    writes: usize,
}

impl Txn {
    /// Creates the stage directory if needed and starts the journal.
    pub fn begin(root: &Root) -> Result<Txn> {
        let created_dirs = fsx::create_dirs(&root.stage())?;
        let txn = Txn { path: root.journal(), journal: Journal { created_dirs, ..Journal::default() }, writes: 0 };
        txn.persist()?;
        Ok(txn)
    }

    fn persist(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.journal)
            .map_err(|e| Error::Failed(format!("cannot encode the journal: {e}")))?;
        fsx::write_atomic(&self.path, &json, 0o600)
    }

    fn record(&mut self, path: &Path) -> Result<()> {
        if self.journal.originals.iter().any(|o| o.path == path) {
            return Ok(());
        }
        self.journal.originals.push(Original::capture(path)?);
        self.persist()
    }

    pub fn mark_sshd_touched(&mut self) -> Result<()> {
        if !self.journal.sshd_touched {
            self.journal.sshd_touched = true;
            self.persist()?;
        }
        Ok(())
    }

    pub fn ensure_dir(&mut self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        // Record before creating, so a crash in between still removes it.
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur.filter(|d| !d.exists()) {
            missing.push(d.to_path_buf());
            cur = d.parent();
        }
        missing.reverse();
        self.journal.created_dirs.extend(missing);
        self.persist()?;
        fsx::create_dirs(dir)?;
        Ok(())
    }

    pub fn write(&mut self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        self.record(path)?;
        fsx::write_atomic(path, bytes, mode)?;
        self.writes += 1;
        Ok(())
    }

    pub fn remove(&mut self, path: &Path) -> Result<()> {
        self.record(path)?;
        fsx::remove_durable(path)?;
        self.writes += 1;
        Ok(())
    }

    pub fn writes(&self) -> usize {
        self.writes
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The change stands: the journal goes, its originals are returned for the state file.
    pub fn commit(self) -> Result<Journal> {
        fsx::remove_durable(&self.path)?;
        Ok(self.journal)
    }

    /// Restores every original; `cause` is what went wrong.
    pub fn rollback(self, sshd: &SshdCtl, cause: Error) -> Error {
        match undo(&self.path, &self.journal, sshd) {
            Ok(()) => Error::RolledBack { cause: cause.to_string() },
            Err(e) => Error::RollbackFailed { cause: cause.to_string(), rollback: e.to_string() },
        }
    }
}

fn undo(journal_path: &Path, journal: &Journal, sshd: &SshdCtl) -> Result<()> {
    // Every original is attempted even if one fails; the first failure is reported.
    let mut first_err = None;
    for original in journal.originals.iter().rev() {
        if let Err(e) = original.restore() {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    fsx::remove_durable(journal_path)?;
    for dir in journal.created_dirs.iter().rev() {
        // Only empty directories go: anything else in them is not ours to delete.
        let _ = std::fs::remove_dir(dir);
    }
    if journal.sshd_touched {
        sshd.test()?;
        sshd.reload()?;
    }
    Ok(())
}

/// Finishes the rollback of an interrupted run, if there was one. Returns whether it did.
pub fn recover(root: &Root, sshd: &SshdCtl) -> Result<bool> {
    let path = root.journal();
    let Some(bytes) = fsx::read_opt(&path)? else { return Ok(false) };
    let journal: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Failed(format!("{} is unreadable ({e}); restore by hand", path.display())))?;
    undo(&path, &journal, sshd).map_err(|e| Error::RollbackFailed {
        cause: "an earlier run was interrupted".into(),
        rollback: e.to_string(),
    })?;
    Ok(true)
}
