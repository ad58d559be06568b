//! Wire types of node enrollment and refresh (`portcullis-enroll` ⇄ CA).
//!
//! Enrollment authenticates with a one-time enrollment token (`Authorization: Bearer
//! pce_…`); refresh and removal authenticate as the node, by a signature made with one
//! of the node's registered host keys (see [`NodeProof`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTokenRequest {
    pub ttl_seconds: u64,
    pub uses: u32,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    /// A token for enrolling a bastion or an agent (`POST /v1/services/enroll`) instead of
    /// a node. A node token cannot enroll a service and vice versa.
    #[serde(default)]
    pub service: Option<crate::bastion::ServiceKind>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollTokenResponse {
    /// Shown once; the CA keeps only its hash.
    pub token: String,
    pub id: String,
    pub expires_at: u64,
    pub uses: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollTokenInfo {
    pub id: String,
    pub created_by: String,
    pub expires_at: u64,
    pub uses_left: u32,
    pub tags: BTreeMap<String, String>,
    pub partition: Option<String>,
    pub agent: Option<String>,
    /// Set for service tokens.
    #[serde(default)]
    pub service: Option<crate::bastion::ServiceKind>,
}

/// What the node tells the CA about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFacts {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    /// OpenSSH public key lines of the node's existing host keys (never regenerated).
    pub host_keys: Vec<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub sshd_version: Option<String>,
    #[serde(default)]
    pub pve_cluster: Option<String>,
    #[serde(default)]
    pub pve_node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub facts: NodeFacts,
    /// An ephemeral public key of the enrollment tool; the CA returns a short-lived
    /// certificate for it that only this node's staged principals file accepts, so the
    /// tool can prove a real login works before committing.
    pub verification_public_key: String,
}

/// Everything a node needs to trust the CA; also the answer to a refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeBundle {
    pub node: String,
    /// `TrustedUserCAKeys` contents: every currently trusted user CA key, one per line.
    pub trusted_user_ca_keys: String,
    /// `AuthorizedPrincipalsFile` contents per login.
    pub principals: BTreeMap<String, Vec<String>>,
    /// The KRL, base64 (standard, padded).
    pub krl_base64: String,
    /// One host certificate per submitted host key, in the same order.
    pub host_certificates: Vec<String>,
    /// Host CA public keys (for clients' `@cert-authority` known_hosts lines).
    pub trusted_host_ca_keys: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub bundle: NodeBundle,
    /// User certificate for `verification_public_key`: principal `verification_principal`,
    /// a lifetime of about two minutes, `force-command` `true`, loopback-only source.
    pub verification_certificate: String,
    pub verification_principal: String,
    /// The login the verification certificate is for.
    pub verification_login: String,
}

/// Proof that the caller holds a registered host key of `node`: an SSHSIG (armored, as
/// `ssh-keygen -Y sign` writes it) over [`NodeProof::message`], namespace
/// [`NodeProof::NAMESPACE`], made within the last few minutes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeProof {
    pub node: String,
    pub timestamp: u64,
    pub host_public_key: String,
    pub signature: String,
}

impl NodeProof {
    pub const NAMESPACE: &'static str = "portcullis-node@portcullis";

    /// The signed text: binds the proof to the node, the action and the time.
    pub fn message(node: &str, action: &str, timestamp: u64) -> String {
        format!("portcullis-node-proof-v1\n{node}\n{action}\n{timestamp}\n")
    }
}
