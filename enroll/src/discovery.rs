//! `--discovery`: the node side of hardware discovery. The forced command and the sudoers
//! drop-in are ordinary managed files (journaled, restored by rollback and `remove`; see
//! `plan::discovery_files`); here are the two steps that are not files: the sudoers check
//! and the account.
//!
//! The account `portcullis-discovery` has a shell (sshd runs even a forced command through
//! it) but no password, and is not *locked* (`*`, not `!`): sshd without PAM refuses
//! locked accounts for every method, certificates included. It can log in only with a
//! certificate carrying its node principal, which the CA lists only while an
//! `inventory_enrichment` rule covers the node; the certificate forces the command and
//! allows no pty or forwarding.

use crate::error::{Error, Result};
use crate::root::Root;
use crate::txn::Txn;
use portcullis_proto::discovery::DISCOVERY_LOGIN;
use std::path::Path;
use std::process::Command;

/// `visudo -cf` on the written drop-in; a sudoers file sudo cannot read would break sudo
/// for everyone, so without visudo (sudo not installed) discovery is refused.
pub fn check_sudoers(path: &Path) -> Result<()> {
    let Some(visudo) = ["/usr/sbin/visudo", "/usr/bin/visudo"].into_iter().find(|p| Path::new(p).exists()) else {
        return Err(Error::Refused("--discovery needs sudo (visudo not found); install sudo first".into()));
    };
    let out = Command::new(visudo)
        .arg("-cf")
        .arg(path)
        .output()
        .map_err(|e| Error::Failed(format!("cannot run {visudo}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Failed(format!("visudo -cf refused {}", path.display())));
    }
    Ok(())
}

/// Creates the account when missing, journaled in `txn` first (a rollback deletes it);
/// true if this run created it. Under `--root` (an image or a test directory) accounts are
/// left to whoever owns that root.
pub fn ensure_account(root: &Root, txn: &mut Txn) -> Result<bool> {
    if !root.is_system() {
        return Ok(false);
    }
    let exists = Command::new("id").arg(DISCOVERY_LOGIN).output().is_ok_and(|o| o.status.success());
    if exists {
        return Ok(false);
    }
    txn.creating_account()?;
    crate::account::create()?;
    Ok(true)
}
