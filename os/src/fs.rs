//! Durable atomic writes: a reader of the path sees the old bytes or the new bytes, never
//! a partial file, and a crash right after the call returns cannot undo it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Which step of an atomic write failed, on which file.
#[derive(Debug)]
pub struct WriteError {
    /// `"cannot create"`, `"cannot write"`, … (what an operator reads first).
    pub what: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.source)
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn step(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
    let path = path.to_owned();
    move |source| WriteError { what, path, source }
}

/// The temporary file [`write_atomic`] writes `path`'s new bytes to (same directory, so
/// the rename stays on one file system; per process, so two writers do not share it).
pub fn temp_path(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let name = path.file_name()?.to_string_lossy();
    Some(dir.join(format!(".{name}.portcullis-tmp{}", std::process::id())))
}

/// Writes `bytes` to a temporary file beside `path` with exactly `mode` (whatever the
/// umask), syncs it, renames it over `path` and syncs the directory. On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let (Some(dir), Some(tmp)) = (path.parent(), temp_path(path)) else {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no parent directory or file name");
        return Err(WriteError { what: "cannot write", path: path.to_owned(), source });
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(step("cannot create", &tmp))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(step("cannot chmod", &tmp))?;
        f.write_all(bytes).map_err(step("cannot write", &tmp))?;
        f.sync_all().map_err(step("cannot sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(step("cannot rename into place", path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Syncs a directory, so a rename or removal in it survives a crash.
pub fn fsync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(step("cannot sync directory", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replaces_with_exactly_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_names_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"old").unwrap();
        // The temporary file's name is taken by a directory: creating it fails.
        std::fs::create_dir(temp_path(&path).unwrap()).unwrap();
        let e = write_atomic(&path, b"new", 0o600).unwrap_err();
        assert_eq!(e.what, "cannot create");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(e.to_string().starts_with("cannot create "), "{e}");
    }
}
