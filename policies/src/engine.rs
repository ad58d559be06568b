//! The decision functions. Guarantees:
//!
//! - Roles come only from bindings; deny statements only remove (a login, a permission,
//!   or everything with `"*"`), so adding a deny statement can never widen a decision.
//! - A certificate's lifetime and critical options are fixed from the candidate roles
//!   *before* deny statements are applied, so a deny cannot lengthen a certificate or drop
//!   a restriction.
//! - Roles that set `force-command` are used only when explicitly requested, so a normal
//!   shell certificate never inherits a discovery command.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::decision::{CertPermit, CertRequest, Deny, DenyReason, Grant, Held, Identity, PermitParts, Reach};
use crate::device::Device;
use crate::model::{DenyStatement, Provider, Purpose, Role, Rule, Subject};
use crate::permission::Permission;
use crate::policy::Policy;
use crate::principal::{PrincipalLine, node_principal, scoped_principal};
use crate::proof::Proof;

fn subject_matches(s: &Subject, who: &Identity) -> bool {
    match s {
        Subject::User(u) => *u == who.username,
        Subject::Group(g) => who.in_group(g),
    }
}

fn deny_applies(d: &DenyStatement, who: &Identity) -> bool {
    d.users.contains(&who.username) || d.groups.iter().any(|g| who.in_group(g))
}

impl Policy {
    /// Roles bound to the user or any of their groups, by name order, without repeats.
    pub fn roles_of(&self, who: &Identity) -> Vec<&Role> {
        let names: BTreeSet<&String> =
            self.bindings.iter().filter(|(s, _)| subject_matches(s, who)).flat_map(|(_, roles)| roles).collect();
        names.into_iter().filter_map(|n| self.roles.get(n)).collect()
    }

    /// Deny statements that apply to the identity, by name order.
    pub fn denies_of(&self, who: &Identity) -> Vec<&DenyStatement> {
        self.denies.values().filter(|d| deny_applies(d, who)).collect()
    }

    /// Whether `who` holds `perm` via some role and no deny statement removes it (a
    /// decision only: operations take the proof, [`Policy::authorize`]).
    pub fn holds(&self, who: &Identity, perm: Permission) -> Result<(), Deny> {
        let roles = self.roles_of(who);
        if roles.is_empty() {
            return Err(DenyReason::NoRoles.into());
        }
        if !roles.iter().any(|r| r.has_permission(perm)) {
            return Err(DenyReason::MissingPermission(perm).into());
        }
        if let Some(d) = self.denies_of(who).into_iter().find(|d| d.removes_permission(perm)) {
            return Err(DenyReason::DeniedByStatement(d.name.clone()).into());
        }
        Ok(())
    }

    /// The proof that `who` holds what `P` names (any one of its permissions), or why not
    /// (for the first of them).
    /// Every control-plane permission `who` holds, deny statements applied.
    pub fn permissions_of(&self, who: &Identity) -> BTreeSet<Permission> {
        Permission::ALL.iter().copied().filter(|p| self.holds(who, *p).is_ok()).collect()
    }

    /// Every control-plane permission `who` holds, with where it holds.
    pub fn held_by(&self, who: &Identity) -> Held {
        Held::new(self.permissions_of(who).into_iter().map(|p| (p, self.reach(who, p))).collect())
    }

    /// Where `perm`, which `who` holds, holds: everywhere if a role without targets grants
    /// it, else where one of the granting roles' targets match.
    fn reach(&self, who: &Identity, perm: Permission) -> Reach {
        let mut queries = Vec::new();
        for role in self.roles_of(who).into_iter().filter(|r| r.has_permission(perm)) {
            match role.targets() {
                None => return Reach::Everywhere,
                Some(q) => queries.push(q.clone()),
            }
        }
        Reach::Only(queries)
    }

    pub fn authorize<P: Proof>(&self, who: &Identity) -> Result<Grant<P>, Deny> {
        let mut first_refusal = None;
        for perm in P::ANY_OF {
            match self.holds(who, *perm) {
                Ok(()) => {
                    return Ok(Grant::new(&who.username, *perm, self.held_by(who), self.reach(who, *perm)));
                }
                Err(deny) => {
                    first_refusal.get_or_insert(deny);
                }
            }
        }
        Err(first_refusal.unwrap_or_else(|| DenyReason::NoRoles.into()))
    }

    /// Roles a certificate request draws on, before deny statements.
    fn candidate_roles<'p>(&'p self, held: &[&'p Role], req: &CertRequest) -> Result<Vec<&'p Role>, Deny> {
        let Some(names) = &req.roles else {
            return Ok(held
                .iter()
                .copied()
                .filter(|r| r.has_permission(Permission::CertsIssue) && !r.logins.is_empty())
                .filter(|r| !r.has_force_command())
                .collect());
        };
        let mut out: BTreeMap<&str, &Role> = BTreeMap::new();
        for name in names {
            let Some(role) = self.roles.get(name) else {
                return Err(DenyReason::UnknownRole(name.clone()).into());
            };
            if !held.iter().any(|h| h.name == role.name) {
                return Err(DenyReason::RoleNotHeld(name.clone()).into());
            }
            if !role.has_permission(Permission::CertsIssue) {
                return Err(DenyReason::MissingPermission(Permission::CertsIssue).into());
            }
            if role.logins.is_empty() {
                return Err(DenyReason::NoLogins.into());
            }
            out.insert(&role.name, role);
        }
        Ok(out.into_values().collect())
    }

    /// Decides the contents of a user certificate.
    pub fn issue_user_cert(&self, who: &Identity, req: &CertRequest) -> Result<CertPermit, Deny> {
        if req.ttl.is_some_and(|t| t.is_zero()) {
            return Err(DenyReason::InvalidTtl.into());
        }
        let held = self.roles_of(who);
        if held.is_empty() {
            return Err(DenyReason::NoRoles.into());
        }
        let candidates = self.candidate_roles(&held, req)?;
        if candidates.is_empty() {
            let may_issue = held.iter().any(|r| r.has_permission(Permission::CertsIssue));
            return Err(if may_issue {
                DenyReason::NoLogins
            } else {
                DenyReason::MissingPermission(Permission::CertsIssue)
            }
            .into());
        }

        // Lifetime and restrictions come from every candidate, before denies.
        let role_cap = candidates.iter().map(|r| r.max_cert_ttl).min().unwrap_or(Duration::ZERO);
        let ttl = req.ttl.map_or(role_cap, |t| t.min(role_cap));
        let mut options: Option<&BTreeMap<String, String>> = None;
        for r in candidates.iter().filter(|r| !r.critical_options.is_empty()) {
            match options {
                Some(o) if *o != r.critical_options => {
                    return Err(DenyReason::ConflictingCriticalOptions.into());
                }
                _ => options = Some(&r.critical_options),
            }
        }

        let denies = self.denies_of(who);
        if let Some(d) = denies.iter().find(|d| d.removes_permission(Permission::CertsIssue)) {
            return Err(DenyReason::DeniedByStatement(d.name.clone()).into());
        }
        let mut principals = BTreeSet::new();
        let mut extensions = BTreeSet::new();
        let mut roles = Vec::new();
        let mut first_denier: Option<&str> = None;
        for r in &candidates {
            let mut contributes = false;
            for login in &r.logins {
                match denies.iter().find(|d| d.removes_login(login)) {
                    Some(d) => {
                        first_denier.get_or_insert(&d.name);
                    }
                    None => {
                        principals.insert(scoped_principal(&r.name, login));
                        contributes = true;
                    }
                }
            }
            if contributes {
                extensions.extend(r.extensions.iter().cloned());
                roles.push(r.name.clone());
            }
        }
        let empty_reason = || -> Deny {
            first_denier.map_or(DenyReason::NoLogins, |d| DenyReason::DeniedByStatement(d.to_owned())).into()
        };
        CertPermit::new(PermitParts {
            username: who.username.clone(),
            principals,
            ttl,
            extensions,
            critical_options: options.cloned().unwrap_or_default(),
            roles,
        })
        .ok_or_else(empty_reason)
    }

    /// What a node's `AuthorizedPrincipalsFile`s should list: per login, the scoped
    /// principals of every certificate-issuing role whose targets match the device, plus
    /// the device's own [`node_principal`] for that login (what the bastion's per-session
    /// certificates carry). Deny statements are per identity and so are enforced at
    /// issuance (and at session admission), not here.
    pub fn node_principals(&self, device: &Device) -> BTreeMap<String, BTreeSet<String>> {
        self.node_principal_lines(device)
            .into_iter()
            .map(|(login, lines)| (login, lines.into_iter().map(|l| l.principal).collect()))
            .collect()
    }

    /// [`Policy::node_principals`] as file lines with the options that confine each
    /// role to what it grants (see [`PrincipalLine`]). The node principal's line allows a
    /// pty and what any role covering the node grants for that login: the CA decides
    /// each per-session certificate's extensions for the one role it admitted.
    pub fn node_principal_lines(&self, device: &Device) -> BTreeMap<String, Vec<PrincipalLine>> {
        let mut roles_by_login: BTreeMap<&str, Vec<&Role>> = BTreeMap::new();
        for r in self.roles.values() {
            let covers = r.targets.as_ref().is_some_and(|q| q.matches(device));
            if covers && r.has_permission(Permission::CertsIssue) {
                for login in &r.logins {
                    roles_by_login.entry(login).or_default().push(r);
                }
            }
        }
        roles_by_login
            .into_iter()
            .map(|(login, roles)| {
                let mut lines: Vec<PrincipalLine> = roles
                    .iter()
                    .map(|r| {
                        PrincipalLine::restricted(
                            scoped_principal(&r.name, login),
                            &r.extensions,
                            r.critical_options.keys(),
                        )
                    })
                    .collect();
                // A per-session certificate always has a pty; its forwarding comes from
                // the one role the session was admitted under.
                let pty = "permit-pty".to_owned();
                let session = std::iter::once(&pty).chain(roles.iter().flat_map(|r| &r.extensions));
                lines.push(PrincipalLine::restricted(node_principal(&device.name, login), session, []));
                // sshd takes the first line naming a principal of the certificate.
                lines.sort_by(|a, b| b.options.len().cmp(&a.options.len()).then_with(|| a.principal.cmp(&b.principal)));
                (login.to_owned(), lines)
            })
            .collect()
    }

    /// The first SSH rule (by name) for `purpose` whose targets match the device and whose
    /// scope includes its partition, agent and gateway. Credential rules are never
    /// returned: an API token opens no console and no login.
    ///
    /// The first by name decides, with the protections every other rule holding the
    /// device adds ([`Rule::with_protections_of`]): a broad rule that sorts first must
    /// not strip the recording or the step-up a `prod-recorded` rule asks for.
    pub fn match_rule(&self, purpose: Purpose, device: &Device) -> Result<Cow<'_, Rule>, Deny> {
        let matched = self.matching(device, |r| r.purpose == purpose && r.credential.is_none())?;
        let [first, rest @ ..] = matched.as_slice() else { return Err(DenyReason::NoMatchingRule.into()) };
        let adds = |r: &&Rule| r.recording.is_some() || r.fresh_auth_within.is_some();
        Ok(match rest.iter().any(adds) {
            false => Cow::Borrowed(*first),
            true => Cow::Owned(rest.iter().fold((*first).clone(), |rule, r| rule.with_protections_of(r))),
        })
    }

    /// The first credential rule (by name) for `provider` that matches the device and
    /// whose scope includes it.
    pub fn match_credential_rule(&self, provider: Provider, device: &Device) -> Result<&Rule, Deny> {
        let matched = self.matching(device, |r| r.credential.as_ref().is_some_and(|k| k.provider == provider))?;
        matched.first().copied().ok_or_else(|| DenyReason::NoMatchingRule.into())
    }

    /// The `eligible` rules whose targets and scope hold `device`, by name; never empty.
    fn matching(&self, device: &Device, eligible: impl Fn(&Rule) -> bool) -> Result<Vec<&Rule>, Deny> {
        let mut purpose_seen = false;
        let mut target_seen = false;
        let mut matched = Vec::new();
        for r in self.rules.values().filter(|r| eligible(r)) {
            purpose_seen = true;
            if !r.targets.matches(device) {
                continue;
            }
            target_seen = true;
            if r.scope.includes_device(device) {
                matched.push(r);
            }
        }
        if !matched.is_empty() {
            return Ok(matched);
        }
        Err(match (purpose_seen, target_seen) {
            (_, true) => DenyReason::OutOfScope,
            (true, false) => DenyReason::TargetMismatch,
            (false, false) => DenyReason::NoMatchingRule,
        }
        .into())
    }
}
