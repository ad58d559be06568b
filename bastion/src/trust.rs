//! Trust material from the CA: the user-CA and internal-CA public keys and the KRL.
//!
//! Fetched from the CA's public endpoints (`GET /v1/ca/user/keys`,
//! `GET /v1/ca/internal/keys`, `GET /v1/krl`) over
//! TLS pinned to the CA's key, and swapped in only when **all three** downloaded and parsed:
//! a failed refresh keeps the last good copy. Before the first good copy, and once the
//! last good copy is older than [`TrustConfig::max_staleness`], there is no trust at all
//! and every certificate is refused (fail closed) — a bastion cut off from its CA must
//! not keep honouring certificates revoked since.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_sshcert::Krl;
use ssh_key::PublicKey;
use ssh_key::public::KeyData;

use crate::ca_client::{CaClient, CaRequest, InProcessCa, NoAnswer};
use crate::clock::Clock;
use crate::error::BastionError;

/// Largest body accepted from either endpoint.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// `https://host:port` of the CA; several replicas separated by commas.
    pub ca_url: String,
    /// The CA's TLS public-key pin (`SHA256:…`); one per replica key, separated by commas.
    pub ca_pin: String,
    /// The all-in-one's own CA: when set, requests go to it, not to `ca_url`.
    pub in_process: Option<InProcessCa>,
    pub refresh_every: Duration,
    pub request_timeout: Duration,
    /// How old the last good copy may grow while the CA is unreachable.
    pub max_staleness: Duration,
}

impl TrustConfig {
    pub fn new(ca_url: impl Into<String>, ca_pin: impl Into<String>) -> Self {
        Self {
            ca_url: ca_url.into(),
            ca_pin: ca_pin.into(),
            in_process: None,
            refresh_every: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_staleness: Duration::from_secs(3600),
        }
    }
}

/// Why one refresh failed (the previous copy stays in use).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("request to {path} failed: {detail}")]
    Request { path: &'static str, detail: String },
    #[error("{path} answered HTTP {status}")]
    Status { path: &'static str, status: u16 },
    #[error("{path} sent more than {MAX_BODY} bytes")]
    TooLarge { path: &'static str },
    #[error("user CA keys: line {line} is not an OpenSSH public key")]
    BadKey { line: usize },
    #[error("the CA publishes no user CA key")]
    NoKeys,
    #[error("the KRL does not parse: {0}")]
    BadKrl(String),
}

/// One consistent copy of the trust material.
#[derive(Debug)]
pub struct TrustSnapshot {
    pub user_ca_keys: Vec<KeyData>,
    /// Signs the certificates of edge agents (and other services).
    pub internal_ca_keys: Vec<KeyData>,
    pub krl: Krl,
    /// When this copy was fetched (seconds since the epoch, by the injected clock).
    pub fetched_at: u64,
}

pub struct TrustSource {
    config: TrustConfig,
    ca: CaClient,
    clock: Arc<dyn Clock>,
    current: RwLock<Option<Arc<TrustSnapshot>>>,
}

impl std::fmt::Debug for TrustSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustSource").field("ca", &self.ca.describe()).finish_non_exhaustive()
    }
}

impl TrustSource {
    pub fn new(config: TrustConfig, clock: Arc<dyn Clock>) -> Result<Self, BastionError> {
        let ca = CaClient::new(&config.ca_url, &config.ca_pin, config.in_process.as_ref(), config.request_timeout)?;
        Ok(Self { config, ca, clock, current: RwLock::new(None) })
    }

    /// The current trust material, or `None` (refuse everything) when it was never
    /// loaded or is older than `max_staleness`.
    pub fn current(&self) -> Option<Arc<TrustSnapshot>> {
        let snapshot = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()?;
        let age = self.clock.now_unix().saturating_sub(snapshot.fetched_at);
        (age <= self.config.max_staleness.as_secs()).then_some(snapshot)
    }

    /// Fetches both documents; replaces the current copy only if both are good.
    pub async fn refresh(&self) -> Result<(), TrustError> {
        let user_keys = self.get("/v1/ca/user/keys").await?;
        let internal_keys = self.get("/v1/ca/internal/keys").await?;
        let krl_bytes = self.get("/v1/krl").await?;
        let user_ca_keys = parse_keys(&String::from_utf8_lossy(&user_keys))?;
        let internal_ca_keys = parse_keys(&String::from_utf8_lossy(&internal_keys))?;
        let krl = Krl::parse(&krl_bytes).map_err(|e| TrustError::BadKrl(e.to_string()))?;
        let krl = self.newer_krl(krl);
        let snapshot =
            Arc::new(TrustSnapshot { user_ca_keys, internal_ca_keys, krl, fetched_at: self.clock.now_unix() });
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(snapshot);
        Ok(())
    }

    /// `fetched`, unless the KRL held now has a higher version: a CA restored from an
    /// older backup serves a KRL without the revocations made since, and the bastion
    /// keeps the newer one (the CA's next revocation publishes a version above it).
    fn newer_krl(&self, fetched: Krl) -> Krl {
        let held = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        match held {
            Some(held) if held.krl.krl_version() > fetched.krl_version() => {
                tracing::warn!(
                    held = held.krl.krl_version(),
                    sent = fetched.krl_version(),
                    "the CA sent an older KRL than the one in force (restored from a backup?): keeping ours"
                );
                held.krl.clone()
            }
            _ => fetched,
        }
    }

    /// Refreshes every `refresh_every` until the returned task is aborted; failures are
    /// logged and the last good copy stays.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(this.config.refresh_every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match this.refresh().await {
                    Ok(()) => tracing::debug!(ca = %this.ca.describe(), "trust material refreshed"),
                    Err(e) => {
                        tracing::warn!(ca = %this.ca.describe(), error = %e, "trust refresh failed; keeping the last good copy")
                    }
                }
            }
        })
    }

    /// One document (from the replicas in turn, see [`CaClient::call`]).
    async fn get(&self, path: &'static str) -> Result<Vec<u8>, TrustError> {
        let request = CaRequest {
            method: reqwest::Method::GET,
            path_and_query: path.to_owned(),
            headers: reqwest::header::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        let answer = self.ca.call(&request, MAX_BODY).await.map_err(|e| match e {
            NoAnswer::Failed(detail) => TrustError::Request { path, detail },
            NoAnswer::TooLarge => TrustError::TooLarge { path },
        })?;
        if !answer.status.is_success() {
            return Err(TrustError::Status { path, status: answer.status.as_u16() });
        }
        Ok(answer.body)
    }
}

/// One OpenSSH public key per line; blank lines and `#` comments are skipped. One bad
/// line rejects the whole document rather than trusting part of it.
fn parse_keys(text: &str) -> Result<Vec<KeyData>, TrustError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line).map_err(|_| TrustError::BadKey { line: n + 1 })?;
        keys.push(key.key_data().clone());
    }
    if keys.is_empty() {
        return Err(TrustError::NoKeys);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKj2cFcsfoHlUC9/IZzyu+BMUPOeq0GRGwMHJcXnWcNk user-ca";

    #[test]
    fn parses_keys_and_refuses_partial_documents() {
        assert_eq!(parse_keys(&format!("# comment\n\n{KEY}\n{KEY}\n")).unwrap().len(), 2);
        assert!(matches!(parse_keys(&format!("{KEY}\nnot a key\n")), Err(TrustError::BadKey { line: 2 })));
        assert!(matches!(parse_keys("\n# nothing\n"), Err(TrustError::NoKeys)));
    }

    struct Fixed(u64);
    impl Clock for Fixed {
        fn now_unix(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn never_loaded_and_stale_trust_is_no_trust() {
        let clock = Arc::new(Fixed(10_000));
        let source = TrustSource::new(
            TrustConfig::new("https://127.0.0.1:1", "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"),
            clock,
        )
        .unwrap();
        assert!(source.current().is_none(), "never loaded: fail closed");
        let krl = Krl::parse(&portcullis_sshcert::KrlBuilder::new(1, 1, "").encode()).unwrap();
        let fresh = Arc::new(TrustSnapshot {
            user_ca_keys: parse_keys(KEY).unwrap(),
            internal_ca_keys: Vec::new(),
            krl,
            fetched_at: 10_000 - 3600,
        });
        *source.current.write().unwrap() = Some(Arc::clone(&fresh));
        assert!(source.current().is_some());
        let krl = Krl::parse(&portcullis_sshcert::KrlBuilder::new(1, 1, "").encode()).unwrap();
        let stale = Arc::new(TrustSnapshot {
            user_ca_keys: parse_keys(KEY).unwrap(),
            internal_ca_keys: Vec::new(),
            krl,
            fetched_at: 10_000 - 3601,
        });
        *source.current.write().unwrap() = Some(stale);
        assert!(source.current().is_none(), "older than max_staleness: fail closed");
    }

    /// A CA restored from an older backup sends a KRL of a lower version, without the
    /// revocations made since: the bastion keeps the one in force; a higher version (the
    /// restored CA's next revocation) replaces it.
    #[test]
    fn an_older_krl_does_not_replace_the_one_in_force() {
        let source = TrustSource::new(
            TrustConfig::new("https://127.0.0.1:1", "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"),
            Arc::new(Fixed(10_000)),
        )
        .unwrap();
        let krl = |version| Krl::parse(&portcullis_sshcert::KrlBuilder::new(version, 1, "").encode()).unwrap();
        assert_eq!(source.newer_krl(krl(3)).krl_version(), 3, "nothing held yet");
        *source.current.write().unwrap() = Some(Arc::new(TrustSnapshot {
            user_ca_keys: parse_keys(KEY).unwrap(),
            internal_ca_keys: Vec::new(),
            krl: krl(9),
            fetched_at: 10_000,
        }));
        assert_eq!(source.newer_krl(krl(3)).krl_version(), 9, "an older KRL replaced the one in force");
        assert_eq!(source.newer_krl(krl(9)).krl_version(), 9);
        assert_eq!(source.newer_krl(krl(12)).krl_version(), 12);
    }
}
