//! Atomic file writes: temp file in the same directory, fsync, rename. A crash leaves
//! either the old file or the new one, never half of one.

use crate::error::CaError;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = path.parent().ok_or_else(|| CaError::Config(format!("{} has no parent directory", path.display())))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let io = |e: std::io::Error| CaError::Config(format!("cannot write {}: {e}", path.display()));
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Written readable by the owner only: private keys, passphrases, passwords.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    write_atomic(path, contents, 0o600)
}
