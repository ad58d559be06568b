//! Wire types of node enrollment and refresh (`portcullis-enroll` ⇄ CA).
//!
//! Enrollment authenticates with a one-time enrollment token (`Authorization: Bearer
//! pce_…`); refresh and removal authenticate as the node, by a signature made with one
//! of the node's registered host keys (see [`NodeProof`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Bind the token to one node name: the only token that can claim a name an
    /// administrator registered by hand (which has no host keys to prove).
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokenResponse {
    /// Shown once; the CA keeps only its hash.
    pub token: crate::WireSecret,
    pub id: String,
    pub expires_at: u64,
    pub uses: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Set for tokens bound to one node name.
    #[serde(default)]
    pub node: Option<String>,
}

/// What the node tells the CA about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The port sshd listens on (`sshd -T`, or `--sshd-port`).
    #[serde(default)]
    pub ssh_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub facts: NodeFacts,
    /// An ephemeral public key of the enrollment tool; the CA returns a short-lived
    /// certificate for it that only this node's staged principals file accepts, so the
    /// tool can prove a real login works before committing.
    pub verification_public_key: String,
    /// Required when the name is already enrolled: a [`NodeProof`] by one of the host
    /// keys the CA has pinned for it, for action [`NodeProof::enroll_action`] — knowing
    /// a node's public host keys (anyone can `ssh-keyscan` them) is not enough to
    /// re-enroll it.
    #[serde(default)]
    pub proof: Option<NodeProof>,
}

/// Everything a node needs to trust the CA; also the answer to a refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeBundle {
    pub node: String,
    /// `TrustedUserCAKeys` contents: every currently trusted user CA key, one per line.
    pub trusted_user_ca_keys: String,
    /// `AuthorizedPrincipalsFile` principals per login, without options (what tools
    /// older than `principal_lines` install).
    pub principals: BTreeMap<String, Vec<String>>,
    /// `AuthorizedPrincipalsFile` lines per login, each with the options that confine a
    /// role to what it grants; installed instead of `principals` when present.
    #[serde(default)]
    pub principal_lines: BTreeMap<String, Vec<crate::PrincipalLine>>,
    /// The KRL, base64 (standard, padded).
    pub krl_base64: String,
    /// One host certificate per submitted host key, in the same order.
    pub host_certificates: Vec<String>,
    /// Host CA public keys (for clients' `@cert-authority` known_hosts lines).
    pub trusted_host_ca_keys: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub bundle: NodeBundle,
    /// User certificate for `verification_public_key`: principal `verification_principal`,
    /// a lifetime of about two minutes, `force-command` `true`, loopback-only source.
    pub verification_certificate: String,
    pub verification_principal: String,
    /// The login the verification certificate is for.
    pub verification_login: String,
}

/// `POST /v1/enroll/abort`: the node rolled an enrollment back; the CA undoes the
/// registration (removes a new node, restores an existing one's record) and gives the
/// token's use back. Authenticated by a [`NodeProof`] for
/// [`NodeProof::abort_action`] of the attempt's verification principal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollAbortRequest {
    pub verification_principal: String,
    pub proof: NodeProof,
}

/// Proof that the caller holds a registered host key of `node`: an SSHSIG (armored, as
/// `ssh-keygen -Y sign` writes it) over [`NodeProof::message`], namespace
/// [`NodeProof::NAMESPACE`], made within the last few minutes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

    /// The action an enrollment roll-back signs: the attempt's verification principal.
    pub fn abort_action(verification_principal: &str) -> String {
        format!("abort-enroll {verification_principal}")
    }

    /// The action a re-enrollment proof signs: `enroll ` and a SHA-256 over the
    /// enrollment token and everything the request claims (name, addresses, host keys,
    /// facts), so a proof is good for this one request with this one token.
    pub fn enroll_action(facts: &NodeFacts, token: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"portcullis-enroll-v1\0");
        h.update(Sha256::digest(token.as_bytes()));
        h.update(serde_json::to_vec(facts).unwrap_or_default());
        let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("enroll {digest}")
    }
}
