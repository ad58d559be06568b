//! A device's details page: everything the console user needs before opening one.
//!
//! Guarantees:
//! - Details exist only for a device the caller's own device list holds (the same
//!   decision as `GET /v1/console/devices`); any other name, known or not, is the same
//!   404, so the page cannot be used to probe the inventory. Those who may read the
//!   inventory (`nodes.manage`/`audit.read`) see every device's page, each saying why
//!   they open no console where they cannot.
//! - What others may do is shown only to those who may read the policy: a console user
//!   sees their own roles; `policy.manage`/`audit.read` see every role targeting the
//!   device and who holds it.
//! - Sessions are the caller's own unless they may list everyone's
//!   (`audit.read`/`sessions.kill`, as `GET /v1/admin/sessions`, which is here too).

use super::Sessions;
use crate::error::CaError;
use crate::service::Caller;
use crate::service::admin::{AuditFilter, search_audit};
use portcullis_policies::{Device, Identity, Policy, Purpose, proof};
use portcullis_proto::NodeRecord;
use portcullis_proto::console::{
    ConsoleDevice, DeviceAccess, DeviceDetails, DeviceNode, DeviceRule, DeviceSession, HostKeyFingerprint,
};
use std::cmp::Reverse;

/// Closed sessions shown (live ones are all shown).
const RECENT_CLOSED: u32 = 20;

impl Sessions {
    /// `GET /v1/console/devices/{name}`.
    pub async fn device_details(&self, caller: &Caller, name: &str) -> Result<DeviceDetails, CaError> {
        let policy = self.core.policy();
        let who = &caller.identity;
        let inventory = policy.authorize::<proof::InventoryRead>(who).ok();
        let listed = self.device_list(caller, inventory.as_ref()).await?.into_iter().find(|d| d.name == name);
        let device = listed.ok_or(CaError::NotFound("device"))?;
        let (node, as_policy_sees_it) = match device.guest {
            None => {
                let node = self.core.store.node(name).await?.ok_or(CaError::NotFound("device"))?;
                let seen = self.core.device(&node);
                (Some(node), seen)
            }
            Some(_) => {
                let guests = self.proxmox.guest_devices().await?;
                let seen = guests.into_iter().map(|(_, d)| d).find(|d| d.name == name);
                (None, seen.ok_or(CaError::NotFound("device"))?)
            }
        };
        let inventory = match &node {
            Some(node) => Some(self.discovery.read_inventory(node.clone()).await?)
                .filter(|v| !v.facts.is_empty() || !v.history.is_empty() || v.last_run_at.is_some()),
            None => None,
        };
        let access_complete = policy.authorize::<proof::PolicyRead>(who).is_ok();
        // A `sessions.kill` whose role has targets sees everyone's sessions only on the
        // devices those match (`audit.read` sees them everywhere).
        let everyone = policy.authorize::<proof::SessionsRead>(who).ok().filter(|g| g.covers(&as_policy_sees_it));
        let sessions_of_everyone = everyone.is_some();
        let mut sessions = self.device_sessions(&device, who, sessions_of_everyone).await?;
        // Another machine that held this name before does not show here: others' sessions
        // count from when the node was registered under it, unless the grant holds
        // everywhere (`Core::covers`, as the live-session list and kill decide).
        if let (Some(grant), Some(_)) = (&everyone, &node) {
            let mut seen = std::collections::HashMap::new();
            let mut kept = Vec::with_capacity(sessions.len());
            for s in sessions {
                if s.user == who.username || self.core.covers_each(grant, &mut seen, &device.name, s.started_at).await?
                {
                    kept.push(s);
                }
            }
            sessions = kept;
        }
        Ok(DeviceDetails {
            node: node.map(node_summary),
            inventory,
            rules: deciding_rules(&policy, &as_policy_sees_it),
            access: access(&policy, who, &as_policy_sees_it, access_complete),
            access_complete,
            sessions,
            sessions_of_everyone,
            device,
        })
    }

    /// Live sessions first, then the most recent closed ones, each newest first.
    async fn device_sessions(
        &self,
        device: &ConsoleDevice,
        who: &Identity,
        everyone: bool,
    ) -> Result<Vec<DeviceSession>, CaError> {
        let shown = |user: &str| everyone || user == who.username;
        let mut live: Vec<DeviceSession> = (self.core.store.leases().await?.into_iter())
            .filter(|l| l.device == device.name && shown(&l.username))
            .map(|l| DeviceSession {
                session_id: l.session_id,
                user: l.username,
                login: l.login,
                mode: l.mode,
                client_ip: l.client_ip,
                started_at: l.opened_at,
                ended_at: None,
                reason: None,
                bytes_from_client: l.bytes_from_client,
                bytes_to_client: l.bytes_to_client,
            })
            .collect();
        live.sort_by_key(|s| Reverse(s.started_at));
        let closed = search_audit(
            &self.core.store,
            &AuditFilter {
                newest_first: true,
                event: Some("session_closed".to_owned()),
                user: (!everyone).then(|| who.username.clone()),
                device: Some(device.name.clone()),
                limit: RECENT_CLOSED,
                ..Default::default()
            },
        )
        .await?;
        live.extend(closed.into_iter().filter_map(|r| closed_session(&r.payload)).filter(|s| shown(&s.user)));
        Ok(live)
    }
}

fn node_summary(node: NodeRecord) -> DeviceNode {
    let host_keys = (node.host_keys.iter())
        .filter_map(|line| ssh_key::PublicKey::from_openssh(line).ok())
        .map(|key| HostKeyFingerprint {
            algorithm: key.algorithm().to_string(),
            fingerprint: portcullis_sshcert::fingerprint(key.key_data()),
        })
        .collect();
    DeviceNode {
        ssh_port: node.ssh_port_or_default(),
        kind: node.kind,
        vendor: node.vendor,
        os: node.os,
        sshd_version: node.sshd_version,
        partition: node.partition,
        host_keys,
    }
}

/// The rule deciding each purpose on the device (every one whose targets and scope hold
/// it, as one: `a+b`, as every decision takes it).
fn deciding_rules(policy: &Policy, device: &Device) -> Vec<DeviceRule> {
    [Purpose::SshLogin, Purpose::ConsoleAccess, Purpose::InventoryEnrichment]
        .into_iter()
        .map(|purpose| {
            let rule = policy.match_rule(purpose, device).ok();
            DeviceRule {
                purpose: purpose.as_str().to_owned(),
                rule: rule.as_ref().map(|r| r.name().to_owned()),
                recorded: rule.is_some_and(|r| r.recording().is_some()),
            }
        })
        .collect()
}

/// Roles targeting the device: the caller's own, or (`complete`) all with their holders.
fn access(policy: &Policy, who: &Identity, device: &Device, complete: bool) -> Vec<DeviceAccess> {
    let mine: Vec<&str> = policy.roles_of(who).into_iter().map(|r| r.name()).collect();
    (policy.roles())
        .filter(|r| r.targets().is_some_and(|q| q.matches(device)))
        .filter(|r| complete || mine.contains(&r.name()))
        .map(|r| DeviceAccess {
            role: r.name().to_owned(),
            logins: r.logins().iter().cloned().collect(),
            permissions: r.permissions().iter().map(|p| p.as_str().to_owned()).collect(),
            idle_secs: r.session().idle.as_secs(),
            absolute_secs: r.session().absolute.as_secs(),
            yours: mine.contains(&r.name()),
            holders: complete.then(|| {
                (policy.bindings().iter())
                    .filter(|(_, roles)| roles.contains(r.name()))
                    .map(|(subject, _)| subject.to_string())
                    .collect()
            }),
        })
        .collect()
}

/// A `session_closed` audit record as a row of the page.
fn closed_session(p: &serde_json::Value) -> Option<DeviceSession> {
    let text = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let number = |k: &str| p.get(k).and_then(serde_json::Value::as_u64);
    Some(DeviceSession {
        session_id: text("session_id")?,
        user: text("user")?,
        login: text("login"),
        mode: text("mode")?,
        client_ip: text("client_ip").unwrap_or_default(),
        started_at: number("started_at")?,
        ended_at: number("ended_at"),
        reason: text("reason"),
        bytes_from_client: number("bytes_from_client").unwrap_or(0),
        bytes_to_client: number("bytes_to_client").unwrap_or(0),
    })
}

impl Sessions {
    /// `GET /v1/admin/sessions`: every live session for `audit.read`; for a
    /// `sessions.kill` whose role has targets, those on the devices they match (the
    /// sessions it may kill), not prod's users, logins and addresses to the lab's.
    pub async fn live_sessions(
        &self,
        grant: &portcullis_policies::Grant<portcullis_policies::proof::SessionsRead>,
    ) -> Result<Vec<portcullis_proto::SessionInfo>, CaError> {
        let leases = self.core.store.leases().await?;
        let leases = self.core.covered(grant, leases, |l| (l.device.as_str(), l.opened_at)).await?;
        Ok(leases
            .into_iter()
            .map(|l| portcullis_proto::SessionInfo {
                session_id: l.session_id,
                bastion: l.bastion,
                user: l.username,
                device: l.device,
                agent: l.agent,
                login: l.login,
                mode: l.mode,
                rule: l.rule,
                role: l.role,
                client_ip: l.client_ip,
                opened_at: l.opened_at,
                heartbeat_at: l.heartbeat_at,
                absolute_deadline: l.absolute_deadline,
                kill_requested: l.kill_reason.is_some(),
                bytes_from_client: l.bytes_from_client,
                bytes_to_client: l.bytes_to_client,
            })
            .collect())
    }
}
