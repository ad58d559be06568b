//! A write-ahead journal around every change, so the node always ends in either the old
//! state or the new one — and at no instant in between does the *running* sshd name a
//! file that is missing.
//!
//! Before a path is first touched its original bytes and mode (or its absence, or the
//! symlink it was) are added to `<stage>/journal.json` and the journal is synced; only
//! then is the path written. [`Txn::rollback`] restores those originals; if the process
//! dies instead, the next run finds the journal and does the same ([`recover`]).
//! [`Txn::commit`] deletes the journal: from then on the change stands.
//!
//! Undo order matters because sshd refuses **every** public key while its `RevokedKeys`
//! names a missing or unloadable file (and `sshd -t` does not notice). When the daemon may
//! have loaded the changed configuration, the undo is in two passes ([`undo`]):
//!
//! 1. restore the sshd configuration and every file that gets *bytes* back (the KRL is
//!    never deleted here);
//! 2. `sshd -t`, check with `sshd -T` that nothing about to be deleted is still named,
//!    reload, wait until the sessions accepted under the old configuration have
//!    authenticated ([`settle`]), then delete the files the change created (the KRL
//!    among them);
//!
//! and only then the journal goes. A crash or a failed reload anywhere in between leaves
//! the journal, so `status` reports it and the next run finishes the same undo (each
//! step is idempotent).

use crate::error::{Error, Result};
use crate::root::Root;
use crate::sshd::SshdCtl;
use crate::{failpoint, fsx};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// After the reload that drops our configuration, before deleting the files it named:
/// sessions accepted before the reload still authenticate under the old configuration
/// and read its `RevokedKeys` then, so the deletion waits (this long at most) until
/// every session that was unauthenticated at the reload has authenticated or gone.
pub(crate) const SETTLE_MAX: Duration = Duration::from_secs(10);

/// Waits for the sessions forked under the configuration just reloaded away (see
/// [`SETTLE_MAX`]); a session still unauthenticated after that is refused once.
pub(crate) fn settle() {
    let sessions = crate::sshd::preauth_sessions();
    let left = crate::sshd::wait_authenticated(&sessions, SETTLE_MAX);
    if left > 0 {
        eprintln!(
            "portcullis-enroll: {left} ssh session(s) accepted before the reload are still unauthenticated after \
             {} s; deleting the old configuration's files anyway",
            SETTLE_MAX.as_secs()
        );
    }
}

/// A file as it was before the tool touched it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub path: PathBuf,
    /// Base64 of the bytes; `None` when the file did not exist (or was a symlink).
    pub content: Option<String>,
    pub mode: Option<u32>,
    /// The path was a symlink to this target (restored as a symlink, not as the bytes
    /// it pointed to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<PathBuf>,
}

impl Original {
    pub fn capture(path: &Path) -> Result<Original> {
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.file_type().is_symlink()
        {
            let target = std::fs::read_link(path).map_err(|e| Error::io("cannot read link", path, e))?;
            return Ok(Original { path: path.to_path_buf(), content: None, mode: None, link: Some(target) });
        }
        let bytes = fsx::read_opt(path)?;
        let mode = bytes.as_ref().and(fsx::mode_of(path));
        Ok(Original { path: path.to_path_buf(), content: bytes.map(|b| STANDARD.encode(b)), mode, link: None })
    }

    /// The path did not exist: restoring it deletes it.
    pub fn is_absence(&self) -> bool {
        self.content.is_none() && self.link.is_none()
    }

    /// Puts the file back exactly as captured.
    pub fn restore(&self) -> Result<()> {
        if let Some(target) = &self.link {
            return fsx::symlink_atomic(target, &self.path);
        }
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

/// A file sshd reads its configuration from (not one the configuration names).
pub fn is_sshd_config(root: &Root, path: &Path) -> bool {
    path == root.sshd_config() || path.parent() == Some(root.drop_in_dir().as_path())
}

/// Splits originals into those restored before the reload and those restored after it:
/// a file the change created (the KRL, trusted CA keys, principals, host certificates)
/// may be named by the running daemon's configuration, so it is deleted only once the
/// daemon has reloaded without it.
pub fn split_for_undo<'a>(root: &Root, originals: &'a [Original]) -> (Vec<&'a Original>, Vec<&'a Original>) {
    originals.iter().partition(|o| !o.is_absence() || is_sshd_config(root, &o.path))
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub created_dirs: Vec<PathBuf>,
    pub originals: Vec<Original>,
    /// The sshd configuration (drop-in or host certificates) was touched: a rollback must
    /// reload so the daemon forgets it.
    pub sshd_touched: bool,
    /// The daemon may have loaded the changed configuration: set (and synced) before each
    /// reload, cleared when the reload command reports failure (then the daemon did not
    /// get it — e.g. sshd is not running). A rollback reloads only when this is set.
    /// Journals written before this field existed read as "may have".
    #[serde(default = "default_true")]
    pub sshd_reloaded: bool,
    /// The discovery account this run creates: recorded (and synced) before `useradd`
    /// runs, so a rollback — also one finished by the next run after a crash — deletes
    /// it like a file this run wrote. Never set for an account that already existed.
    #[serde(default)]
    pub created_account: bool,
}

pub struct Txn {
    root: Root,
    path: PathBuf,
    journal: Journal,
    writes: usize,
}

impl Txn {
    /// Creates the stage directory if needed and starts the journal.
    pub fn begin(root: &Root) -> Result<Txn> {
        let created_dirs = fsx::create_dirs(&root.stage())?;
        let journal = Journal {
            created_dirs,
            sshd_touched: false,
            sshd_reloaded: false,
            originals: Vec::new(),
            created_account: false,
        };
        let txn = Txn { root: root.clone(), path: root.journal(), journal, writes: 0 };
        if let Err(e) = txn.persist() {
            // Nothing was changed yet: leave no empty stage directory behind.
            for dir in txn.journal.created_dirs.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
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

    /// Puts back a file as `original` describes it (journaled like a write).
    pub fn restore(&mut self, original: &Original) -> Result<()> {
        self.record(&original.path)?;
        original.restore()?;
        self.writes += 1;
        Ok(())
    }

    /// Records that this run is about to create the discovery account (before it does).
    pub fn creating_account(&mut self) -> Result<()> {
        self.journal.created_account = true;
        self.persist()
    }

    /// `sshd -t` on the configuration as this transaction has written it. What it proves
    /// is the only way to reload ([`Checked::reload`]), and it holds the transaction
    /// until then, so nothing can be written between the check and the reload: the
    /// running daemon never gets a configuration no `sshd -t` has read.
    pub fn check(&mut self, sshd: &SshdCtl) -> Result<Checked<'_>> {
        sshd.test()?;
        Ok(Checked { txn: self })
    }

    /// Reloads sshd, first recording that the daemon may load the changed configuration
    /// (so a crash during the reload still makes the rollback reload).
    fn reload(&mut self, sshd: &SshdCtl) -> Result<()> {
        self.journal.sshd_reloaded = true;
        self.persist()?;
        if let Err(e) = sshd.reload() {
            // The reload command failed, so the daemon kept its configuration.
            self.journal.sshd_reloaded = false;
            let _ = self.persist();
            return Err(e);
        }
        Ok(())
    }

    /// A rollback now would reload sshd.
    pub fn rollback_reloads(&self) -> bool {
        self.journal.sshd_touched && self.journal.sshd_reloaded
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

    /// Restores every original; `cause` is what went wrong. Only a complete undo gives
    /// [`RolledBack`]; otherwise the error says what is left for the next run.
    pub fn rollback(self, sshd: &SshdCtl, cause: Error) -> std::result::Result<RolledBack, Error> {
        match undo(&self.root, &self.journal, sshd, false) {
            Ok(()) => Ok(RolledBack { cause: cause.to_string() }),
            Err(e) => Err(Error::RollbackFailed { cause: cause.to_string(), rollback: with_journal_kept(e) }),
        }
    }
}

/// Proof that `sshd -t` accepted what the transaction wrote, holding the transaction
/// (see [`Txn::check`]).
pub struct Checked<'t> {
    txn: &'t mut Txn,
}

impl Checked<'_> {
    /// Reloads sshd with the checked configuration; the transaction is writable again
    /// afterwards.
    pub fn reload(self, sshd: &SshdCtl) -> Result<()> {
        self.txn.reload(sshd)
    }
}

/// Proof that a run's changes were all undone: the node is as it was before the run, and
/// its journal is gone. Only [`Txn::rollback`] makes one, so what may follow only a
/// complete rollback (telling the CA to forget the node) cannot run after a partial one.
#[derive(Debug)]
pub struct RolledBack {
    cause: String,
}

impl RolledBack {
    /// What the run reports: rolled back, and why.
    pub fn into_error(self) -> Error {
        Error::RolledBack { cause: self.cause }
    }
}

fn with_journal_kept(e: Error) -> String {
    format!(
        "{e}; the journal is kept, the KRL stays in place, and the next `portcullis-enroll` run \
         (or the refresh timer) completes the rollback"
    )
}

/// Restores each original (all are attempted; the first failure is returned).
fn restore_all<'a>(originals: impl Iterator<Item = &'a Original>) -> Result<()> {
    let mut first_err = None;
    for original in originals {
        if let Err(e) = original.restore() {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Which of the files about to be deleted the configuration on disk still names, with
/// the keyword naming each.
fn still_named<'a>(sshd: &SshdCtl, deleting: &[&'a Original]) -> Result<Vec<(&'static str, &'a Original)>> {
    let eff = sshd.effective()?;
    let mut named = Vec::new();
    for key in ["revokedkeys", "trustedusercakeys", "hostcertificate"] {
        for value in eff.get(key).into_iter().flatten() {
            if let Some(o) = deleting.iter().find(|o| o.path == Path::new(value)) {
                named.push((key, *o));
            }
        }
    }
    Ok(named)
}

/// Fails when the configuration on disk still names a file about to be deleted.
pub fn check_not_named(sshd: &SshdCtl, deleting: &[&Original]) -> Result<()> {
    match still_named(sshd, deleting)?.first() {
        Some((key, o)) => Err(Error::Failed(format!(
            "sshd -T still shows {key} {}, which is about to be deleted; it is kept",
            o.path.display()
        ))),
        None => Ok(()),
    }
}

/// `interrupted`: the journal is an earlier run's. Then `sshd_reloaded` says only what
/// that run did: since it stopped, sshd may have been restarted with the changed files
/// (the machine rebooted, a package upgrade restarted it), so a touched configuration is
/// undone with the reload, and the files it names are deleted only after it — deleting
/// them without one left a running sshd naming a missing KRL, refusing every key.
fn undo(root: &Root, journal: &Journal, sshd: &SshdCtl, interrupted: bool) -> Result<()> {
    if journal.sshd_touched && (journal.sshd_reloaded || interrupted) {
        let (before, after) = split_for_undo(root, &journal.originals);
        restore_all(before.into_iter().rev())?;
        failpoint::after("rollback-restore")?;
        sshd.test()?;
        // A file the restored configuration names again (the run re-created one that was
        // missing while the configuration named it: a host certificate deleted by hand)
        // is kept: deleting it could refuse logins, and failing here would stop every
        // later run at this rollback for good.
        let named = still_named(sshd, &after)?;
        for (key, o) in &named {
            eprintln!(
                "portcullis-enroll: the restored configuration names {} ({key}), which this run created: it is kept",
                o.path.display()
            );
        }
        let after: Vec<&Original> =
            after.into_iter().filter(|o| !named.iter().any(|(_, kept)| kept.path == o.path)).collect();
        sshd.reload()?;
        failpoint::after("rollback-reload")?;
        if !after.is_empty() {
            settle();
        }
        restore_all(after.into_iter().rev())?;
        failpoint::after("rollback-delete")?;
    } else {
        // The daemon never loaded the change: its configuration names none of our files.
        restore_all(journal.originals.iter().rev())?;
        failpoint::after("rollback-restore")?;
    }
    if journal.created_account {
        crate::account::delete(root);
    }
    fsx::remove_durable(&root.journal())?;
    for dir in journal.created_dirs.iter().rev() {
        // Only empty directories go: anything else in them is not ours to delete.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Finishes the rollback of an interrupted run, if there was one. Returns whether it did.
pub fn recover(root: &Root, sshd: &SshdCtl) -> Result<bool> {
    let path = root.journal();
    let Some(bytes) = fsx::read_opt(&path)? else { return Ok(false) };
    let journal: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Failed(format!("{} is unreadable ({e}); restore by hand", path.display())))?;
    undo(root, &journal, sshd, true).map_err(|e| Error::RollbackFailed {
        cause: "an earlier run was interrupted".into(),
        rollback: with_journal_kept(e),
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(path: PathBuf, content: Option<&str>, link: Option<&str>) -> Original {
        Original {
            path,
            content: content.map(str::to_owned),
            mode: content.map(|_| 0o644),
            link: link.map(PathBuf::from),
        }
    }

    #[test]
    fn files_the_running_sshd_may_name_are_deleted_only_after_the_reload() {
        let root = Root::new("/r");
        let originals = vec![
            original(root.user_ca(), None, None),
            original(root.krl(), None, None),
            original(root.drop_in(), None, None),
            original(root.principals_dir().join("root"), Some("b2xk"), None),
            original(root.path("/etc/sudoers.d/portcullis-discovery"), None, Some("/elsewhere")),
        ];
        let (before, after) = split_for_undo(&root, &originals);
        let paths = |v: &[&Original]| v.iter().map(|o| o.path.clone()).collect::<Vec<_>>();
        assert_eq!(
            paths(&before),
            [root.drop_in(), root.principals_dir().join("root"), root.path("/etc/sudoers.d/portcullis-discovery")],
            "the drop-in goes first; files that get bytes (or a symlink) back are restored with it"
        );
        assert_eq!(paths(&after), [root.user_ca(), root.krl()], "created files, the KRL among them, go after");
    }

    #[test]
    fn a_journal_from_before_the_reload_flag_is_read_as_may_have_reloaded() {
        let old = r#"{"created_dirs":[],"originals":[],"sshd_touched":true}"#;
        let journal: Journal = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert!(journal.sshd_reloaded, "an old journal must make the rollback reload");
        assert!(!journal.created_account, "an old journal created no account");
    }

    /// The account is on disk in the journal before `useradd` could run, so a crash right
    /// after it still has the next run's rollback delete it.
    #[test]
    fn the_account_is_journaled_before_it_is_created() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = Root::new(dir.path());
        let mut txn = Txn::begin(&root).unwrap_or_else(|e| panic!("{e}"));
        txn.creating_account().unwrap_or_else(|e| panic!("{e}"));
        let on_disk = std::fs::read(root.journal()).unwrap_or_else(|e| panic!("{e}"));
        let journal: Journal = serde_json::from_slice(&on_disk).unwrap_or_else(|e| panic!("{e}"));
        assert!(journal.created_account);
    }
}
