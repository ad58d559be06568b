//! What the CLI keeps between runs, all under `~/.ssh/portcullis/`: the key pair, the
//! certificate (where `ssh -i` and ssh-agent find it as `<key>-cert.pub`), and the
//! API session. Secrets are written 0600, atomically.

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use ssh_key::getrandom::SysRng;
use ssh_key::rand_core::UnwrapErr;
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The CA and the last sign-in. `token` is `None` after `logout`: the CA's URL, pin and
/// the user name stay for the next `login`.
#[derive(Serialize, Deserialize)]
pub struct Session {
    pub ca_url: String,
    pub ca_fingerprint: Option<String>,
    pub username: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub expires_at: u64,
    /// A key of the user's own that the last login certified (`login --key`), instead
    /// of the CLI's: its certificate is beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Every certificate a login wrote for a key of the user's own since the last
    /// `logout`, with its serial: `logout` revokes and removes each — and only while the
    /// file still holds that certificate (one put there since is not the CLI's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed: Vec<Installed>,
}

/// A certificate the CLI wrote beside a key of the user's own.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Installed {
    pub cert: PathBuf,
    pub serial: u64,
}

impl Session {
    /// The certificates of the user's own keys that this CLI installed: the list, and
    /// for a session saved before the list was kept, the last `--key` login's.
    pub fn installed(&self) -> Vec<Installed> {
        let mut all = self.installed.clone();
        if let Some(key) = &self.key {
            let cert = KeyFiles::at(key).cert;
            let serial = read_certificate(&cert).map(|c| c.serial());
            if let Some(serial) = serial.filter(|_| !all.iter().any(|i| i.cert == cert)) {
                all.push(Installed { cert, serial });
            }
        }
        all
    }
}

/// The certificate in `path`, if it holds one.
pub fn read_certificate(path: &Path) -> Option<ssh_key::Certificate> {
    std::fs::read_to_string(path).ok().and_then(|c| ssh_key::Certificate::from_openssh(c.trim()).ok())
}

/// A key's files as ssh names them: PATH the private key (a security key's handle),
/// PATH.pub its public half, PATH-cert.pub its certificate. The CLI's own key is one;
/// a key of the user's own (`login --key PATH`) is another, of which the CLI reads only
/// the public half and writes only the certificate.
pub struct KeyFiles {
    pub private: PathBuf,
    pub public: PathBuf,
    pub cert: PathBuf,
}

impl KeyFiles {
    /// The key at `path` (its private file, or its `.pub`).
    pub fn at(path: &Path) -> KeyFiles {
        let private = path.to_str().and_then(|p| p.strip_suffix(".pub")).map_or_else(|| path.to_owned(), PathBuf::from);
        let beside = |suffix: &str| {
            let mut name = private.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        KeyFiles { public: beside(".pub"), cert: beside("-cert.pub"), private }
    }

    pub fn public_key(&self) -> anyhow::Result<ssh_key::PublicKey> {
        let line = std::fs::read_to_string(&self.public)
            .with_context(|| format!("cannot read {} (the key's public half)", self.public.display()))?;
        ssh_key::PublicKey::from_openssh(line.trim())
            .map_err(|_| anyhow!("{} is not an OpenSSH public key", self.public.display()))
    }
}

/// The comment on every key the CLI generates: how it recognizes its own identities in
/// ssh-agent (see `login::forget_in_agent`).
pub const KEY_COMMENT: &str = "portcullis";

pub struct Paths {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub public: PathBuf,
    pub cert: PathBuf,
    pub session: PathBuf,
    /// Host keys from the CA (`ssh-config`): the host CA and the bastions' keys.
    pub known_hosts: PathBuf,
}

impl Paths {
    pub fn new() -> anyhow::Result<Paths> {
        let home = std::env::home_dir().ok_or_else(|| anyhow!("cannot find the home directory"))?;
        let dir = home.join(".ssh").join("portcullis");
        let key = KeyFiles::at(&dir.join("id_ed25519"));
        Ok(Paths {
            key: key.private,
            public: key.public,
            cert: key.cert,
            session: dir.join("session.json"),
            known_hosts: dir.join("known_hosts"),
            dir,
        })
    }

    pub fn ensure_dir(&self) -> anyhow::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))
    }

    pub fn load_session(&self) -> Option<Session> {
        let text = std::fs::read_to_string(&self.session).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save_session(&self, session: &Session) -> anyhow::Result<()> {
        write_atomic(&self.session, serde_json::to_string_pretty(session)?.as_bytes(), 0o600)
    }

    /// The existing key pair, or a new Ed25519 one. The private key never leaves this machine.
    /// A key file that is there but unusable (unreadable, not an OpenSSH key, under a
    /// passphrase) is an error, never silently replaced: it may be a key the user made
    /// or protected by hand.
    pub fn load_or_create_key(&self) -> anyhow::Result<(PrivateKey, bool)> {
        match std::fs::read_to_string(&self.key) {
            Ok(text) => {
                let unusable = || {
                    anyhow!(
                        "{} is not a key the CLI can use (not an OpenSSH key, or under a passphrase): move it away \
                         and log in again to make a new one",
                        self.key.display()
                    )
                };
                let key = PrivateKey::from_openssh(&text).map_err(|_| unusable())?;
                return if key.is_encrypted() { Err(unusable()) } else { Ok((key, false)) };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("cannot read {}: {e}", self.key.display())),
        }
        let mut key = PrivateKey::random(&mut UnwrapErr(SysRng), Algorithm::Ed25519)
            .map_err(|_| anyhow!("cannot generate a key"))?;
        key.set_comment(KEY_COMMENT);
        let pem = key.to_openssh(LineEnding::LF).map_err(|_| anyhow!("cannot encode the key"))?;
        write_atomic(&self.key, pem.as_bytes(), 0o600)?;
        let public = key.public_key().to_openssh().map_err(|_| anyhow!("cannot encode the key"))?;
        write_atomic(&self.public, format!("{public}\n").as_bytes(), 0o644)?;
        Ok((key, true))
    }

    /// Removes the key pair and certificate; returns the ones that existed.
    pub fn remove_credentials(&self) -> Vec<PathBuf> {
        [&self.cert, &self.key, &self.public].into_iter().filter(|p| std::fs::remove_file(p).is_ok()).cloned().collect()
    }
}

/// Key files and the saved session: see `portcullis_os::fs::write_atomic`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    Ok(portcullis_os::fs::write_atomic(path, contents, mode)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn paths_in(dir: &Path) -> Paths {
        let key = KeyFiles::at(&dir.join("id_ed25519"));
        Paths {
            dir: dir.to_owned(),
            key: key.private,
            public: key.public,
            cert: key.cert,
            session: dir.join("session.json"),
            known_hosts: dir.join("known_hosts"),
        }
    }

    /// A key file the CLI cannot use is refused and left as it is, never replaced by a
    /// new key (it may be one the user made or protected by hand); a missing one is made.
    #[test]
    fn an_unusable_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        let (made, created) = paths.load_or_create_key().unwrap();
        assert!(created);
        let (again, created) = paths.load_or_create_key().unwrap();
        assert!(!created && again.public_key() == made.public_key());

        std::fs::write(&paths.key, b"not a key").unwrap();
        let e = paths.load_or_create_key().unwrap_err();
        assert!(e.to_string().contains("move it away"), "{e}");
        assert_eq!(std::fs::read(&paths.key).unwrap(), b"not a key");
    }
}
