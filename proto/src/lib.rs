//! Wire types of the Portcullis CA's HTTPS API.
//!
//! Both the server (`ca`) and the CLI (`portcullis`) speak these types, so a field renamed
//! here is renamed for both. Every secret the protocol carries is a [`WireSecret`];
//! passwords are *not* modelled as serializable fields (the CLI builds that one body by
//! hand and the server reads it straight into a redacting type).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A secret the protocol carries — a bearer token, a console ticket, an enrollment or
/// service token, a sign-in handle, an API secret: serialized as the plain JSON string
/// the peer needs, and nowhere else. No `Display`, `Debug` prints `<redacted>`, reading it
/// takes an explicit [`WireSecret::expose`], and its bytes are zeroed when dropped.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct WireSecret(String);

impl WireSecret {
    pub fn new(value: impl Into<String>) -> Self {
        WireSecret(value.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for WireSecret {
    fn from(value: String) -> Self {
        WireSecret(value)
    }
}

impl From<&str> for WireSecret {
    fn from(value: &str) -> Self {
        WireSecret(value.to_owned())
    }
}

impl std::fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for WireSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Every error body the API returns. `error` is a stable code; `message` is safe to show.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    pub token: crate::WireSecret,
    pub username: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub username: String,
    pub source: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    /// The control-plane permissions held right now (`audit.read`, …): what the web UI
    /// offers, never what the CA checks.
    #[serde(default)]
    pub permissions: Vec<String>,
    pub session_expires_at: u64,
    /// When the user proved who they are for this session (a password typed, or the
    /// identity provider's `auth_time`; 0 when the provider did not say): what
    /// `fresh_auth_within` rules ask about.
    #[serde(default)]
    pub authenticated_at: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UserCertRequest {
    /// One OpenSSH public key line. The private key never leaves the user's machine.
    pub public_key: String,
    /// Requested lifetime; policy caps it.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Roles to use; `None` means every role the user holds except forced-command roles.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserCertResponse {
    /// The certificate in OpenSSH `-cert.pub` format.
    pub certificate: String,
    /// Decimal string: serials are 64-bit and JSON numbers are not.
    pub serial: String,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserInfo {
    pub username: String,
    pub groups: Vec<String>,
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UserAddRequest {
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetGroupsRequest {
    pub groups: Vec<String>,
}

/// What to revoke; exactly one field is set.
/// `POST /v1/certs/user/revoke`: a user revokes one of their own certificates (what
/// `portcullis logout` does with the certificate it installed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeOwnRequest {
    pub serial: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub serial: Option<String>,
    /// An OpenSSH public key line: every certificate for it, and the key itself, are revoked.
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokeResponse {
    pub certificates_revoked: u64,
    pub key_revoked: bool,
    pub krl_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedCert {
    pub serial: String,
    pub username: String,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    pub key_fingerprint: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CaKeyInfo {
    pub purpose: String,
    pub state: String,
    pub algorithm: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerifyResponse {
    pub ok: bool,
    pub records: u64,
    /// The first sequence number at which the chain breaks, when it does.
    pub first_bad_seq: Option<u64>,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    pub seq: u64,
    pub at: u64,
    pub event: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyReloadResponse {
    pub digest: String,
    pub changed: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

/// `PUT /v1/admin/nodes/{name}`: changes only what it names; everything else stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeUpdate {
    /// Replaces the addresses.
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
    /// Sets these tags (others stay).
    #[serde(default)]
    pub set_tags: BTreeMap<String, String>,
    /// Removes these tags.
    #[serde(default)]
    pub remove_tags: Vec<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    /// An explicit re-key: replaces the pinned host keys (and revokes the node's host
    /// certificates, reissued for the new keys at its next refresh).
    #[serde(default)]
    pub host_keys: Option<Vec<String>>,
    /// The port the node's sshd listens on.
    #[serde(default)]
    pub ssh_port: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// OpenSSH public key lines of the node's host keys (set by enrollment).
    #[serde(default)]
    pub host_keys: Vec<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub sshd_version: Option<String>,
    /// The port the node's sshd listens on (set by enrollment from `sshd -T`); `None`
    /// is 22. Sessions, consoles and discovery dial it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
}

impl NodeRecord {
    pub fn ssh_port_or_default(&self) -> u16 {
        self.ssh_port.unwrap_or(22)
    }
}

/// A node's `AuthorizedPrincipalsFile` contents, per login.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodePrincipals {
    pub node: String,
    /// The principals alone, per login.
    pub principals: BTreeMap<String, Vec<String>>,
    /// The file's lines, per login, with the options that confine each role to what it
    /// grants (`restrict,pty pc_…_root`): what enrollment installs.
    #[serde(default)]
    pub lines: BTreeMap<String, Vec<PrincipalLine>>,
}

/// One `AuthorizedPrincipalsFile` line: `authorized_keys` options (sshd ANDs them with
/// the certificate's extensions) and the principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrincipalLine {
    pub options: Vec<String>,
    pub principal: String,
}

/// The options a principals line may carry; a node refuses any other (an option like
/// `command=` or `environment=` from a compromised CA must not reach sshd unseen).
pub const PRINCIPAL_LINE_OPTIONS: &[&str] = &[
    "restrict",
    "pty",
    "port-forwarding",
    "agent-forwarding",
    "X11-forwarding",
    "user-rc",
    "no-touch-required",
    "verify-required",
];

impl PrincipalLine {
    /// Whether every option is one of [`PRINCIPAL_LINE_OPTIONS`] and the principal is one
    /// printable word.
    pub fn is_well_formed(&self) -> bool {
        let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'"');
        word(&self.principal) && self.options.iter().all(|o| PRINCIPAL_LINE_OPTIONS.contains(&o.as_str()))
    }

    /// The line as sshd reads it.
    pub fn render(&self) -> String {
        if self.options.is_empty() {
            self.principal.clone()
        } else {
            format!("{} {}", self.options.join(","), self.principal)
        }
    }
}

/// One live bastion session (`GET /v1/admin/sessions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub session_id: String,
    pub bastion: String,
    pub user: String,
    pub device: String,
    pub agent: String,
    pub login: Option<String>,
    /// `terminated`, `jump` or `console`.
    pub mode: String,
    pub rule: String,
    pub role: String,
    pub client_ip: String,
    pub opened_at: u64,
    /// Last heartbeat of its bastion for it.
    pub heartbeat_at: u64,
    pub absolute_deadline: u64,
    /// An administrator asked for it to close; its bastion does so at its next heartbeat.
    pub kill_requested: bool,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// The address a peer at `ip` is counted under by rate limits and connection caps: an
/// IPv4 address as it is (an IPv4-mapped IPv6 address as its IPv4 address), an IPv6
/// address by its /64 — one host is routinely given a whole /64, and counting per
/// address would hand it 2^64 fresh budgets.
pub fn source_prefix(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// Characters that change how text around them is shown without showing themselves:
/// zero-width spaces and joiners, direction marks, embeddings, overrides and isolates. A
/// peer-chosen name holding one can display as another name (`ali\u{202e}ecila`), in a log
/// viewer, an audit listing or a terminal.
pub fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

pub mod asciicast;
pub mod bastion;
pub mod console;
pub mod discovery;
pub mod enroll;
pub mod frames;
pub mod metrics;
pub mod oidc;
pub mod pin;
pub mod preview;
pub mod pve;
pub mod recording;
pub mod refusals;

#[cfg(test)]
mod redaction_tests {
    use super::*;

    const SECRET: &str = "pcs_do-not-log-me";

    #[test]
    fn a_wire_secret_is_the_plain_string_on_the_wire_and_nowhere_else() {
        let login = LoginResponse { token: SECRET.into(), username: "alice".into(), expires_at: 7 };
        let json = serde_json::to_value(&login).unwrap();
        assert_eq!(json["token"], SECRET, "the protocol carries it as it is");
        let back: LoginResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back.token.expose(), SECRET);
        assert_eq!(format!("{:?}", back.token), "<redacted>");
    }

    #[test]
    fn debug_output_names_fields_but_never_shows_a_secret() {
        let debugged = [
            format!("{:?}", LoginResponse { token: SECRET.into(), username: "alice".into(), expires_at: 7 }),
            format!(
                "{:?}",
                bastion::ServiceEnrollResponse {
                    kind: bastion::ServiceKind::Agent,
                    name: "edge1".into(),
                    api_token: SECRET.into(),
                    certificate: String::new(),
                    internal_ca_keys: String::new(),
                }
            ),
            format!(
                "{:?}",
                console::TicketResponse { ticket: SECRET.into(), expires_at: 7, websocket_path: "/console/ws".into() }
            ),
            format!(
                "{:?}",
                console::ConsoleOpenRequest {
                    ticket: SECRET.into(),
                    session_id: "abc".into(),
                    session_public_key: String::new(),
                    client_ip: "192.0.2.1".into(),
                    browser_session: None,
                }
            ),
            format!(
                "{:?}",
                enroll::EnrollTokenResponse { token: SECRET.into(), id: "t1".into(), expires_at: 7, uses: 1 }
            ),
            format!(
                "{:?}",
                oidc::DeviceStart {
                    handle: SECRET.into(),
                    verification_uri: "https://idp.example/device".into(),
                    verification_uri_complete: None,
                    user_code: "ABCD-EFGH".into(),
                    interval: 5,
                    expires_in: 600,
                }
            ),
            format!("{:?}", oidc::DevicePollRequest { handle: SECRET.into() }),
        ];
        for text in debugged {
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }
}
