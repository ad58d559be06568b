//! The discovery account's two system commands, for `discovery` (which creates it
//! under the journal) and `txn` (whose rollback deletes one this tool created). A leaf,
//! so neither depends on the other.

use crate::error::{Error, Result};
use crate::root::Root;
use portcullis_proto::discovery::DISCOVERY_LOGIN;
use std::process::Command;

/// Creates the account: a shell, no home, and no password but not locked (see
/// `discovery`). The caller journals it first; a failure after `useradd` is undone by
/// that journal's rollback.
pub fn create() -> Result<()> {
    let run = |program: &str, args: &[&str]| -> Result<()> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| Error::Failed(format!("cannot run {program}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Failed(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim())))
        }
    };
    run(
        "useradd",
        &["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", DISCOVERY_LOGIN],
    )?;
    run("usermod", &["-p", "*", DISCOVERY_LOGIN])?;
    Ok(())
}

/// Deletes the account (only ever one this tool created; idempotent).
pub fn delete(root: &Root) {
    if root.is_system() {
        let _ = Command::new("userdel").arg(DISCOVERY_LOGIN).output();
    }
}
