//! The CA's `/metrics`: counters kept in memory by the service as things are committed,
//! and gauges read from the shared database at scrape time.

use super::Ca;
use crate::audit;
use portcullis_proto::metrics::{Exposition, Histogram, LabelledCounter, labels};
use std::collections::BTreeMap;

/// `/metrics` counters kept in memory (per replica; Prometheus sums them), each
/// counted once what it counts is committed.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) certificates_issued: std::sync::atomic::AtomicU64,
    /// From the request to the stored, audited certificate.
    pub(super) issuance: Histogram,
    /// By identity source (`local`, `ldap`, `oidc`).
    pub(super) sign_ins: LabelledCounter,
    /// By our refusal code (`login_failed:bad_credentials`, …): a fixed vocabulary.
    pub(super) refusals: LabelledCounter,
    /// By mode.
    pub(super) sessions_opened: LabelledCounter,
    /// By mode and reason (the reclaimed leases of quiet bastions as `lease_lost`).
    pub(super) sessions_closed: LabelledCounter,
    /// By mode and deny reason (`cap_reached` among them).
    pub(super) sessions_denied: LabelledCounter,
    /// By direction (`from_client`, `to_client`), as bastions report at close.
    pub(super) bytes_relayed: LabelledCounter,
}

impl Ca {
    /// The CA's counters in the Prometheus text format (`GET /metrics` on the metrics
    /// listener). Counts only: no names, addresses or anything a caller sent (refusal
    /// reasons are our own codes).
    pub async fn metrics_text(&self) -> String {
        let mut e = Exposition::default();
        let c = &self.core.counters;
        let busy: Vec<_> =
            self.identity.work_limits().iter().map(|w| (labels(&[("work", w.name())]), w.refused())).collect();
        e.family(
            "portcullis_ca_busy_refusals_total",
            "counter",
            "Unauthenticated requests refused because too many of their kind were being worked on.",
            busy,
        );
        let issued = c.certificates_issued.load(std::sync::atomic::Ordering::Relaxed);
        e.family(
            "portcullis_ca_certificates_issued_total",
            "counter",
            "User certificates issued (each stored and audited before it was answered).",
            [(String::new(), issued)],
        );
        e.histogram(
            "portcullis_ca_issuance_seconds",
            "Time from a certificate request to its stored, audited certificate.",
            &c.issuance,
        );
        e.histogram(
            "portcullis_ca_audit_write_seconds",
            "Time to append to the audit chain (one record, or one batch of the issuance writer).",
            &audit::WRITES,
        );
        e.family(
            "portcullis_ca_sign_ins_total",
            "counter",
            "Successful sign-ins by identity source.",
            c.sign_ins.samples(),
        );
        e.family(
            "portcullis_ca_refusals_total",
            "counter",
            "Refused unauthenticated requests by reason (recorded or only counted in the audit trail).",
            c.refusals.samples(),
        );
        e.family(
            "portcullis_ca_sessions_opened_total",
            "counter",
            "Sessions admitted, by mode.",
            c.sessions_opened.samples(),
        );
        e.family(
            "portcullis_ca_sessions_closed_total",
            "counter",
            "Sessions closed, by mode and reason (lease_lost: reclaimed from a quiet bastion).",
            c.sessions_closed.samples(),
        );
        e.family(
            "portcullis_ca_sessions_denied_total",
            "counter",
            "Session opens refused, by mode and reason (cap_reached: a concurrency cap).",
            c.sessions_denied.samples(),
        );
        e.family(
            "portcullis_ca_bytes_relayed_total",
            "counter",
            "Bytes relayed by closed sessions, by direction, as their bastions reported.",
            c.bytes_relayed.samples(),
        );
        // Gauges read from the shared database: the same on every replica.
        let leases = self.core.store.leases().await.unwrap_or_default();
        let mut live: BTreeMap<&str, u64> = BTreeMap::new();
        for lease in &leases {
            *live.entry(lease.mode.as_str()).or_default() += 1;
        }
        e.family(
            "portcullis_ca_sessions_live",
            "gauge",
            "Bastion session leases held (all bastions), by mode.",
            live.into_iter().map(|(mode, n)| (labels(&[("mode", mode)]), n)),
        );
        if let Ok((version, _)) = self.core.store.krl_version().await {
            e.family(
                "portcullis_ca_krl_version",
                "gauge",
                "Version of the revocation list.",
                [(String::new(), version)],
            );
        }
        let cutoff = self.core.now().saturating_sub(portcullis_proto::bastion::LEASE_TTL_SECS);
        if let Ok(bastions) = self.core.store.services(portcullis_proto::bastion::ServiceKind::Bastion.as_str()).await {
            let live = bastions.iter().filter(|b| b.last_seen.is_some_and(|t| t >= cutoff));
            let agents: std::collections::BTreeSet<&str> =
                live.flat_map(|b| b.agents.iter().map(String::as_str)).collect();
            e.family(
                "portcullis_ca_agent_links",
                "gauge",
                "Edge agents connected to at least one live bastion (as bastions last heartbeated).",
                [(String::new(), agents.len() as u64)],
            );
        }
        e.finish()
    }
}
