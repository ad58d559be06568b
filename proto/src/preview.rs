//! The target preview (the ServiceRadar seed: "use the target preview before enabling or
//! testing a rule"): which inventory devices a rule reaches, for any purpose.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/admin/rules/preview`: a policy that is not loaded (e.g. a directory about to
/// be deployed), previewed against the current inventory. Nothing is saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RulePreviewRequest {
    /// `(file name, contents)` of every policy file, as the CA would load the directory.
    pub files: Vec<PolicyFile>,
    /// The rule to preview; every rule when absent.
    #[serde(default)]
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    pub text: String,
}

/// What a rule reaches among the inventory's devices (the seed's "target preview").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RulePreview {
    pub rule: String,
    pub purpose: String,
    /// `proxmox` for a credential rule.
    pub provider: Option<String>,
    /// Devices the target query matches.
    pub matched: Vec<String>,
    /// Of those, the devices whose partition, agent and gateway the scope includes.
    pub in_scope: Vec<String>,
    /// In scope, but an earlier rule (by name) of the same purpose decides: device → rule.
    pub decided_by_other_rule: BTreeMap<String, String>,
    /// In-scope devices per agent (`-` for none).
    pub by_agent: BTreeMap<String, u64>,
}
