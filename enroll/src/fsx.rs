//! Durable file operations: a reader of a path sees the old bytes or the new bytes,
//! never a partial file, and a crash right after a call returns cannot undo it.

use crate::error::{Error, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Reads a file, `None` when it does not exist.
pub fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

pub fn mode_of(path: &Path) -> Option<u32> {
    std::fs::symlink_metadata(path).ok().map(|m| m.permissions().mode() & 0o7777)
}

fn parent_of(path: &Path) -> Result<&Path> {
    path.parent().ok_or_else(|| Error::Failed(format!("{} has no parent directory", path.display())))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    portcullis_os::fs::fsync_dir(dir).map_err(io_error)
}

fn io_error(e: portcullis_os::fs::WriteError) -> Error {
    Error::io(e.what, e.path, e.source)
}

/// Temp file in the same directory, write, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::failpoint::write_hook(path)?;
    portcullis_os::fs::write_atomic(path, bytes, mode).map_err(io_error)?;
    crate::failpoint::written_hook(path);
    Ok(())
}

/// Makes `path` a symlink to `target`, replacing whatever is there in one rename.
pub fn symlink_atomic(target: &Path, path: &Path) -> Result<()> {
    crate::failpoint::write_hook(path)?;
    let dir = parent_of(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.portcullis-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let result = std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| Error::io("cannot create symlink", &tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename into place", path, e)))
        .and_then(|()| fsync_dir(dir));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a file (absent is fine) and syncs its directory.
pub fn remove_durable(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => fsync_dir(parent_of(path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", path, e)),
    }
}

/// Creates `dir` and any missing parents (mode 0755); returns the ones it created,
/// outermost first, so a rollback can remove exactly those.
pub fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    missing.reverse();
    for d in &missing {
        std::fs::DirBuilder::new().mode(0o755).create(d).map_err(|e| Error::io("cannot create directory", d, e))?;
        // Exactly 0755 whatever the umask: sshd reads the principals files as the user
        // logging in, so a directory left 0700 (an operator's umask 077) would refuse
        // every certificate login but root's — and verification logs in only as root.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("cannot set the mode of directory", d, e))?;
        fsync_dir(parent_of(d)?)?;
    }
    Ok(missing)
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600).unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&p, b"two", 0o644).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_opt(&p).unwrap_or_default(), Some(b"two".to_vec()));
        assert_eq!(mode_of(&p), Some(0o644));
        assert_eq!(std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0), 1, "no temp file left");
        symlink_atomic(Path::new("elsewhere"), &p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_link(&p).ok(), Some(PathBuf::from("elsewhere")));
        let created = create_dirs(&dir.path().join("a/b")).unwrap_or_default();
        assert_eq!(created, vec![dir.path().join("a"), dir.path().join("a/b")]);
    }
}
