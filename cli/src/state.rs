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
    pub fn load_or_create_key(&self) -> anyhow::Result<(PrivateKey, bool)> {
        let existing = std::fs::read_to_string(&self.key).ok().and_then(|t| PrivateKey::from_openssh(&t).ok());
        if let Some(key) = existing.filter(|k| !k.is_encrypted()) {
            return Ok((key, false));
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
