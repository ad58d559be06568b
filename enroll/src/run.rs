//! What every command does around its changes: the global options, the run lock,
//! finishing an interrupted run's rollback, writing the desired files inside a
//! transaction, and checking what sshd actually applies. Shared by `commands` and
//! `refresh`, which depend on it and not on each other.

use crate::error::{Error, Result};
use crate::fsx;
use crate::lock::{self, RunLock};
use crate::plan::Desired;
use crate::report::Report;
use crate::root::Root;
use crate::sshd::SshdCtl;
use crate::txn::{self, Txn};
use portcullis_os::clock::Clock;
use std::path::{Path, PathBuf};

pub struct Global {
    pub root: Root,
    pub check: bool,
    pub sshd: SshdCtl,
    /// How long to wait for another run's lock before refusing.
    pub lock_wait: std::time::Duration,
}

/// The run lock for a command: exclusive when it may write, shared for `--check`.
pub(crate) fn lock(g: &Global) -> Result<RunLock> {
    let mode = if g.check { lock::Mode::Shared } else { lock::Mode::Exclusive };
    lock::hold(&g.root, mode, g.lock_wait)
}

/// sshd reads the principals files as the user logging in, so the stage directory and
/// the principals directory must be searchable by everyone. One this tool did not create
/// — an image, configuration management, a run of an older version under umask 077 — may
/// not be: every certificate login but root's would be refused, and the verification
/// login (root) would not notice. Such a directory is set to 0755 (both are this tool's
/// own; nothing else lives there). Nothing changes under `--check`.
pub(crate) fn open_stage_dirs(g: &Global, r: &mut Report) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in [g.root.stage(), g.root.principals_dir()] {
        let Some(mode) = fsx::mode_of(&dir).filter(|_| dir.is_dir()) else { continue };
        if mode == 0o755 {
            continue;
        }
        if g.check {
            r.step("check", format!("would set {} to mode 0755 (it is {mode:04o})", dir.display()));
            continue;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("cannot set the mode of directory", &dir, e))?;
        r.step("directory", format!("{} was mode {mode:04o}, unreadable to other logins: now 0755", dir.display()));
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    portcullis_os::clock::SystemClock.now_unix()
}

/// Finishes an interrupted run's rollback. Under `--check` (which never writes) a pending
/// journal is only reported, and the check stops there: `Ok(false)`.
pub(crate) fn recover(g: &Global, r: &mut Report) -> Result<bool> {
    if g.check {
        if fsx::read_opt(&g.root.journal())?.is_some() {
            r.step("check", "an interrupted earlier run is pending rollback; a run without --check completes it first");
            return Ok(false);
        }
        return Ok(true);
    }
    if txn::recover(&g.root, &g.sshd)? {
        r.step("recover", "an interrupted earlier run was found and rolled back to the original files");
    }
    Ok(true)
}

pub(crate) const CHECK_PENDING: &str = "check: an interrupted run is pending rollback; nothing else was compared";

pub(crate) fn write_all(txn: &mut Txn, root: &Root, files: &[Desired], r: &mut Report) -> Result<()> {
    for d in files {
        if let Some(parent) = d.path.parent()
            && (parent.starts_with(root.stage()) || !parent.exists())
        {
            txn.ensure_dir(parent)?;
        }
        txn.write(&d.path, &d.bytes, d.mode)?;
        r.changes.push(format!("write {}", d.path.display()));
    }
    Ok(())
}

pub(crate) fn without_own_files(root: &Root, originals: &[txn::Original]) -> Vec<txn::Original> {
    originals.iter().filter(|o| o.path != root.state_file() && o.path != root.journal()).cloned().collect()
}

pub(crate) fn verify_effective(g: &Global, cert_paths: &[PathBuf]) -> Result<()> {
    let root = &g.root;
    let eff = g.sshd.effective()?;
    let first = |k: &str| eff.get(k).and_then(|v| v.first()).cloned().unwrap_or_default();
    let want = [
        ("trustedusercakeys", root.user_ca().display().to_string()),
        ("authorizedprincipalsfile", format!("{}/%u", root.principals_dir().display())),
        ("revokedkeys", root.krl().display().to_string()),
    ];
    for (k, v) in want {
        if first(k) != v {
            return Err(Error::Failed(format!("sshd -T shows {k} {:?}, not {v}", first(k))));
        }
    }
    let certs = eff.get("hostcertificate").cloned().unwrap_or_default();
    for c in cert_paths {
        if !certs.iter().any(|v| Path::new(v) == c) {
            return Err(Error::Failed(format!("sshd -T does not list HostCertificate {}", c.display())));
        }
    }
    Ok(())
}
