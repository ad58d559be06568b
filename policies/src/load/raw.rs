//! The policy file shape as serde sees it. Everything denies unknown fields so a typo is
//! a load error, and every field that gets semantic checks is `Spanned` so the error can
//! point at it.

use serde::Deserialize;
use toml::Spanned;

use crate::model::{AuthMethod, HostKeyPolicy, IdleCounts, OverLimit, Provider, Purpose};

type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub name: S,
    #[serde(default)]
    pub logins: Vec<S>,
    pub targets: Option<S>,
    #[serde(default)]
    pub permissions: Vec<S>,
    pub max_cert_ttl: Option<S>,
    #[serde(default)]
    pub extensions: Vec<S>,
    pub critical_options: Option<RawCriticalOptions>,
    pub session: Option<RawSession>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCriticalOptions {
    #[serde(rename = "force-command")]
    pub force_command: Option<S>,
    #[serde(rename = "source-address")]
    pub source_address: Option<S>,
    #[serde(rename = "verify-required")]
    pub verify_required: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    pub idle: Option<S>,
    pub absolute: Option<S>,
    pub max_per_user: Option<Spanned<u32>>,
    pub max_per_device: Option<Spanned<u32>>,
    pub max_per_agent: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBinding {
    pub group: Option<S>,
    pub user: Option<S>,
    pub roles: Spanned<Vec<S>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeny {
    pub name: S,
    #[serde(default)]
    pub users: Vec<S>,
    #[serde(default)]
    pub groups: Vec<S>,
    #[serde(default)]
    pub logins: Vec<S>,
    #[serde(default)]
    pub permissions: Vec<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub name: S,
    pub purpose: Purpose,
    pub targets: S,
    pub scope: Spanned<RawScope>,
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,
    pub timeout_ms: Option<Spanned<u64>>,
    pub allowed_ports: Option<Spanned<Vec<Spanned<u16>>>>,
    #[serde(default)]
    pub idle_counts: IdleCounts,
    /// Step-up: a sign-in at most this old (`10m`), for `ssh_login`/`console_access`.
    pub fresh_auth_within: Option<S>,
    /// Session recording, for `ssh_login`/`console_access`.
    pub record: Option<Spanned<bool>>,
    pub record_input: Option<Spanned<bool>>,
    pub record_max_mib: Option<Spanned<u64>>,
    pub record_over_limit: Option<Spanned<OverLimit>>,
    // Credential rules only (purpose `inventory_enrichment` with an API token).
    pub provider: Option<Spanned<Provider>>,
    pub auth_method: Option<Spanned<AuthMethod>>,
    pub secret: Option<S>,
    pub api_port: Option<Spanned<u16>>,
    pub auto_discovery_trials: Option<Spanned<bool>>,
    pub strict_permissions: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    #[serde(default)]
    pub partitions: Vec<S>,
    #[serde(default)]
    pub agents: Vec<S>,
    #[serde(default)]
    pub gateways: Vec<S>,
}
