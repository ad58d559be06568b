//! Durable atomic writes: a reader of the path sees the old bytes or the new bytes, never
//! a partial file, and a crash right after the call returns cannot undo it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// How many temporary names [`write_atomic`] tries before it gives up (each is new:
/// a name that exists — a crashed writer's leftover, or something planted — is skipped,
/// never opened).
const TEMP_ATTEMPTS: u32 = 16;

/// A temporary name beside `path` (same directory, so the rename stays on one file
/// system): per process, and after the first attempt also unpredictable, so names
/// planted in advance cannot use up the attempts.
fn temp_path(dir: &Path, name: &str, attempt: u32) -> PathBuf {
    let pid = std::process::id();
    if attempt == 0 {
        return dir.join(format!(".{name}.portcullis-tmp{pid}"));
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    dir.join(format!(".{name}.portcullis-tmp{pid}-{attempt}-{nanos:08x}"))
}

/// Writes `bytes` to a temporary file beside `path` with exactly `mode` (whatever the
/// umask), syncs it, renames it over `path` and syncs the directory. On failure the
/// temporary file is removed and `path` is untouched.
///
/// The temporary file is always created new (`O_CREAT | O_EXCL`), so nothing already at
/// its name is opened: in a directory others may write to, a symlink planted there
/// (say, to `~/.ssh/authorized_keys`) is not followed, truncated and overwritten.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no parent directory or file name");
        return Err(WriteError { what: "cannot write", path: path.to_owned(), source });
    };
    let name = name.to_string_lossy();
    let (tmp, mut f) = create_new_beside(dir, &name, mode)?;
    let result = (|| {
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

/// A new file in `dir` under a fresh temporary name for `name`.
fn create_new_beside(dir: &Path, name: &str, mode: u32) -> Result<(PathBuf, File), WriteError> {
    let mut attempt = 0;
    loop {
        let tmp = temp_path(dir, name, attempt);
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt + 1 < TEMP_ATTEMPTS => attempt += 1,
            Err(e) => return Err(step("cannot create", &tmp)(e)),
        }
    }
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
        let path = dir.path().join("gone").join("key");
        let e = write_atomic(&path, b"new", 0o600).unwrap_err();
        assert_eq!(e.what, "cannot create");
        assert!(e.to_string().starts_with("cannot create "), "{e}");
    }

    /// Whatever is planted at a temporary name — a symlink to another file, a leftover
    /// — is never opened: the target keeps its bytes and mode, and the write lands.
    /// (Until 2026-12-05 the temporary file was opened with `O_TRUNC` and no `O_EXCL`:
    /// a symlink at its predictable name had its target overwritten and chmodded.)
    #[test]
    fn a_planted_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key-cert.pub");
        let victim = dir.path().join("authorized_keys");
        std::fs::write(&victim, b"keep me").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, temp_path(dir.path(), "key-cert.pub", 0)).unwrap();
        write_atomic(&path, b"certificate", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"certificate");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3, "the key, the victim, the planted link");
    }
}
