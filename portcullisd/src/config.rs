//! Server configuration: a TOML file for `ca`, generated defaults for `all-in-one`.

use anyhow::{Context, bail};
use portcullis_ca::{Ca, CaConfig, fsutil, policy_files};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The passphrase that encrypts CA keys at rest can come from this variable instead of a file.
pub const PASSPHRASE_ENV: &str = "PORTCULLIS_CA_PASSPHRASE";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub data_dir: PathBuf,
    /// `sqlite://…` (default: `<data_dir>/portcullis.db`) or `postgres://…`.
    #[serde(default)]
    pub database_url: Option<String>,
    pub policy_dir: PathBuf,
    /// File holding the CA key passphrase; otherwise `PORTCULLIS_CA_PASSPHRASE`.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    #[serde(default)]
    pub key_algorithm: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub clock_skew: Option<std::time::Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub max_cert_ttl: Option<std::time::Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub session_ttl: Option<std::time::Duration>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Names for the bootstrap certificate (when no operator certificate is given).
    #[serde(default = "default_tls_names")]
    pub tls_names: Vec<String>,
}

fn default_listen() -> String {
    "0.0.0.0:8443".to_owned()
}

fn default_tls_names() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

/// Durations written as "60s", "8h".
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

impl ServerConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Defaults for a one-command start: everything under `data_dir`, created when missing.
    pub fn all_in_one(data_dir: &Path, listen: &str, extra_names: Vec<String>) -> anyhow::Result<ServerConfig> {
        create_private_dir(data_dir)?;
        let data_dir = data_dir.canonicalize()?;
        let passphrase_file = data_dir.join("ca-passphrase");
        if std::env::var_os(PASSPHRASE_ENV).is_none() && !passphrase_file.exists() {
            let passphrase = portcullis_proto_token();
            fsutil::write_private(&passphrase_file, passphrase.as_bytes())?;
            println!(
                "Generated the CA key passphrase in {} (keep it safe; back it up apart from the database)",
                passphrase_file.display()
            );
        }
        let policy_dir = data_dir.join("policy");
        if !policy_dir.exists() {
            std::fs::create_dir_all(&policy_dir)?;
            fsutil::write_atomic(&policy_dir.join("default.toml"), policy_files::DEFAULT_POLICY.as_bytes(), 0o644)?;
            println!("Wrote the starting policy to {}", policy_dir.join("default.toml").display());
        }
        let mut tls_names = default_tls_names();
        tls_names.extend(extra_names);
        Ok(ServerConfig {
            listen: listen.to_owned(),
            database_url: None,
            policy_dir,
            passphrase_file: (std::env::var_os(PASSPHRASE_ENV).is_none()).then_some(passphrase_file),
            key_algorithm: None,
            clock_skew: None,
            max_cert_ttl: None,
            session_ttl: None,
            tls_cert: None,
            tls_key: None,
            tls_names,
            data_dir,
        })
    }

    pub fn into_ca_config(self) -> anyhow::Result<CaConfig> {
        let passphrase = read_passphrase(self.passphrase_file.as_deref())?;
        let database_url =
            self.database_url.unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("portcullis.db").display()));
        let mut config = CaConfig::new(database_url, self.policy_dir, passphrase);
        if let Some(alg) = self.key_algorithm {
            config.key_algorithm = alg.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(v) = self.clock_skew {
            config.clock_skew = v;
        }
        if let Some(v) = self.max_cert_ttl {
            config.max_cert_ttl = v;
        }
        if let Some(v) = self.session_ttl {
            config.session_ttl = v;
        }
        Ok(config)
    }
}

fn read_passphrase(file: Option<&Path>) -> anyhow::Result<SecretString> {
    let passphrase = match file {
        Some(path) => SecretString::from(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the CA passphrase file {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => SecretString::from(std::env::var(PASSPHRASE_ENV).with_context(|| {
            format!("no CA passphrase: set passphrase_file in the configuration or {PASSPHRASE_ENV}")
        })?),
    };
    if passphrase.expose_secret().len() < 16 {
        bail!("the CA passphrase must be at least 16 characters");
    }
    Ok(passphrase)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

fn portcullis_proto_token() -> String {
    portcullis_ca::service::random_secret()
}

/// On the very first start, creates `admin` and shows its one-time password.
pub async fn announce_bootstrap_admin(ca: &Ca, data_dir: &Path) -> anyhow::Result<()> {
    let Some(password) = ca.bootstrap_admin("admin", "portcullis-admins").await? else {
        return Ok(());
    };
    let file = data_dir.join("initial-admin-password");
    fsutil::write_private(&file, password.expose_secret().as_bytes())?;
    // Printed once, to the terminal of whoever started the server; never to the log.
    println!(
        "First administrator: admin, one-time password: {} (also in {}, mode 0600; change it with `portcullis admin user set-password admin`)",
        password.expose_secret(),
        file.display()
    );
    Ok(())
}
