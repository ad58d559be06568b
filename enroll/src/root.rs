//! Every path the tool touches goes through a [`Root`]: `/` on a real node, a directory in
//! tests. Configuration written to disk always holds the *real* paths (`Root::path`), so a
//! throwaway sshd started from a root's config reads the root's files.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Root {
    base: PathBuf,
}

/// Logical (as-on-a-node) locations.
pub const SSHD_CONFIG: &str = "/etc/ssh/sshd_config";
pub const SSHD_CONFIG_D: &str = "/etc/ssh/sshd_config.d";
pub const DROP_IN_NAME: &str = "60-portcullis.conf";
pub const STAGE_DIR: &str = "/etc/ssh/portcullis";

impl Root {
    pub fn new(base: impl Into<PathBuf>) -> Root {
        Root { base: base.into() }
    }

    pub fn is_system(&self) -> bool {
        self.base == Path::new("/")
    }

    /// The real path of a logical absolute path.
    pub fn path(&self, logical: &str) -> PathBuf {
        self.base.join(logical.trim_start_matches('/'))
    }

    pub fn sshd_config(&self) -> PathBuf {
        self.path(SSHD_CONFIG)
    }

    pub fn drop_in_dir(&self) -> PathBuf {
        self.path(SSHD_CONFIG_D)
    }

    pub fn drop_in(&self) -> PathBuf {
        self.drop_in_dir().join(DROP_IN_NAME)
    }

    pub fn stage(&self) -> PathBuf {
        self.path(STAGE_DIR)
    }

    pub fn user_ca(&self) -> PathBuf {
        self.stage().join("user_ca.pub")
    }

    pub fn principals_dir(&self) -> PathBuf {
        self.stage().join("principals")
    }

    pub fn krl(&self) -> PathBuf {
        self.stage().join("revoked.krl")
    }

    pub fn state_file(&self) -> PathBuf {
        self.stage().join("state.json")
    }

    pub fn journal(&self) -> PathBuf {
        self.stage().join("journal.json")
    }

    /// A deregistration `remove` could not complete, kept outside the stage directory
    /// (which `remove` deletes) so the next run retries it.
    pub fn pending_deregistration(&self) -> PathBuf {
        self.path("/var/lib/portcullis-enroll/deregister.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_logical_paths_under_the_base() {
        let r = Root::new("/tmp/x");
        assert_eq!(r.sshd_config(), Path::new("/tmp/x/etc/ssh/sshd_config"));
        assert!(!r.is_system());
        assert_eq!(Root::new("/").drop_in(), Path::new("/etc/ssh/sshd_config.d/60-portcullis.conf"));
    }
}
