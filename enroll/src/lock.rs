//! One run at a time: every command that writes holds an exclusive `flock` for its whole
//! run; `--check` and `status` hold a shared one. Two enrollments, or a refresh and a
//! `remove`, would otherwise undo each other's files and "recover" each other's live
//! journal.
//!
//! The lock is on the directory `/etc/ssh` itself, not on a file: it exists before
//! enrollment (the stage directory does not), nothing is created that `remove` would
//! have to delete, and there is no lock file to unlink under a waiting process. The
//! kernel drops the lock when the process dies, so a crash never leaves it held.

use crate::error::{Error, Result};
use crate::root::Root;
use std::fs::{File, TryLockError};
use std::time::{Duration, Instant};

/// Held for as long as it lives.
#[derive(Debug)]
pub struct RunLock {
    _dir: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Commands that write.
    Exclusive,
    /// `--check` and `status`: they read, and must not see a half-done run as interrupted.
    Shared,
}

fn try_once(dir: &File, mode: Mode) -> std::result::Result<bool, std::io::Error> {
    let r = match mode {
        Mode::Exclusive => dir.try_lock(),
        Mode::Shared => dir.try_lock_shared(),
    };
    match r {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the lock, waiting at most `wait`; `None` when another run still holds it then.
pub fn acquire(root: &Root, mode: Mode, wait: Duration) -> Result<Option<RunLock>> {
    let path = root.path("/etc/ssh");
    let dir = File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::Refused(format!("{} does not exist: is OpenSSH server installed?", path.display()))
        }
        _ => Error::io("cannot open (to lock it)", &path, e),
    })?;
    let deadline = Instant::now() + wait;
    loop {
        if try_once(&dir, mode).map_err(|e| Error::io("cannot lock", &path, e))? {
            return Ok(Some(RunLock { _dir: dir }));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// As [`acquire`], refusing with [`Error::Busy`] when the wait runs out.
pub fn hold(root: &Root, mode: Mode, wait: Duration) -> Result<RunLock> {
    acquire(root, mode, wait)?.ok_or_else(|| {
        Error::Busy(format!(
            "another portcullis-enroll run still holds the lock on {} after {} s; nothing was changed — \
             try again when it has finished (or raise --lock-wait)",
            root.path("/etc/ssh").display(),
            wait.as_secs()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_exclusive_lock_waits_then_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap_or_else(|e| panic!("{e}"));
        let root = Root::new(dir.path());
        let first = hold(&root, Mode::Exclusive, Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
        let second = hold(&root, Mode::Exclusive, Duration::from_millis(200));
        assert!(matches!(second, Err(Error::Busy(_))), "{second:?}");
        assert!(matches!(acquire(&root, Mode::Shared, Duration::ZERO), Ok(None)));
        drop(first);
        assert!(hold(&root, Mode::Exclusive, Duration::ZERO).is_ok());
        let a = hold(&root, Mode::Shared, Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
        let b = hold(&root, Mode::Shared, Duration::ZERO);
        assert!(b.is_ok(), "shared locks coexist");
        drop(a);
        let missing = Root::new(dir.path().join("nothing"));
        assert!(matches!(hold(&missing, Mode::Exclusive, Duration::ZERO), Err(Error::Refused(_))));
    }
}
