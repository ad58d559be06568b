//! The admission decision's pure parts: request shape, the policy check shared by open
//! and every heartbeat, and the permit the per-session certificate is built from.

use crate::error::CaError;
use portcullis_policies::{
    Device, HostKeyPolicy, Identity, Permission, Policy, Purpose, Role, Rule, SessionLimits, scoped_principal,
};
use portcullis_proto::bastion::{deny_reason as deny, *};
use portcullis_sshcert::Confirmed;
use portcullis_sshcert::authenticator::{NO_TOUCH_REQUIRED, VERIFY_REQUIRED};
use std::collections::BTreeSet;

/// Extensions a role may pass on to a per-session certificate (besides `permit-pty`).
pub(super) const FORWARDING_EXTENSIONS: [&str; 3] =
    ["permit-agent-forwarding", "permit-port-forwarding", "permit-X11-forwarding"];

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
    /// The role the session runs under (its name on the lease, its forwarding
    /// extensions on the session certificate): the first qualifying one by name — in
    /// terminated mode, the first whose touch and user verification the user's proof
    /// shows (see [`unconfirmed`]).
    pub(super) role: &'p Role,
    /// Every rule holding the device for this purpose, as one (`Policy::match_rule`).
    pub(super) rule: std::borrow::Cow<'p, Rule>,
    /// The strictest limits of *every* role that qualifies for this session, so adding
    /// a role (or a binding) can never loosen a session's idle, absolute or cap limits.
    pub(super) limits: SessionLimits,
}

pub use crate::validate::valid_session_id;

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
#[derive(Clone, Copy)]
pub(super) enum Basis<'a> {
    /// A user certificate: only roles that issue certificates and whose scoped principal
    /// for the login is on it count, so a session never exceeds the certificate.
    /// `confirmed` is what the user's key confirmed over the connection (terminated
    /// mode's proof; `None` in jump mode, where the node's sshd asks for it itself, and
    /// for a lease kept before it was recorded: taken as a plain key's). `held`: the
    /// role a live session runs under (at a heartbeat), which it keeps while it
    /// qualifies.
    Certificate { principals: &'a BTreeSet<String>, confirmed: Option<Confirmed>, held: Option<&'a str> },
    /// A browser-console ticket: only roles holding `devices.console.open` count.
    Ticket,
}

/// Who a session is decided for. A group grants only while the credential recorded it
/// and the user still has it (`granting`: a session never gains access it was not opened
/// with, and loses what a removed group gave); a deny statement applies for a group
/// recorded *or* joined since (`denied`): adding someone to a group a deny names (an
/// off-boarding `frozen`) must end what their certificate or ticket allowed, at once,
/// not when it expires. Until 2026-12-06 denies saw only the shrunken list (found in
/// review).
pub(super) struct Asker {
    pub(super) granting: Identity,
    pub(super) denied: Identity,
}

impl Asker {
    /// `recorded`: the groups at issuance or ticket time; `current`: the groups the user
    /// has now, where the CA knows them (a local user's row, the directory's last
    /// answer; an identity provider cannot be asked again).
    pub(super) fn new(username: &str, recorded: &[String], current: Option<&[String]>) -> Asker {
        let person = |groups| Identity { username: username.to_owned(), groups, ..Default::default() };
        let granting = recorded.iter().filter(|g| current.is_none_or(|now| now.contains(g))).cloned().collect();
        let denied = recorded.iter().chain(current.unwrap_or_default()).cloned().collect();
        Asker { granting: person(granting), denied: person(denied) }
    }
}

impl From<Identity> for Asker {
    /// Groups known once, as they are now.
    fn from(who: Identity) -> Asker {
        Asker { denied: who.clone(), granting: who }
    }
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
    who: &Asker,
    basis: Basis<'_>,
    device: &Device,
    mode: SessionMode,
    login: Option<&str>,
    port: u16,
) -> Result<Admission<'p>, Denial> {
    let denies = policy.denies_of(&who.denied);
    let not_authorized = || denial(deny::NOT_AUTHORIZED, "no role grants this login on this device");
    if mode == SessionMode::Console
        && (policy.holds(&who.granting, Permission::DevicesConsoleOpen).is_err()
            || denies.iter().any(|d| d.removes_permission(Permission::DevicesConsoleOpen)))
    {
        return Err(denial(deny::NOT_AUTHORIZED, "the browser console is not granted to you"));
    }
    let qualifying: Vec<&Role> = match basis {
        Basis::Certificate { principals: cert_principals, .. } => {
            if denies.iter().any(|d| d.removes_permission(Permission::CertsIssue)) {
                return Err(not_authorized());
            }
            let usable = |role: &Role, login: &str| {
                role.logins().contains(login)
                    && cert_principals.contains(&scoped_principal(role.name(), login))
                    && !denies.iter().any(|d| d.removes_login(login))
            };
            let granted = policy.roles_of(&who.granting);
            if mode == SessionMode::Jump && outlives_policy(policy, &granted, cert_principals, device, &usable) {
                return Err(denial(
                    deny::NOT_AUTHORIZED,
                    "your certificate carries a login on this device you may no longer use; get a new one \
                     (`portcullis login`)",
                ));
            }
            granted
                .into_iter()
                .filter(|r| r.has_permission(Permission::CertsIssue))
                .filter(|r| r.targets().is_some_and(|q| q.matches(device)))
                .filter(|r| match (mode, login) {
                    // Jump mode is end to end: the node's sshd enforces the certificate's
                    // critical options, but only on its SSH port. A role that restricts
                    // its certificates (force-command) opens no raw TCP anywhere else.
                    (SessionMode::Jump, _) => {
                        (port == device.ssh_port_or_default() || r.critical_options().is_empty())
                            && r.logins().iter().any(|l| usable(r, l))
                    }
                    // The per-session certificate carries no critical options, so a role
                    // that restricts its certificates (force-command, source-address) can
                    // only be used end to end, in jump mode, where the user's own
                    // certificate carries them. `verify-required` the CA checks itself
                    // (below), on the user's proof of this connection — which only a
                    // terminated session has.
                    (SessionMode::Terminated, Some(login)) => enforced_here(r) && usable(r, login),
                    (_, Some(login)) => r.critical_options().is_empty() && usable(r, login),
                    (_, None) => false,
                })
                .collect()
        }
        // A ticket opens a console only, for the login it names.
        Basis::Ticket => match (mode, login) {
            (SessionMode::Console, Some(login)) if !denies.iter().any(|d| d.removes_login(login)) => {
                console_roles(policy, &who.granting, device)
                    .into_iter()
                    .filter(|r| r.logins().contains(login))
                    .collect()
            }
            _ => Vec::new(),
        },
    };
    let first = *qualifying.first().ok_or_else(not_authorized)?;
    let role = match (mode, basis) {
        (SessionMode::Terminated, Basis::Certificate { confirmed, held, .. }) => {
            let confirmed = confirmed.unwrap_or(Confirmed::of(None));
            // A live session stays on the role it opened under (whose forwarding its
            // onward certificate carries) while that role qualifies, so that role's asks
            // must still be met: one that starts asking for a PIN ends the sessions
            // whose proof showed none, whatever other role would have admitted them.
            // A held role that no longer qualifies ends the session, even when another
            // role would admit it: the onward certificate and the bastion's forwarding
            // flags are that role's, and another's would not grant them.
            let choices: Vec<&Role> = match held {
                Some(h) => vec![*qualifying.iter().find(|r| r.name() == h).ok_or_else(not_authorized)?],
                None => qualifying.clone(),
            };
            match choices.iter().find(|r| unconfirmed(r, confirmed).is_none()) {
                Some(role) => *role,
                None => {
                    let asked = choices.first().and_then(|r| unconfirmed(r, confirmed));
                    return Err(asked.unwrap_or_else(not_authorized));
                }
            }
        }
        _ => first,
    };
    let limits = SessionLimits::strictest(qualifying.iter().copied()).unwrap_or(*role.session());
    let rule = policy.match_rule(purpose_of(mode), device).map_err(|_| {
        denial(
            deny::RULE_MISMATCH,
            "no scoped rule matched this device: a rule for this kind of session must target it and hold its \
                 agent, gateway or partition in its scope",
        )
    })?;
    // Jump mode names its port; the other modes dial the node's SSH port, which the
    // rule's `allowed_ports` must hold too (the seed's console rule lists port 22: a
    // node moved to another port is not reached under it).
    if !rule.permits_port(device, port) {
        return Err(denial(deny::PORT_NOT_ALLOWED, "this port is not allowed on this device"));
    }
    Ok(Admission { role, rule, limits })
}

/// Whether `principals` (a user certificate's) hold one the node's principals files list
/// for `device` — a role that covers it — but that its user, holding the roles `held`,
/// may no longer use there (`usable`): a deny on its login, or a role lost, since the
/// certificate was issued.
///
/// Jump mode is end to end: the node's sshd takes any listed principal the certificate
/// carries, whatever login the user asks for, and the files name every role's principals
/// whatever the denies say (those are per identity, enforced at issuance). So a jump
/// session is admitted, and stays, only while the certificate opens nothing the policy
/// no longer grants; terminated mode needs no such check, its onward certificate
/// carries the one login admitted.
fn outlives_policy(
    policy: &Policy,
    held: &[&Role],
    principals: &BTreeSet<String>,
    device: &Device,
    usable: &dyn Fn(&Role, &str) -> bool,
) -> bool {
    // The certificate's few principals, not every role's: this runs per jump session at
    // every heartbeat.
    let listed: Vec<(&Role, &str)> = principals
        .iter()
        .filter_map(|p| policy.principal_owner(p))
        .filter(|(r, _)| r.has_permission(Permission::CertsIssue) && r.targets().is_some_and(|q| q.matches(device)))
        .collect();
    listed.into_iter().any(|(r, l)| !held.iter().any(|h| h.name() == r.name()) || !usable(r, l))
}

/// Whether every critical option of `role` is one the CA can enforce for a terminated
/// session without the node: only `verify-required` (see [`unconfirmed`]).
fn enforced_here(role: &Role) -> bool {
    role.critical_options().keys().all(|o| o == VERIFY_REQUIRED)
}

/// What `role` asks of the user's key that a terminated session's proof did not
/// confirm. The onward certificate carries neither to the node, so the CA stands in for
/// the node's sshd, which would read them from the role's principals line: a touch
/// unless the role waives it (`no-touch-required`; a certificate carries every role's
/// extensions, so the certificate's waiver is not the role's), user verification under
/// `verify-required` (which a role may have gained since the certificate was issued).
/// Held against the same proof at open and at every heartbeat.
fn unconfirmed(role: &Role, confirmed: Confirmed) -> Option<Denial> {
    if !confirmed.touched && !role.extensions().contains(NO_TOUCH_REQUIRED) {
        return Some(denial(
            deny::CONNECTION_PROOF_INVALID,
            "your security key signed without a touch, which your role on this device requires",
        ));
    }
    if !confirmed.verified && role.critical_options().contains_key(VERIFY_REQUIRED) {
        return Some(denial(
            deny::CONNECTION_PROOF_INVALID,
            "your role on this device requires your security key's user verification (PIN): use a key made with \
             `ssh-keygen -t ed25519-sk -O verify-required` and certified by `portcullis login --key`",
        ));
    }
    None
}

pub(super) fn host_key_check(policy: HostKeyPolicy) -> HostKeyCheck {
    match policy {
        HostKeyPolicy::KnownHosts => HostKeyCheck::KnownHosts,
        HostKeyPolicy::TrustOnFirstUse => HostKeyCheck::TrustOnFirstUse,
        HostKeyPolicy::DangerSkipVerify => HostKeyCheck::DangerSkipVerify,
    }
}

/// Checks the request's shape; returns the certificate serial and the port jump mode
/// asked for (`None`: the node's SSH port).
pub(super) fn validate_open(req: &SessionOpenRequest) -> Result<(u64, Option<u16>), CaError> {
    let bad = |what: &str| Err(CaError::BadRequest(format!("invalid session request: {what}")));
    if !valid_session_id(&req.session_id) {
        return bad("session_id must be 32 lowercase hex characters");
    }
    let Ok(serial) = req.cert_serial.parse::<u64>() else { return bad("cert_serial must be a decimal number") };
    if req.certificate_digest.as_deref().is_some_and(|d| d.len() > 64 || !d.starts_with("SHA256:")) {
        return bad("certificate_digest must be SHA256:<base64>");
    }
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
            Ok((serial, req.port))
        }
        SessionMode::Terminated | SessionMode::Console => {
            if !req.login.as_deref().is_some_and(valid_login) {
                return bad("login");
            }
            if req.session_public_key.is_none() {
                return bad("session_public_key is required");
            }
            if req.port.is_some() {
                return bad("only jump mode chooses a port");
            }
            Ok((serial, None))
        }
    }
}

#[cfg(test)]
mod tests;
