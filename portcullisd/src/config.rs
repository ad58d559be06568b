//! Server configuration: a TOML file for `ca`, generated defaults for `all-in-one`.

use anyhow::{Context, bail};
use portcullis_ca::{Ca, CaConfig, fsutil, policy_files};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The passphrase that encrypts CA keys at rest can come from this variable instead of a file.
pub const PASSPHRASE_ENV: &str = "PORTCULLIS_CA_PASSPHRASE";

/// In `data_dir`: the CA keys this CA signs with, by fingerprint; a start on a database
/// without keys refuses while it names some (see `portcullis_ca` `Core::open`).
pub const CA_KEY_RECORD: &str = "ca-keys";

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
    /// How long session recordings (rules with `record = true`) are kept (default 30d).
    #[serde(default, with = "humantime_serde_opt")]
    pub recording_retention: Option<std::time::Duration>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Names for the bootstrap certificate (when no operator certificate is given).
    #[serde(default = "default_tls_names")]
    pub tls_names: Vec<String>,
    /// The `portcullis-enroll` binary served to nodes (default: beside `portcullisd`).
    #[serde(default)]
    pub enroll_binary: Option<PathBuf>,
    /// Users and groups from a directory, asked after the local users.
    #[serde(default)]
    pub ldap: Option<portcullis_ca::identity::LdapToml>,
    /// OpenID Connect single sign-on (browser and CLI device flow).
    #[serde(default)]
    pub oidc: Option<OidcToml>,
    /// The agent that serves devices whose inventory record names none.
    #[serde(default)]
    pub default_agent: Option<String>,
    /// Hardware discovery through the bastions (off unless `enabled = true`).
    #[serde(default)]
    pub discovery: Option<DiscoveryToml>,
    /// Proxmox VE inventory: how often, how many at once. It runs wherever a credential
    /// rule (provider `proxmox`) names a stored secret, and nowhere else.
    #[serde(default)]
    pub pve: Option<PveToml>,
    /// How often unauthenticated refusals, beyond the first of each source, reason and
    /// user, are written as one `refusals_summarized` audit record (default 60 s).
    #[serde(default, with = "humantime_serde_opt")]
    pub refusal_summary_every: Option<std::time::Duration>,
    /// Where `/metrics` (and the health checks) are served, plain HTTP; off when unset.
    /// Keep it on loopback or a management network: it is not the public API port.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Connections the HTTPS listener keeps open from one source — an IPv4 address, an
    /// IPv6 /64 — (default 256; 0: no per-source cap, for a CA behind a reverse proxy,
    /// whose clients all share its address), and in all (default 8192).
    #[serde(default)]
    pub https_connections_per_source: Option<usize>,
    #[serde(default)]
    pub https_connections: Option<usize>,
    /// All-in-one only: run a bastion (and a local agent) with these SSH and agent listeners.
    #[serde(skip)]
    pub ssh_listen: Option<(String, String)>,
    /// All-in-one only: its bastion's front-door settings.
    #[serde(skip)]
    pub front_door: crate::dataplane::FrontDoorArgs,
}

/// The `[discovery]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryToml {
    #[serde(default)]
    pub enabled: bool,
    /// How often each node is discovered (default 1h, at least 1s).
    #[serde(default, with = "humantime_serde_opt")]
    pub interval: Option<std::time::Duration>,
    /// Runs a bastion performs at once (default 4, 1–64).
    #[serde(default)]
    pub concurrency: Option<u32>,
}

/// The `[pve]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PveToml {
    /// How often each device is collected (default 1h, at least 1s).
    #[serde(default, with = "humantime_serde_opt")]
    pub interval: Option<std::time::Duration>,
    /// Runs a bastion performs at once (default 4, 1–64).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Fingerprint devices no credential rule covers, without credentials, marking
    /// `metadata.proxmox_candidate` (default false: it connects to every device).
    #[serde(default)]
    pub fingerprint: bool,
    /// The port fingerprinted (default 8006).
    #[serde(default)]
    pub fingerprint_port: Option<u16>,
}

/// The `[oidc]` table as written; checked by `portcullis_ca::identity::oidc::Oidc::new`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcToml {
    /// Exactly as the IdP names itself (`https://…`; `http://` only for loopback).
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (first line).
    pub client_secret_file: PathBuf,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub username_claim: Option<String>,
    #[serde(default)]
    pub email_claim: Option<String>,
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// `https://<this CA>/v1/auth/oidc/callback`, registered at the IdP; without it (and
    /// `redirect_urls`) only the device flow is offered.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// More callbacks: each bastion web front door's `https://HOST/v1/auth/oidc/callback`
    /// (a browser returns to the one of the origin it signed in at).
    #[serde(default)]
    pub redirect_urls: Vec<String>,
    /// PEM bundle for the IdP's TLS certificate, in addition to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allowed_algs: Option<Vec<String>>,
}

impl OidcToml {
    fn into_config(self) -> anyhow::Result<portcullis_ca::identity::oidc::OidcConfig> {
        let secret = std::fs::read_to_string(&self.client_secret_file)
            .with_context(|| format!("cannot read the OIDC client secret {}", self.client_secret_file.display()))?;
        let secret = secret.lines().next().unwrap_or("").to_owned();
        if secret.is_empty() {
            bail!("the OIDC client secret file {} is empty", self.client_secret_file.display());
        }
        let mut config =
            portcullis_ca::identity::oidc::OidcConfig::new(self.issuer, self.client_id, SecretString::from(secret));
        if let Some(v) = self.scopes {
            config.scopes = v;
        }
        if let Some(v) = self.username_claim {
            config.username_claim = v;
        }
        if let Some(v) = self.email_claim {
            config.email_claim = v;
        }
        if let Some(v) = self.groups_claim {
            config.groups_claim = v;
        }
        if let Some(v) = self.allowed_algs {
            config.allowed_algs = v;
        }
        config.redirect_urls = self.redirect_url.into_iter().chain(self.redirect_urls).collect();
        config.ca_file = self.ca_file;
        Ok(config)
    }
}

/// `portcullisd all-in-one --oidc-config FILE`: the `[oidc]` table alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcFile {
    oidc: OidcToml,
}

pub fn read_oidc_file(path: &Path) -> anyhow::Result<OidcToml> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: OidcFile = parse_toml(&text, "OIDC configuration", path)?;
    Ok(file.oidc)
}

/// `portcullisd all-in-one --ldap-config FILE`: a TOML file holding just an `[ldap]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LdapFile {
    ldap: portcullis_ca::identity::LdapToml,
}

/// Reads the `[ldap]` table of `path`.
pub fn read_ldap_file(path: &Path) -> anyhow::Result<portcullis_ca::identity::LdapToml> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: LdapFile = parse_toml(&text, "LDAP configuration", path)?;
    Ok(file.ldap)
}

/// Parses a configuration file, naming the line and column of a mistake but never
/// quoting it: toml's own message shows the offending line, which may hold a secret (a
/// password in a database URL, a client secret) that would then reach the journal.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, what: &str, path: &Path) -> anyhow::Result<T> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        });
        anyhow::anyhow!("invalid {what} in {}{}: {}", path.display(), at.unwrap_or_default(), unquoted(e.message()))
    })
}

/// `message` with everything from its first double quote to its last left out: serde
/// quotes the value it could not take (`invalid type: string "…"`, escaping quotes
/// inside it, so pairing quotes up would misread one); names are in backquotes and stay.
fn unquoted(message: &str) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(first), Some(last)) if first < last => format!("{}\"…\"{}", &message[..first], &message[last + 1..]),
        (Some(first), _) => format!("{}…", &message[..first]),
        _ => message.to_owned(),
    }
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
        parse_toml(&text, "configuration", path)
    }

    /// Defaults for a one-command start: everything under `data_dir`, created when missing.
    pub fn all_in_one(data_dir: &Path, listen: &str, extra_names: Vec<String>) -> anyhow::Result<ServerConfig> {
        fsutil::create_private_dir(data_dir)?;
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
            recording_retention: None,
            tls_cert: None,
            tls_key: None,
            tls_names,
            enroll_binary: None,
            ldap: None,
            oidc: None,
            default_agent: None,
            discovery: None,
            pve: None,
            refusal_summary_every: None,
            metrics_listen: None,
            https_connections_per_source: None,
            https_connections: None,
            ssh_listen: None,
            front_door: Default::default(),
            data_dir,
        })
    }

    /// What the HTTPS listener lets its clients hold open.
    pub fn connection_limits(&self) -> anyhow::Result<portcullis_ca::server::ConnectionLimits> {
        let defaults = portcullis_ca::server::ConnectionLimits::default();
        let total = self.https_connections.unwrap_or(defaults.total);
        if total == 0 {
            bail!("https_connections must be at least 1");
        }
        Ok(portcullis_ca::server::ConnectionLimits {
            per_source: self.https_connections_per_source.unwrap_or(defaults.per_source),
            total,
        })
    }

    pub fn into_ca_config(self) -> anyhow::Result<CaConfig> {
        let passphrase = read_passphrase(self.passphrase_file.as_deref())?;
        self.into_ca_config_with(passphrase)
    }

    /// `portcullisd check`: everything a start reads, checked without opening the
    /// database or a listener — the policy directory (errors as `file:line:column`), the
    /// TLS certificate and key, `[ldap]`, `[oidc]` (their secret files must be readable),
    /// `[discovery]` and the key algorithm. The CA passphrase is only looked for: its
    /// systemd credential exists only while the service runs. Returns a summary.
    pub fn check(self) -> anyhow::Result<String> {
        let policy = policy_files::load_policy_dir(&self.policy_dir)?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                portcullis_ca::tls::operator_tls(cert, key)?;
                format!("operator certificate {}", cert.display())
            }
            (None, None) => "a bootstrap certificate generated in data_dir".to_owned(),
            _ => bail!("tls_cert and tls_key go together: set both or neither"),
        };
        let passphrase = match read_passphrase(self.passphrase_file.as_deref()) {
            Ok(_) => "readable".to_owned(),
            Err(e) => format!("not readable here ({e:#}); the service must have it at start"),
        };
        let database = self.database_url.clone().unwrap_or_else(|| "SQLite in data_dir".to_owned());
        let database = database.split('@').next_back().unwrap_or_default().to_owned();
        // With more than local users, a group name without a source is every source's
        // group of that name: worth saying, since one source's `admins` need not be
        // another's.
        let mut sources = vec!["local users"];
        sources.extend(self.ldap.is_some().then_some("LDAP"));
        sources.extend(self.oidc.is_some().then_some("OIDC"));
        let any_source = policy.groups_from_any_source();
        let groups_note = if sources.len() > 1 && !any_source.is_empty() {
            format!(
                "\nNote: the policy names groups without a source ({}); each matches a group of that name from {} \
                 alike. Name the source where one is meant (`ldap:admins`, `oidc:admins`, `local:admins`).",
                any_source.into_iter().collect::<Vec<_>>().join(", "),
                sources.join(", ")
            )
        } else {
            String::new()
        };
        let scoped: Vec<String> = policy
            .targeted_roles_with_unscoped_permissions()
            .into_iter()
            .map(|(role, permissions)| {
                let permissions: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
                format!("{role} ({})", permissions.join(", "))
            })
            .collect();
        let targets_note = if scoped.is_empty() {
            String::new()
        } else {
            format!(
                "\nNote: a role's targets limit its certificates, consoles, session kills and recordings to the \
                 devices they match; these permissions of targeted roles hold for every device: {}.",
                scoped.join("; ")
            )
        };
        self.into_ca_config_with(SecretString::from(String::new()))?;
        Ok(format!(
            "Configuration OK. Policy: {} role(s), {} rule(s), {} binding(s). TLS: {tls}. Database: {database}. \
             CA passphrase: {passphrase}.{groups_note}{targets_note}",
            policy.roles().count(),
            policy.rules().count(),
            policy.bindings().len()
        ))
    }

    /// `database_url`, else the embedded SQLite file in `data_dir`.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| embedded_database_url(&self.data_dir))
    }

    fn into_ca_config_with(self, passphrase: SecretString) -> anyhow::Result<CaConfig> {
        let database_url = self.database_url();
        let mut config = CaConfig::new(database_url, self.policy_dir, passphrase);
        config.default_agent = self.default_agent;
        config.key_record = Some(self.data_dir.join(CA_KEY_RECORD));
        if let Some(every) = self.refusal_summary_every {
            config.refusal_summary_every = every;
        }
        if let Some(d) = self.discovery {
            let interval = d.interval.map_or(3600, |i| i.as_secs());
            let concurrency = d.concurrency.unwrap_or(4);
            if interval == 0 || !(1..=64).contains(&concurrency) {
                bail!("[discovery]: interval must be at least 1s and concurrency 1-64");
            }
            config.discovery =
                portcullis_ca::DiscoverySettings { enabled: d.enabled, interval_secs: interval, concurrency };
        }
        if let Some(p) = self.pve {
            let interval = p.interval.map_or(3600, |i| i.as_secs());
            let concurrency = p.concurrency.unwrap_or(4);
            if interval == 0 || !(1..=64).contains(&concurrency) {
                bail!("[pve]: interval must be at least 1s and concurrency 1-64");
            }
            config.pve = portcullis_ca::PveSettings {
                interval_secs: interval,
                concurrency,
                fingerprint: p.fingerprint,
                fingerprint_port: p
                    .fingerprint_port
                    .filter(|p| *p != 0)
                    .unwrap_or(portcullis_ca::PveSettings::default().fingerprint_port),
            };
        }
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
        if let Some(v) = self.recording_retention {
            config.recording_retention = v;
        }
        if let Some(oidc) = self.oidc {
            config.oidc = Some(oidc.into_config()?);
        }
        if let Some(ldap) = self.ldap {
            let ldap = ldap.validate().context("invalid [ldap] configuration")?;
            config.extra_sources.push(std::sync::Arc::new(portcullis_ca::identity::LdapSource::new(ldap)));
        }
        Ok(config)
    }
}

/// The embedded SQLite database of a data directory.
pub fn embedded_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("portcullis.db").display())
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

fn portcullis_proto_token() -> String {
    portcullis_ca::service::random_secret()
}

/// On the very first start, creates `admin` and shows its one-time password; on every
/// start, has the password file deleted once it is used (see
/// [`portcullis_ca::IdentityService::forget_initial_password_when_replaced`]).
pub async fn announce_bootstrap_admin(ca: &Ca, data_dir: &Path, show_password: bool) -> anyhow::Result<()> {
    let file = data_dir.join("initial-admin-password");
    if let Some(password) = ca.identity().bootstrap_admin("admin", "portcullis-admins").await? {
        fsutil::write_private(&file, password.expose_secret().as_bytes())?;
        if show_password {
            // Printed once, to the terminal of whoever started the server; never to the log.
            println!("First administrator: admin, one-time password: {}", password.expose_secret());
        }
    }
    if ca.identity().forget_initial_password_when_replaced("admin", file.clone()).await? {
        println!(
            "First administrator: admin; the one-time password is in {} (mode 0600). It opens no session: the \
             first `portcullis login --user admin` (or web sign-in) chooses admin's own password, and the file is \
             deleted then.",
            file.display()
        );
    }
    Ok(())
}
