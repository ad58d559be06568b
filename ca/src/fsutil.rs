//! Atomic file writes: temp file in the same directory, fsync, rename. A crash leaves
//! either the old file or the new one, never half of one.

use crate::error::CaError;
use std::path::Path;

pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    portcullis_os::fs::write_atomic(path, contents, mode).map_err(|e| CaError::Config(e.to_string()))
}

/// Written readable by the owner only: private keys, passphrases, passwords.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    write_atomic(path, contents, 0o600)
}

/// Creates `dir` (and parents) mode 0700 when missing: data and state directories.
pub fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CaError::Config(format!("cannot create {}: {e}", dir.display())))
}
