//! Turns raw serde items into validated model types, reporting every problem found in an
//! item (not just the first) against the span of the offending field.

use std::collections::BTreeSet;
use std::time::Duration;

use toml::Spanned;

use super::fields::{
    EXTENSIONS, accounts, critical_options, duration, groups, is_login, item_name, session, subjects, targets,
};
use super::raw::{RawDeny, RawRole, RawRule};
use super::{Errors, File};
use crate::model::{
    AuthMethod, Credential, DEFAULT_PROXMOX_API_PORT, DenyStatement, Provider, Purpose, Recording, Role, Rule,
    SECRET_NAME_RULE, Scope, valid_secret_name,
};
use crate::permission::Permission;

const DEFAULT_TTL: Duration = Duration::from_secs(8 * 3600);
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TIMEOUT_MS: u64 = 120_000;

pub(super) fn role(f: &File<'_>, errs: &mut Errors, raw: RawRole) -> Option<Role> {
    let before = errs.count();
    let name = item_name(f, errs, &raw.name, "role");
    for l in raw.logins.iter().filter(|l| !is_login(l.get_ref())) {
        errs.at(f, l.span().start, format!("invalid login {:?} (expected ^[a-z_][a-z0-9_.-]{{0,31}}$)", l.get_ref()));
    }
    // The discovery account runs one fixed command under its own certificates (the
    // seed: no shell, no pty); a role granting its login would make it one to log in to.
    for l in raw.logins.iter().filter(|l| l.get_ref() == crate::DISCOVERY_LOGIN) {
        errs.at(f, l.span().start, format!("the login {:?} is reserved for hardware discovery", l.get_ref()));
    }
    let logins: BTreeSet<String> = raw.logins.iter().map(|l| l.get_ref().clone()).collect();
    let mut permissions = BTreeSet::new();
    for p in &raw.permissions {
        match p.get_ref().parse::<Permission>() {
            Ok(p) => {
                permissions.insert(p);
            }
            Err(e) => errs.at(f, p.span().start, e.to_string()),
        }
    }
    // Targets decide where certificates and consoles reach (with logins) and where
    // the administrative permissions they scope hold (`sessions.kill`,
    // `recordings.read`, `nodes.manage`), so a role without logins may have them for those.
    let scopes_something = permissions.iter().any(|p: &Permission| p.scoped_by_targets() && p.is_administrative());
    let targets = match (&raw.targets, logins.is_empty()) {
        (Some(t), false) => targets(f, errs, t),
        (None, false) => {
            errs.at(f, raw.name.span().start, format!("role `{name}` has logins but no `targets`"));
            None
        }
        (Some(t), true) if scopes_something => targets(f, errs, t),
        (Some(t), true) => {
            errs.at(
                f,
                t.span().start,
                "`targets` has no effect on a role without `logins` or a permission they scope \
                 (sessions.kill, recordings.read, nodes.manage)",
            );
            None
        }
        (None, true) => None,
    };
    let mut max_cert_ttl = DEFAULT_TTL;
    if let Some(s) = &raw.max_cert_ttl
        && let Some(d) = duration(f, errs, s, "max_cert_ttl")
    {
        if d > MAX_TTL {
            errs.at(f, s.span().start, "`max_cert_ttl` must be at most 7 days");
        }
        max_cert_ttl = d;
    }
    for e in raw.extensions.iter().filter(|e| !EXTENSIONS.contains(&e.get_ref().as_str())) {
        errs.at(f, e.span().start, format!("unknown extension {:?}; allowed: {}", e.get_ref(), EXTENSIONS.join(", ")));
    }
    let extensions = raw.extensions.iter().map(|e| e.get_ref().clone()).collect();
    let critical_options = raw.critical_options.map(|c| critical_options(f, errs, c)).unwrap_or_default();
    let session = raw.session.map(|s| session(f, errs, s)).unwrap_or_default();
    (errs.count() == before).then_some(Role {
        name,
        logins,
        targets,
        permissions,
        max_cert_ttl,
        extensions,
        critical_options,
        session,
    })
}

pub(super) fn deny(f: &File<'_>, errs: &mut Errors, raw: RawDeny) -> Option<DenyStatement> {
    let before = errs.count();
    let name = item_name(f, errs, &raw.name, "deny");
    let users = accounts(f, errs, &raw.users);
    let groups = groups(f, errs, &raw.groups);
    if users.is_empty() && groups.is_empty() {
        errs.at(f, raw.name.span().start, format!("deny `{name}` names no users or groups"));
    }
    for l in raw.logins.iter().filter(|l| l.get_ref() != "*" && !is_login(l.get_ref())) {
        errs.at(f, l.span().start, format!("invalid login {:?} (use \"*\" for every login)", l.get_ref()));
    }
    for p in raw.permissions.iter().filter(|p| p.get_ref() != "*") {
        if let Err(e) = p.get_ref().parse::<Permission>() {
            errs.at(f, p.span().start, e.to_string());
        }
    }
    if raw.logins.is_empty() && raw.permissions.is_empty() {
        errs.at(f, raw.name.span().start, format!("deny `{name}` removes no logins or permissions"));
    }
    (errs.count() == before).then(|| DenyStatement {
        name,
        users,
        groups,
        logins: raw.logins.into_iter().map(Spanned::into_inner).collect(),
        permissions: raw.permissions.into_iter().map(Spanned::into_inner).collect(),
    })
}

pub(super) fn rule(f: &File<'_>, errs: &mut Errors, raw: RawRule) -> Option<Rule> {
    let before = errs.count();
    let name = item_name(f, errs, &raw.name, "rule");
    let targets = targets(f, errs, &raw.targets);
    let credential = credential(f, errs, &raw);
    let recording = recording(f, errs, &raw);
    if let (Some(_), Some(ports)) = (&credential, &raw.allowed_ports) {
        errs.at(f, ports.span().start, "`allowed_ports` is for SSH rules; a credential rule names its `api_port`");
    }
    let scope_span = raw.scope.span();
    let rs = raw.scope.into_inner();
    let scope = Scope {
        partitions: subjects(f, errs, &rs.partitions, "partition"),
        agents: subjects(f, errs, &rs.agents, "agent"),
        gateways: subjects(f, errs, &rs.gateways, "gateway"),
    };
    if scope.partitions.is_empty() && scope.agents.is_empty() && scope.gateways.is_empty() {
        errs.at(
            f,
            scope_span.start,
            "`scope` is empty; an empty scope never means \"any scope\" — list partitions, agents or gateways",
        );
    }
    let mut timeout = Duration::from_millis(10_000);
    if let Some(t) = raw.timeout_ms {
        let ms = *t.get_ref();
        if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
            errs.at(f, t.span().start, format!("`timeout_ms` must be between 1 and {MAX_TIMEOUT_MS}"));
        }
        timeout = Duration::from_millis(ms);
    }
    let mut allowed_ports = None;
    if let Some(ports) = raw.allowed_ports {
        if ports.get_ref().is_empty() {
            errs.at(f, ports.span().start, "`allowed_ports` must not be empty");
        }
        for p in ports.get_ref().iter().filter(|p| *p.get_ref() == 0) {
            errs.at(f, p.span().start, "port 0 is not a valid port");
        }
        allowed_ports = Some(ports.into_inner().into_iter().map(Spanned::into_inner).collect());
    }
    let mut fresh_auth_within = None;
    if let Some(s) = &raw.fresh_auth_within {
        if !matches!(raw.purpose, Purpose::SshLogin | Purpose::ConsoleAccess) {
            errs.at(f, s.span().start, "`fresh_auth_within` is for `ssh_login` and `console_access` rules");
        }
        fresh_auth_within = duration(f, errs, s, "fresh_auth_within");
    }
    let targets = targets?;
    (errs.count() == before).then_some(Rule {
        name,
        purpose: raw.purpose,
        targets,
        scope,
        host_key_policy: raw.host_key_policy,
        timeout,
        allowed_ports,
        idle_counts: raw.idle_counts,
        fresh_auth_within,
        recording,
        credential,
    })
}

/// The recording part of a rule: `record = true` turns it on (only on rules whose
/// sessions have a terminal: `ssh_login`, `console_access`); the other `record_*` keys
/// need it, so a `record_input = true` on a rule that records nothing is an error, not a
/// silent no-op.
fn recording(f: &File<'_>, errs: &mut Errors, raw: &RawRule) -> Option<Recording> {
    let on = raw.record.as_ref().is_some_and(|r| *r.get_ref());
    if let Some(r) = raw.record.as_ref().filter(|_| on)
        && !matches!(raw.purpose, Purpose::SshLogin | Purpose::ConsoleAccess)
    {
        errs.at(f, r.span().start, "`record` is for `ssh_login` and `console_access` rules");
    }
    let extras = [
        raw.record_input.as_ref().map(|v| v.span().start),
        raw.record_max_mib.as_ref().map(|v| v.span().start),
        raw.record_over_limit.as_ref().map(|v| v.span().start),
    ];
    if !on {
        if let Some(at) = extras.into_iter().flatten().next() {
            errs.at(f, at, "`record_input`, `record_max_mib` and `record_over_limit` need `record = true`");
        }
        return None;
    }
    let mib = raw.record_max_mib.as_ref().map_or(Recording::DEFAULT_MAX_MIB, |m| *m.get_ref());
    if let Some(m) = raw.record_max_mib.as_ref().filter(|_| !(1..=Recording::MAX_MIB).contains(&mib)) {
        errs.at(f, m.span().start, format!("`record_max_mib` must be between 1 and {}", Recording::MAX_MIB));
    }
    Some(Recording {
        input: raw.record_input.as_ref().is_some_and(|i| *i.get_ref()),
        max_bytes: mib.saturating_mul(1024 * 1024),
        over_limit: raw.record_over_limit.as_ref().map(|o| *o.get_ref()).unwrap_or_default(),
    })
}

/// The credential part of a rule. Credential rules and SSH rules never mix: a rule with an
/// API token is for `inventory_enrichment` only (so it can never open a console or a
/// login), and it needs all of `provider`, `auth_method` and `secret`.
fn credential(f: &File<'_>, errs: &mut Errors, raw: &RawRule) -> Option<Credential> {
    let first = [
        raw.provider.as_ref().map(|p| p.span().start),
        raw.auth_method.as_ref().map(|p| p.span().start),
        raw.secret.as_ref().map(|p| p.span().start),
        raw.api_port.as_ref().map(|p| p.span().start),
        raw.auto_discovery_trials.as_ref().map(|p| p.span().start),
        raw.strict_permissions.as_ref().map(|p| p.span().start),
    ]
    .into_iter()
    .flatten()
    .min()?;
    if raw.purpose != Purpose::InventoryEnrichment {
        errs.at(
            f,
            first,
            format!(
                "a `{}` rule carries no API credential: `provider`, `auth_method` and `secret` are for \
                 `inventory_enrichment` rules only",
                raw.purpose
            ),
        );
        return None;
    }
    let (Some(provider), Some(auth_method), Some(secret)) = (&raw.provider, &raw.auth_method, &raw.secret) else {
        errs.at(f, first, "a credential rule needs all of `provider`, `auth_method` and `secret`");
        return None;
    };
    match (provider.get_ref(), auth_method.get_ref()) {
        (Provider::Proxmox, AuthMethod::ProxmoxApiToken) => {}
    }
    let secret_name = secret.get_ref().clone();
    if !valid_secret_name(&secret_name) {
        errs.at(f, secret.span().start, format!("invalid secret name {secret_name:?} (allowed: {SECRET_NAME_RULE})"));
    }
    let trials = raw.auto_discovery_trials.as_ref().filter(|b| *b.get_ref());
    let strict = raw.strict_permissions.as_ref().is_some_and(|b| *b.get_ref());
    if let Some(trials) = trials
        && !strict
    {
        // The seed's condition for trials: the token is read-only. Strict is how a run
        // checks that, so a token tried on unknown devices is one every run has checked.
        errs.at(
            f,
            trials.span().start,
            "`auto_discovery_trials = true` needs `strict_permissions = true`: a token tried on candidate \
             devices must be one refused whenever it can do more than read",
        );
    }
    let api_port = raw.api_port.as_ref().map_or(DEFAULT_PROXMOX_API_PORT, |p| *p.get_ref());
    if api_port == 0 {
        errs.at(f, raw.api_port.as_ref().map_or(first, |p| p.span().start), "port 0 is not a valid port");
    }
    Some(Credential {
        provider: *provider.get_ref(),
        auth_method: *auth_method.get_ref(),
        secret: secret_name,
        api_port,
        auto_discovery_trials: trials.is_some(),
        strict_permissions: strict,
    })
}
