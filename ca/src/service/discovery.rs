//! Hardware discovery, the CA's half (purpose `inventory_enrichment`).
//!
//! Guarantees:
//! - Off unless configured (`[discovery] enabled`): a claim then hands out nothing, so no
//!   bastion connects to any node for discovery.
//! - A node is handed out only when a rule with purpose `inventory_enrichment` matches it,
//!   its agent is connected to the claiming bastion, and host keys are pinned for it
//!   (discovery never trusts on first use). Claiming is one conditional upsert, so a node
//!   is claimed once per interval across bastions and CA replicas.
//! - The certificate is built only from a [`DiscoveryPermit`], which only the claim makes:
//!   the discovery login's node principal for that node, `force-command`, no extensions.
//! - A report is accepted only for the open run of the bastion that claimed it. An
//!   unchanged node writes nothing but the run's own row: no history, no audit record.
//!   Changes are one history row plus `inventory_drift`; failures are `discovery_failed`.

use super::core::Core;
use super::permits::DiscoveryPermit;
use super::services::ServiceCaller;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::keys::KeyPurpose;
use crate::signer::sign_discovery_cert;
use crate::store;
use portcullis_discovery::{Change, HardwareFacts, drift, parse_report};
use portcullis_policies::{Grant, node_principal, proof};
use portcullis_proto::NodeRecord;
use portcullis_proto::discovery::*;
use portcullis_sshcert::parse_user_public_key;
use ssh_key::Algorithm;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// `[discovery]` in the CA configuration.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub enabled: bool,
    /// How often each node is discovered, and how often bastions ask.
    pub interval_secs: u64,
    /// Runs a bastion performs at once.
    pub concurrency: u32,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings { enabled: false, interval_secs: 3600, concurrency: 4 }
    }
}

/// The hardware discovery service. Its own state: its settings and the nodes it has
/// already logged as skipped.
pub struct Discovery {
    core: Arc<Core>,
    settings: DiscoverySettings,
    skips: SkipLog,
}

/// Nodes already reported as skipped (no rule, no pinned key), so the log says it once.
#[derive(Debug, Default)]
pub(super) struct SkipLog(Mutex<BTreeSet<(String, &'static str)>>);

impl SkipLog {
    pub(super) fn once(&self, device: &str, why: &'static str) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() < 100_000 && seen.insert((device.to_owned(), why)) {
            tracing::info!(device, why, "node not discovered");
        }
    }
}

/// An agent or device name as a bastion's claim or report may name it.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

impl Discovery {
    pub(super) fn new(core: Arc<Core>, settings: DiscoverySettings) -> Discovery {
        Discovery { core, settings, skips: SkipLog::default() }
    }

    /// `POST /v1/bastion/discovery/claim`.
    pub async fn claim(
        &self,
        bastion: &ServiceCaller,
        req: &DiscoveryClaimRequest,
    ) -> Result<DiscoveryClaimResponse, CaError> {
        let settings = &self.settings;
        let mut answer = DiscoveryClaimResponse {
            enabled: settings.enabled,
            next_claim_secs: settings.interval_secs,
            concurrency: settings.concurrency,
            jobs: Vec::new(),
        };
        if !settings.enabled {
            return Ok(answer);
        }
        if req.agents.len() > 10_000 || !req.agents.iter().all(|a| valid_name(a)) {
            return Err(CaError::BadRequest("invalid agent list".into()));
        }
        let key = match parse_user_public_key(&req.public_key) {
            Ok(k) if k.algorithm() == Algorithm::Ed25519 => k,
            _ => return Err(CaError::BadRequest("the discovery key must be an Ed25519 public key".into())),
        };
        let max_jobs = usize::try_from(req.max_jobs.min(MAX_JOBS_PER_CLAIM)).unwrap_or(0);
        let agents: BTreeSet<&str> = req.agents.iter().map(String::as_str).collect();
        let now = self.core.now();
        let due_before = now.saturating_sub(settings.interval_secs);
        for node in self.core.store.nodes().await? {
            if answer.jobs.len() >= max_jobs {
                break;
            }
            let device = self.core.device(&node);
            let Some(agent) = device.agent.clone() else { continue };
            if !agents.contains(agent.as_str()) {
                continue;
            }
            let Some(rule) = self.core.discovery_allowed(&node) else {
                self.skips.once(&node.name, "no inventory_enrichment rule matches");
                continue;
            };
            if node.host_keys.is_empty() {
                self.skips.once(&node.name, "no host key pinned (discovery never trusts on first use)");
                continue;
            }
            let run_id = hex::encode(portcullis_sshcert::random_bytes::<16>());
            // Claim first: a node that is not due costs one statement, not a signature.
            let mut tx = self.core.store.begin().await?;
            let abandoned_before = now.saturating_sub(DISCOVERY_CERT_TTL_SECS);
            if !store::claim_discovery_run(
                tx.conn(),
                &node.name,
                &run_id,
                &bastion.name,
                now,
                due_before,
                abandoned_before,
            )
            .await?
            {
                continue;
            }
            let permit = DiscoveryPermit {
                principal: node_principal(&node.name, DISCOVERY_LOGIN),
                key_id: format!("discovery:{run_id}:{}", node.name),
            };
            let Some(signer) = self.core.keyring().signer(KeyPurpose::User) else {
                tracing::error!("no active user CA key for a discovery certificate");
                return Err(CaError::Unavailable);
            };
            let signed = sign_discovery_cert(&permit, &key, &signer, now, self.core.clock_skew)?;
            let certificate =
                signed.certificate.to_openssh().map_err(|_| CaError::Internal("certificate encoding".into()))?;
            let row = signed.row(
                &signer.fingerprint,
                format!("discovery:{}", bastion.name),
                vec![permit.principal.clone()],
                Vec::new(),
                now,
            );
            store::insert_cert(tx.conn(), &row).await?;
            let event = AuditEvent::DiscoveryStarted {
                run_id: run_id.clone(),
                device: node.name.clone(),
                agent: agent.clone(),
                bastion: bastion.name.clone(),
                rule,
                cert_serial: row.serial.to_string(),
            };
            audit::record(tx.conn(), now, &event).await?;
            tx.commit().await?;
            answer.jobs.push(DiscoveryJob {
                run_id,
                target_host: node.addresses.first().cloned().unwrap_or_else(|| node.name.clone()),
                target_port: node.ssh_port_or_default(),
                device: node.name,
                agent,
                known_host_keys: node.host_keys,
                login: DISCOVERY_LOGIN.to_owned(),
                certificate,
            });
        }
        Ok(answer)
    }

    /// `POST /v1/bastion/discovery/report`.
    pub async fn report(
        &self,
        bastion: &ServiceCaller,
        req: &DiscoveryReportRequest,
    ) -> Result<DiscoveryReportResponse, CaError> {
        if !valid_run_id(&req.run_id) || !valid_name(&req.device) {
            return Err(CaError::BadRequest("invalid discovery report".into()));
        }
        let parsed = match &req.outcome {
            DiscoveryOutcome::Failed { reason } => Err(reason.as_str()),
            DiscoveryOutcome::Output { stdout } if stdout.len() > MAX_DISCOVERY_OUTPUT_BYTES => {
                Err(DiscoveryFailure::OutputTooLarge.as_str())
            }
            DiscoveryOutcome::Output { stdout } => parse_report(stdout.as_bytes()).map_err(|e| {
                // The error names sections and lines, never the node's text.
                tracing::info!(device = %req.device, run_id = %req.run_id, error = %e, "discovery output refused");
                e.code()
            }),
        };
        let now = self.core.now();
        let mut tx = self.core.store.begin().await?;
        let mut facts = match parsed {
            Ok(facts) => facts,
            Err(reason) => {
                if !store::finish_discovery_run(tx.conn(), &req.device, &req.run_id, &bastion.name, now, reason).await?
                {
                    return Err(CaError::NotFound("open discovery run"));
                }
                let event = AuditEvent::DiscoveryFailed {
                    run_id: req.run_id.clone(),
                    device: req.device.clone(),
                    bastion: bastion.name.clone(),
                    reason,
                };
                audit::record(tx.conn(), now, &event).await?;
                tx.commit().await?;
                tracing::info!(device = %req.device, reason, "discovery failed");
                return Ok(DiscoveryReportResponse { result: reason.to_owned(), changed_fields: Vec::new() });
            }
        };
        let old = match store::inventory(tx.conn(), &req.device).await? {
            Some((json, _)) => Some(
                serde_json::from_str::<HardwareFacts>(&json).map_err(|_| CaError::Internal("stored facts".into()))?,
            ),
            None => None,
        };
        if facts.lacks_dmi() {
            // dmidecode printed nothing (sudo not permitted, no SMBIOS): what was known
            // stays known, so a broken sudoers entry is a warning, not drift.
            tracing::warn!(
                device = %req.device,
                "discovery got no dmidecode facts: check that the node's sudoers drop-in lets the discovery \
                 account run dmidecode (portcullis-enroll --discovery installs it)"
            );
            if let Some(old) = &old {
                facts.system = old.system.clone();
                facts.chassis = old.chassis.clone();
            }
        }
        let changes: Vec<Change> = drift(old.as_ref().unwrap_or(&HardwareFacts::default()), &facts);
        let result = match (&old, changes.is_empty()) {
            (Some(_), true) => "unchanged",
            (Some(_), false) => "changed",
            (None, _) => "first",
        };
        if !store::finish_discovery_run(tx.conn(), &req.device, &req.run_id, &bastion.name, now, result).await? {
            return Err(CaError::NotFound("open discovery run"));
        }
        let fields: Vec<String> = changes.iter().map(|c| c.field().to_owned()).collect();
        if result != "unchanged" {
            let facts_json = serde_json::to_string(&facts).map_err(|_| CaError::Internal("facts encoding".into()))?;
            let changes_json =
                serde_json::to_string(&changes).map_err(|_| CaError::Internal("changes encoding".into()))?;
            store::record_inventory_change(tx.conn(), &req.device, &req.run_id, now, &facts_json, &changes_json)
                .await?;
            let event = AuditEvent::InventoryDrift {
                run_id: req.run_id.clone(),
                device: req.device.clone(),
                first: old.is_none(),
                fields: fields.clone(),
            };
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        tracing::info!(device = %req.device, result, changed = fields.len(), "discovery run finished");
        Ok(DiscoveryReportResponse { result: result.to_owned(), changed_fields: fields })
    }

    /// `GET /v1/admin/inventory/{node}`.
    pub async fn inventory_view(
        &self,
        _grant: &Grant<proof::InventoryRead>,
        device: &str,
    ) -> Result<InventoryView, CaError> {
        let node = self.core.store.node(device).await?.ok_or(CaError::NotFound("node"))?;
        self.read_inventory(node).await
    }

    /// A node's facts and their history, for a caller already shown the node (an
    /// inventory reader, or the console user on the node's details page).
    pub(crate) async fn read_inventory(&self, node: NodeRecord) -> Result<InventoryView, CaError> {
        // One snapshot: a report committing between these reads must not pair new history
        // with old (or no) facts.
        let mut read = self.core.store.read().await?;
        let (facts, changed_at) = match store::inventory(read.conn(), &node.name).await? {
            Some((json, at)) => {
                let facts: HardwareFacts =
                    serde_json::from_str(&json).map_err(|_| CaError::Internal("stored facts".into()))?;
                (facts.fields(), at)
            }
            None => (Default::default(), 0),
        };
        let run = store::discovery_run(read.conn(), &node.name).await?;
        let history = store::inventory_history(read.conn(), &node.name, 100)
            .await?
            .into_iter()
            .map(|h| InventoryHistoryEntry {
                at: h.at,
                run_id: h.run_id,
                changes: serde_json::from_str(&h.changes_json).unwrap_or_default(),
            })
            .collect();
        Ok(InventoryView {
            device: node.name,
            facts,
            changed_at,
            last_run_at: run.as_ref().map(|r| r.finished_at.unwrap_or(r.claimed_at)),
            last_result: run.and_then(|r| r.result),
            history,
        })
    }

    /// Every node's current facts as flat fields (for device lists).
    pub async fn hardware_facts(&self) -> Result<std::collections::BTreeMap<String, HardwareSummary>, CaError> {
        let mut out = std::collections::BTreeMap::new();
        for (device, json) in self.core.store.inventories().await? {
            if let Ok(facts) = serde_json::from_str::<HardwareFacts>(&json) {
                out.insert(device, facts.fields());
            }
        }
        Ok(out)
    }
}

/// A node's facts as `path → value`.
pub type HardwareSummary = std::collections::BTreeMap<String, String>;
