//! Fail points for the fault-matrix tests, always compiled in (they are inert unless the
//! environment variable is set, and can only make the tool stop, never skip a check).
//!
//! `PORTCULLIS_ENROLL_FAILPOINT=<step>` — the process exits with code 99 right after
//! `<step>`, without any cleanup: a crash or `kill -9` between steps. The next run
//! finds the journal and restores the originals.
//! `PORTCULLIS_ENROLL_FAILPOINT=<step>:error` — the step fails with an ordinary error,
//! exercising the in-process rollback.
//! `PORTCULLIS_ENROLL_FAILPOINT=<step>:pause=<ms>` — the process sleeps after `<step>` and
//! then carries on: a slow step, so a test can race another run or logins against it.
//! Steps inside a rollback are named `rollback-restore`, `rollback-reload` and
//! `rollback-delete`.
//! `PORTCULLIS_ENROLL_FAILPOINT=write:<file name>` — writing that file fails with an
//! I/O error (a full disk or read-only target).
//! `PORTCULLIS_ENROLL_FAILPOINT=written:<file name>` — the process exits with code 99
//! right after that file is in place: a crash between two files of one step.

use crate::error::{Error, Result};
use std::path::Path;

pub const VAR: &str = "PORTCULLIS_ENROLL_FAILPOINT";

fn configured() -> Option<String> {
    std::env::var(VAR).ok().filter(|v| !v.is_empty())
}

/// Called after each named step.
pub fn after(step: &str) -> Result<()> {
    let Some(fp) = configured() else { return Ok(()) };
    if fp == step {
        eprintln!("portcullis-enroll: fail point {step}: exiting without cleanup");
        std::process::exit(99);
    }
    if fp.strip_suffix(":error") == Some(step) {
        return Err(Error::Failed(format!("fail point {step}")));
    }
    if let Some((s, ms)) = fp.split_once(":pause=")
        && s == step
    {
        let ms = ms.parse::<u64>().unwrap_or(0);
        eprintln!("portcullis-enroll: fail point {step}: pausing {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    Ok(())
}

pub fn write_hook(path: &Path) -> Result<()> {
    let Some(fp) = configured() else { return Ok(()) };
    let Some(name) = fp.strip_prefix("write:") else { return Ok(()) };
    if path.file_name().is_some_and(|n| n == name) {
        return Err(Error::io("cannot write", path, std::io::Error::other("injected write failure (fail point)")));
    }
    Ok(())
}

/// Called after a file is in place (see `written:` in the module's doc).
pub fn written_hook(path: &Path) {
    let Some(fp) = configured() else { return };
    if fp.strip_prefix("written:").is_some_and(|name| path.file_name().is_some_and(|n| n == name)) {
        eprintln!("portcullis-enroll: fail point written:{}: exiting without cleanup", path.display());
        std::process::exit(99);
    }
}
