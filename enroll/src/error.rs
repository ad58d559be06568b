//! The one error type of the enrollment tool, and the exit code each kind maps to.
//!
//! Exit codes are a contract with scripts and Ansible (documented in the README):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done, or nothing to change |
//! | 1 | failed before changing anything (I/O, unexpected answers) |
//! | 2 | usage error |
//! | 3 | refused by preflight: the node's configuration cannot be changed safely; nothing changed |
//! | 4 | a change failed and was rolled back to the original files (for a refresh: the sshd change was; new revocations, CA keys and principals stay applied) |
//! | 5 | the CA refused (token expired/used up, unknown node) or could not be reached; nothing changed |
//! | 6 | a change failed **and the rollback did not complete**: the journal is kept and the next run (or the refresh timer) completes it; `status` reports it |
//! | 7 | another run holds the lock (waited `--lock-wait` seconds); nothing changed |
//! | 9 | `remove`: the node's files were restored, but the CA could not deregister it (the next `remove` retries) |
//! | 8 | `status`: the node is enrolled but not healthy (a missing or invalid KRL, a pending journal, …); the message names the command that repairs it |

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("{what}: {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("the CA: {0}")]
    Ca(String),
    #[error("{cause}; rolled back to the original files")]
    RolledBack { cause: String },
    /// Refresh: the trust files (KRL, trusted CA keys, principals) were committed, then
    /// the sshd change (drop-in, host certificates) failed its checks and was undone.
    #[error(
        "{cause}; the sshd change (drop-in, host certificates) was rolled back to the previous files, \
         while the new revocations, trusted CA keys and principals were applied and stay in force"
    )]
    SshdChangeRolledBack { cause: String },
    #[error("{cause}; ROLLBACK INCOMPLETE: {rollback}")]
    RollbackFailed { cause: String, rollback: String },
    /// Another run holds the lock.
    #[error("{0}")]
    Busy(String),
    /// `status` found the node enrolled but in need of repair.
    #[error("{0}")]
    NeedsRepair(String),
    /// `remove` restored the files but the CA did not deregister the node.
    #[error("{0}")]
    Deregister(String),
    /// A simulated crash (`PORTCULLIS_ENROLL_FAILPOINT=<step>`): the process exits at once.
    #[error("fail point {0} reached")]
    FailPoint(String),
}

impl Error {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { what, path: path.into(), source }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Refused(_) => 3,
            Error::Io { .. } | Error::Failed(_) => 1,
            Error::RolledBack { .. } | Error::SshdChangeRolledBack { .. } => 4,
            Error::Ca(_) => 5,
            Error::RollbackFailed { .. } => 6,
            Error::Busy(_) => 7,
            Error::NeedsRepair(_) => 8,
            Error::Deregister(_) => 9,
            Error::FailPoint(_) => 99,
        }
    }

    /// A stable code for `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Refused(_) => "refused",
            Error::Io { .. } => "io",
            Error::Failed(_) => "failed",
            Error::Ca(_) => "ca",
            Error::RolledBack { .. } => "rolled_back",
            Error::SshdChangeRolledBack { .. } => "sshd_change_rolled_back",
            Error::RollbackFailed { .. } => "rollback_failed",
            Error::Busy(_) => "busy",
            Error::NeedsRepair(_) => "needs_repair",
            Error::Deregister(_) => "deregister_failed",
            Error::FailPoint(_) => "fail_point",
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
