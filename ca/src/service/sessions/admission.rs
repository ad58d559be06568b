//! The admission decision's pure parts: request shape, the policy check shared by open
//! and every heartbeat, and the permit the per-session certificate is built from.

use super::super::certs::device_of;
use crate::error::CaError;
use portcullis_policies::{Device, HostKeyPolicy, Identity, Permission, Policy, Purpose, Role, Rule, scoped_principal};
use portcullis_proto::NodeRecord;
use portcullis_proto::bastion::{deny_reason as deny, *};
use std::collections::BTreeSet;

/// Extensions a role may pass on to a per-session certificate (besides `permit-pty`).
pub(super) const FORWARDING_EXTENSIONS: [&str; 3] =
    ["permit-agent-forwarding", "permit-port-forwarding", "permit-X11-forwarding"];

/// Proof that a per-session certificate with exactly these contents may be signed. Only
/// [`crate::Ca::open_bastion_session`] makes one, after the admission decision.
pub struct SessionPermit {
    pub(super) principal: String,
    pub(super) key_id: String,
    pub(super) extensions: Vec<String>,
}

impl SessionPermit {
    pub fn principal(&self) -> &str {
        &self.principal
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

/// A refusal: stable code, fixed text for the user.
pub(super) struct Denial {
    pub(super) reason: &'static str,
    pub(super) text: &'static str,
}

pub(super) fn denial(reason: &'static str, text: &'static str) -> Denial {
    Denial { reason, text }
}

/// What the policy admits a session under.
pub(super) struct Admission<'p> {
    pub(super) role: &'p Role,
    pub(super) rule: &'p Rule,
}

pub fn valid_session_id(id: &str) -> bool {
    id.len() == 32 && id.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f'))
}

/// Login names as policies accept them.
pub(super) fn valid_login(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// A device name or address as a client may type it.
fn valid_device(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

fn purpose_of(mode: SessionMode) -> Purpose {
    match mode {
        SessionMode::Terminated | SessionMode::Jump => Purpose::SshLogin,
        SessionMode::Console => Purpose::ConsoleAccess,
    }
}

pub(super) fn mode_from(s: &str) -> Option<SessionMode> {
    match s {
        "terminated" => Some(SessionMode::Terminated),
        "jump" => Some(SessionMode::Jump),
        "console" => Some(SessionMode::Console),
        _ => None,
    }
}

/// What vouches for the identity a session is decided for.
pub(super) enum Basis<'a> {
    /// A user certificate: only roles that issue certificates and whose scoped principal
    /// for the login is on it count, so a session never exceeds the certificate.
    Certificate(&'a BTreeSet<String>),
    /// A browser-console ticket: only roles holding `devices.console.open` count.
    Ticket,
}

/// Roles through which `who` may open a browser console on `device`: they hold
/// `devices.console.open`, target the device, and set no critical options (the
/// per-session certificate could not carry them, see [`admit`]).
pub(super) fn console_roles<'p>(policy: &'p Policy, who: &Identity, device: &Device) -> Vec<&'p Role> {
    policy
        .roles_of(who)
        .into_iter()
        .filter(|r| r.has_permission(Permission::DevicesConsoleOpen))
        .filter(|r| r.critical_options().is_empty())
        .filter(|r| r.targets().is_some_and(|q| q.matches(device)))
        .collect()
}

/// Logins a console may use on `device`: its console roles' logins minus deny statements.
pub(super) fn console_logins(policy: &Policy, who: &Identity, device: &Device) -> BTreeSet<String> {
    let denies = policy.denies_of(who);
    console_roles(policy, who, device)
        .into_iter()
        .flat_map(|r| r.logins().iter())
        .filter(|l| !denies.iter().any(|d| d.removes_login(l)))
        .cloned()
        .collect()
}

/// The policy part of admission, shared by open (certificate or ticket) and by every
/// heartbeat (so a policy change that would refuse the session now closes it). Pure
/// and in memory.
pub(super) fn admit<'p>(
    policy: &'p Policy,
    who: &Identity,
    basis: Basis<'_>,
    device: &Device,
    mode: SessionMode,
    login: Option<&str>,
    port: u16,
) -> Result<Admission<'p>, Denial> {
    let denies = policy.denies_of(who);
    let not_authorized = || denial(deny::NOT_AUTHORIZED, "no role grants this login on this device");
    if mode == SessionMode::Console && policy.authorize(who, Permission::DevicesConsoleOpen).is_err() {
        return Err(denial(deny::NOT_AUTHORIZED, "the browser console is not granted to you"));
    }
    let role = match basis {
        Basis::Certificate(cert_principals) => {
            if denies.iter().any(|d| d.removes_permission(Permission::CertsIssue)) {
                return Err(not_authorized());
            }
            let usable = |role: &Role, login: &str| {
                role.logins().contains(login)
                    && cert_principals.contains(&scoped_principal(role.name(), login))
                    && !denies.iter().any(|d| d.removes_login(login))
            };
            policy
                .roles_of(who)
                .into_iter()
                .filter(|r| r.has_permission(Permission::CertsIssue))
                .filter(|r| r.targets().is_some_and(|q| q.matches(device)))
                .find(|r| match (mode, login) {
                    (SessionMode::Jump, _) => r.logins().iter().any(|l| usable(r, l)),
                    // The per-session certificate carries no critical options, so a role
                    // that restricts its certificates (force-command, source-address) can
                    // only be used end to end, in jump mode, where the user's own
                    // certificate carries them.
                    (_, Some(login)) => r.critical_options().is_empty() && usable(r, login),
                    (_, None) => false,
                })
        }
        // A ticket opens a console only, for the login it names.
        Basis::Ticket => match (mode, login) {
            (SessionMode::Console, Some(login)) if !denies.iter().any(|d| d.removes_login(login)) => {
                console_roles(policy, who, device).into_iter().find(|r| r.logins().contains(login))
            }
            _ => None,
        },
    }
    .ok_or_else(not_authorized)?;
    let rule = policy
        .match_rule(purpose_of(mode), device)
        .map_err(|_| denial(deny::RULE_MISMATCH, "no rule allows this kind of session to this device"))?;
    if mode == SessionMode::Jump && !rule.allowed_ports().contains(&port) {
        return Err(denial(deny::PORT_NOT_ALLOWED, "this port is not allowed on this device"));
    }
    Ok(Admission { role, rule })
}

/// The inventory record as policy sees it, with the default agent filled in.
pub(crate) fn policy_device(node: &NodeRecord, default_agent: Option<&str>) -> Device {
    let mut device = device_of(node);
    if device.agent.is_none() {
        device.agent = default_agent.map(str::to_owned);
    }
    device
}

pub(super) fn host_key_check(policy: HostKeyPolicy) -> HostKeyCheck {
    match policy {
        HostKeyPolicy::KnownHosts => HostKeyCheck::KnownHosts,
        HostKeyPolicy::TrustOnFirstUse => HostKeyCheck::TrustOnFirstUse,
        HostKeyPolicy::DangerSkipVerify => HostKeyCheck::DangerSkipVerify,
    }
}

/// Checks the request's shape; returns the certificate serial and the port.
pub(super) fn validate_open(req: &SessionOpenRequest) -> Result<(u64, u16), CaError> {
    let bad = |what: &str| Err(CaError::BadRequest(format!("invalid session request: {what}")));
    if !valid_session_id(&req.session_id) {
        return bad("session_id must be 32 lowercase hex characters");
    }
    let Ok(serial) = req.cert_serial.parse::<u64>() else { return bad("cert_serial must be a decimal number") };
    if !valid_device(&req.device) {
        return bad("device");
    }
    if req.client_ip.parse::<std::net::IpAddr>().is_err() {
        return bad("client_ip must be an IP address");
    }
    match req.mode {
        SessionMode::Jump => {
            if req.login.is_some() || req.session_public_key.is_some() {
                return bad("jump mode takes no login and no session key");
            }
            if req.port == Some(0) {
                return bad("port");
            }
            Ok((serial, req.port.unwrap_or(22)))
        }
        SessionMode::Terminated | SessionMode::Console => {
            if !req.login.as_deref().is_some_and(valid_login) {
                return bad("login");
            }
            if req.session_public_key.is_none() {
                return bad("session_public_key is required");
            }
            if req.port.is_some_and(|p| p != 22) {
                return bad("only jump mode chooses a port");
            }
            Ok((serial, 22))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_logins_devices() {
        assert!(valid_session_id("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "g123456789abcdef0123456789abcdef",
        ] {
            assert!(!valid_session_id(bad), "{bad}");
        }
        assert!(valid_login("root") && valid_login("_svc") && valid_login("a.b-c_1"));
        assert!(!valid_login("Root") && !valid_login("-x") && !valid_login("") && !valid_login("a b"));
        assert!(valid_device("pve01") && valid_device("10.0.0.5") && valid_device("fe80::1"));
        assert!(!valid_device("") && !valid_device("a/b") && !valid_device("a b"));
    }
}
