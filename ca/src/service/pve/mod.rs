//! Proxmox VE inventory, the CA's half: the collection claim (the brokered grant), the
//! report's storage with drift, and the cluster views. Token custody is `secrets`, guests
//! as devices `guests`, a report's checks and drift (pure) `report`.
//!
//! Guarantees:
//! - A token is stored sealed (`crate::sealed`) and never rendered back: listings, audit
//!   records and errors carry its public identity and a fingerprint only.
//! - A token leaves the CA only inside a [`PveJob`], the grant of one run: for a device a
//!   credential rule (provider `proxmox`) matches and scopes, whose agent is connected to
//!   the claiming bastion, once per interval across bastions and replicas (one conditional
//!   upsert), audited with the rule and the secret's fingerprint. A bastion cannot ask
//!   for a device: it only lists its agents, and the policy decides the rest.
//! - A report is accepted only for the open run of the bastion that claimed it. A cluster
//!   whose inventory did not change writes nothing but the run's own row; a change
//!   replaces the cluster's rows, appends one history row and records the changed fields.

mod guests;
mod links;
mod report;
mod secrets;

use super::core::Core;
use super::discovery::SkipLog;
use super::discovery::valid_name;
use super::services::ServiceCaller;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, ClusterRow, SecretRow};
pub(crate) use links::Link;
use portcullis_policies::{Device, Grant, Policy, Provider, Rule, proof};
use portcullis_proto::pve::*;
use report::{check, drift, normalize};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// `[pve]` in the CA configuration.
#[derive(Debug, Clone)]
pub struct PveSettings {
    /// How often each device is collected, and how often bastions ask.
    pub interval_secs: u64,
    /// Runs a bastion performs at once.
    pub concurrency: u32,
    /// Fingerprint devices no credential rule covers, without credentials, and mark them
    /// `metadata.proxmox_candidate` (off by default: it connects to every device's port).
    pub fingerprint: bool,
    /// The port fingerprinted (the PVE API's 8006 unless a proxy says otherwise).
    pub fingerprint_port: u16,
}

impl Default for PveSettings {
    fn default() -> Self {
        PveSettings {
            interval_secs: 3600,
            concurrency: 4,
            fingerprint: false,
            fingerprint_port: portcullis_policies::DEFAULT_PROXMOX_API_PORT,
        }
    }
}

/// The metadata key a fingerprint sets (`in:devices metadata.proxmox_candidate:true`).
/// The Proxmox VE inventory service. Its own state: its settings and the devices it
/// has already logged as skipped.
pub struct Proxmox {
    pub(super) core: Arc<Core>,
    settings: PveSettings,
    skips: SkipLog,
}

pub const CANDIDATE_KEY: &str = "proxmox_candidate";

/// Changed fields named in one drift record.
const MAX_FIELDS_AUDITED: usize = 200;

/// When a claim's answer was full: ask again this soon (the bastion waits for free slots).
const FULL_CLAIM_AGAIN_SECS: u64 = 5;

impl Proxmox {
    pub(in crate::service) fn new(core: Arc<Core>, settings: PveSettings) -> Proxmox {
        Proxmox { core, settings, skips: SkipLog::default() }
    }

    /// The API ports an agent may connect to on `device` for collection: the credential
    /// rule's, or the fingerprint port when fingerprinting covers devices no rule does.
    pub(in crate::service) fn api_ports(&self, policy: &Policy, device: &Device) -> Vec<u16> {
        let rule = policy.match_credential_rule(Provider::Proxmox, device).ok().or_else(|| trial_rule(policy, device));
        match rule.and_then(|r| r.credential()) {
            Some(k) => vec![k.api_port()],
            None if self.settings.fingerprint => vec![self.settings.fingerprint_port],
            None => Vec::new(),
        }
    }

    /// `POST /v1/bastion/pve/claim`.
    pub async fn claim(&self, bastion: &ServiceCaller, req: &PveClaimRequest) -> Result<PveClaimResponse, CaError> {
        let settings = &self.settings;
        let mut answer = PveClaimResponse {
            enabled: true,
            next_claim_secs: settings.interval_secs,
            concurrency: settings.concurrency,
            jobs: Vec::new(),
            probes: Vec::new(),
        };
        if req.agents.len() > 10_000 || !req.agents.iter().all(|a| valid_name(a)) {
            return Err(CaError::BadRequest("invalid agent list".into()));
        }
        let max_jobs = usize::try_from(req.max_jobs.min(MAX_PVE_JOBS_PER_CLAIM)).unwrap_or(0);
        let agents: BTreeSet<&str> = req.agents.iter().map(String::as_str).collect();
        let policy = self.core.policy();
        let now = self.core.now();
        let (due_before, abandoned_before) = self.run_window(now);
        // One decryption per secret per claim.
        let mut unsealed: HashMap<String, Result<(SecretRow, SecretString, TlsPolicy), &'static str>> = HashMap::new();
        // Longest waiting first (never run before all): a claim takes at most `max_jobs`,
        // and in name order the same first ones were due again at every claim while the
        // rest of a large estate waited forever.
        let claimed = self.core.store.pve_claim_times().await?;
        let mut nodes = self.core.store.nodes().await?;
        nodes.sort_by_cached_key(|n| (claimed.get(&n.name).copied().unwrap_or(0), n.name.clone()));
        for node in nodes {
            if answer.jobs.len() + answer.probes.len() >= max_jobs {
                // More may be due: ask again as soon as slots are free, not an interval on.
                answer.next_claim_secs = answer.next_claim_secs.min(FULL_CLAIM_AGAIN_SECS);
                break;
            }
            let device = self.core.device(&node);
            let Some(agent) = device.agent.clone() else { continue };
            if !agents.contains(agent.as_str()) {
                continue;
            }
            let (rule, trial) = match policy.match_credential_rule(Provider::Proxmox, &device) {
                Ok(rule) => (rule, false),
                Err(_) => match trial_rule(&policy, &device) {
                    Some(rule) => (rule, true),
                    None => {
                        // No rule hands this device a token: at most a fingerprint, which sends none.
                        if settings.fingerprint
                            && let Some(run_id) = self.claim_probe(&node.name, &bastion.name, now).await?
                        {
                            answer.probes.push(PveProbe {
                                run_id,
                                target_host: node.addresses.first().cloned().unwrap_or_else(|| node.name.clone()),
                                target_port: settings.fingerprint_port,
                                device: node.name,
                                agent,
                            });
                        }
                        continue;
                    }
                },
            };
            let Some(credential) = rule.credential() else { continue };
            if !unsealed.contains_key(credential.secret()) {
                let loaded = match self.unseal(credential.secret()).await {
                    Ok(Some(loaded)) => Ok(loaded),
                    Ok(None) => Err("the credential rule's secret is not stored"),
                    Err(e @ CaError::StoreUnavailable(_)) => return Err(e),
                    // Sealed under another passphrase, or a damaged row: the devices under
                    // this secret wait; every other device is still collected.
                    Err(e) => {
                        tracing::error!(secret = credential.secret(), error = %e, "a stored secret cannot be opened");
                        Err("the credential rule's secret cannot be opened")
                    }
                };
                unsealed.insert(credential.secret().to_owned(), loaded);
            }
            let (secret, value, tls) = match unsealed.get(credential.secret()) {
                Some(Ok(loaded)) => loaded,
                Some(Err(why)) => {
                    self.skips.once(&node.name, why);
                    continue;
                }
                None => continue,
            };
            let run_id = hex::encode(portcullis_sshcert::random_bytes::<16>());
            let mut tx = self.core.store.begin().await?;
            if !store::claim_pve_run(tx.conn(), &node.name, &run_id, &bastion.name, now, due_before, abandoned_before)
                .await?
            {
                continue;
            }
            let event = AuditEvent::PveCollectionStarted {
                run_id: run_id.clone(),
                device: node.name.clone(),
                agent: agent.clone(),
                bastion: bastion.name.clone(),
                rule: rule.name().to_owned(),
                secret: secret.name.clone(),
                secret_fingerprint: secret.fingerprint.clone(),
                trial,
            };
            audit::record(tx.conn(), now, &event).await?;
            tx.commit().await?;
            answer.jobs.push(PveJob {
                run_id,
                target_host: node.addresses.first().cloned().unwrap_or_else(|| node.name.clone()),
                target_port: credential.api_port(),
                device: node.name,
                agent,
                rule: rule.name().to_owned(),
                token_identity: secret.identity.clone(),
                token_secret: portcullis_proto::WireSecret::new(value.expose_secret()),
                tls: tls.clone(),
                strict_permissions: credential.strict_permissions(),
                expires_at: now.saturating_add(PVE_RUN_TIMEOUT_SECS),
            });
        }
        Ok(answer)
    }

    /// Finishes `req`'s run as failed for `reason`, on record (`pve_collection_failed`).
    async fn run_failed(
        &self,
        bastion: &ServiceCaller,
        req: &PveReportRequest,
        reason: &'static str,
        now: u64,
    ) -> Result<(), CaError> {
        let mut tx = self.core.store.begin().await?;
        if !store::finish_pve_run(tx.conn(), &req.device, &req.run_id, &bastion.name, now, reason, None, None).await? {
            return Err(CaError::NotFound("open collection run"));
        }
        let event = AuditEvent::PveCollectionFailed {
            run_id: req.run_id.clone(),
            device: req.device.clone(),
            bastion: bastion.name.clone(),
            reason,
        };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        tracing::info!(device = %req.device, reason, "Proxmox VE collection failed");
        Ok(())
    }

    /// A device is due when its last claim is at or before the first time, and not still
    /// running unless it was claimed at or before the second (its run outlived any timeout).
    fn run_window(&self, now: u64) -> (u64, u64) {
        (now.saturating_sub(self.settings.interval_secs), now.saturating_sub(PVE_RUN_TIMEOUT_SECS + 60))
    }

    /// Claims the device's run for a fingerprint when it is due; its run id.
    async fn claim_probe(&self, device: &str, bastion: &str, now: u64) -> Result<Option<String>, CaError> {
        let run_id = hex::encode(portcullis_sshcert::random_bytes::<16>());
        let (due_before, abandoned_before) = self.run_window(now);
        let mut tx = self.core.store.begin().await?;
        let claimed =
            store::claim_pve_run(tx.conn(), device, &run_id, bastion, now, due_before, abandoned_before).await?;
        tx.commit().await?;
        Ok(claimed.then_some(run_id))
    }

    /// `POST /v1/bastion/pve/report`.
    pub async fn report(&self, bastion: &ServiceCaller, req: &PveReportRequest) -> Result<PveReportResponse, CaError> {
        if !portcullis_proto::discovery::valid_run_id(&req.run_id) || !valid_name(&req.device) {
            return Err(CaError::BadRequest("invalid collection report".into()));
        }
        let now = self.core.now();
        let (mut inventory, failures, write_privileges) = match &req.outcome {
            PveOutcome::Failed { reason } => {
                let reason = reason.as_str();
                self.run_failed(bastion, req, reason, now).await?;
                return Ok(PveReportResponse { result: reason.to_owned(), changed_fields: Vec::new() });
            }
            PveOutcome::Probed { candidate, cert_sha256 } => {
                return self.record_probe(bastion, req, *candidate, cert_sha256.as_deref()).await;
            }
            PveOutcome::Collected { inventory, endpoint_failures, write_privileges } => {
                ((**inventory).clone(), endpoint_failures.clone(), write_privileges.clone())
            }
        };
        if let Err(e) = check(&inventory, &failures, &write_privileges) {
            // Refused, and on record: left open, the run read "running" until its
            // timeout, and a server that answers junk kept the old inventory unseen.
            self.run_failed(bastion, req, "report_rejected", now).await?;
            return Err(CaError::BadRequest(format!("report: {e}")));
        }
        normalize(&mut inventory);
        let node = self.core.store.node(&req.device).await?.ok_or(CaError::NotFound("node"))?;
        let agent = self.core.device(&node).agent.unwrap_or_default();
        let cluster_id = format!("{agent}/{}", inventory.cluster);
        let warnings = Warnings {
            endpoint_failures: failures.iter().map(describe_failure).collect(),
            write_privileges: write_privileges.clone(),
        };
        let warnings_json = serde_json::to_string(&warnings).map_err(|_| CaError::Internal("warnings".into()))?;
        let mut tx = self.core.store.begin().await?;
        let previous_warnings = store::pve_run_warnings(tx.conn(), &req.device).await?;
        let old = store::load_cluster(tx.conn(), &cluster_id).await?.map(|(_, mut inv)| {
            normalize(&mut inv);
            inv
        });
        let changes = drift(old.as_ref(), &inventory);
        let result = match (&old, changes.is_empty()) {
            (Some(_), true) => "unchanged",
            (Some(_), false) => "changed",
            (None, _) => "first",
        };
        if !store::finish_pve_run(
            tx.conn(),
            &req.device,
            &req.run_id,
            &bastion.name,
            now,
            result,
            Some(&cluster_id),
            Some(&warnings_json),
        )
        .await?
        {
            return Err(CaError::NotFound("open collection run"));
        }
        if result != "unchanged" {
            let row = ClusterRow {
                id: cluster_id.clone(),
                name: inventory.cluster.clone(),
                agent,
                version: inventory.version.clone(),
                clustered: inventory.clustered,
                quorate: inventory.quorate,
                collected_from: req.device.clone(),
                changed_at: now,
            };
            let changes_json = serde_json::to_string(&changes).map_err(|_| CaError::Internal("changes".into()))?;
            store::replace_cluster(tx.conn(), &row, &inventory, &req.run_id, &changes_json).await?;
            let event = AuditEvent::PveInventoryDrift {
                run_id: req.run_id.clone(),
                device: req.device.clone(),
                cluster: cluster_id.clone(),
                first: old.is_none(),
                fields: changes.iter().take(MAX_FIELDS_AUDITED).cloned().collect(),
                changed: u64::try_from(changes.len()).unwrap_or(u64::MAX),
            };
            audit::record(tx.conn(), now, &event).await?;
        }
        if previous_warnings.as_deref() != Some(warnings_json.as_str())
            && !(warnings.is_empty() && previous_warnings.is_none())
        {
            let event = AuditEvent::PveCollectionWarnings {
                run_id: req.run_id.clone(),
                device: req.device.clone(),
                endpoint_failures: warnings.endpoint_failures.clone(),
                write_privileges: warnings.write_privileges.clone(),
            };
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        if !write_privileges.is_empty() {
            tracing::warn!(
                device = %req.device,
                privileges = %write_privileges.join(","),
                "the Proxmox VE token holds write privileges; inventory needs only audit privileges \
                 (set strict_permissions = true on the rule to refuse such a token)"
            );
        }
        for f in &failures {
            tracing::info!(device = %req.device, path = %f.path, code = %f.code, "Proxmox VE endpoint not collected");
        }
        tracing::info!(device = %req.device, cluster = %cluster_id, result, changed = changes.len(), "Proxmox VE collection finished");
        Ok(PveReportResponse { result: result.to_owned(), changed_fields: changes })
    }

    /// A fingerprint's answer: the node's `metadata.proxmox_candidate` (and the certificate
    /// it saw), written and audited only when it changes.
    async fn record_probe(
        &self,
        bastion: &ServiceCaller,
        req: &PveReportRequest,
        candidate: bool,
        cert_sha256: Option<&str>,
    ) -> Result<PveReportResponse, CaError> {
        let cert = cert_sha256.and_then(normalize_sha256);
        let now = self.core.now();
        let result = if candidate { "candidate" } else { "not_candidate" };
        let mut tx = self.core.store.begin().await?;
        if !store::finish_pve_run(tx.conn(), &req.device, &req.run_id, &bastion.name, now, result, None, None).await? {
            return Err(CaError::NotFound("open collection run"));
        }
        let mut node = store::node_for_update(&mut tx, &req.device).await?.ok_or(CaError::NotFound("node"))?;
        let value = candidate.to_string();
        if node.metadata.get(CANDIDATE_KEY) != Some(&value) {
            node.metadata.insert(CANDIDATE_KEY.to_owned(), value);
            match &cert {
                Some(c) => node.metadata.insert("proxmox_cert_sha256".to_owned(), c.clone()),
                None => node.metadata.remove("proxmox_cert_sha256"),
            };
            store::upsert_node(tx.conn(), &node, now).await?;
            let event = AuditEvent::PveCandidateMarked {
                device: req.device.clone(),
                candidate,
                cert_sha256: cert.unwrap_or_default(),
                bastion: bastion.name.clone(),
            };
            audit::record(tx.conn(), now, &event).await?;
        }
        tx.commit().await?;
        Ok(PveReportResponse { result: result.to_owned(), changed_fields: Vec::new() })
    }

    /// `GET /v1/admin/inventory/clusters`.
    pub async fn clusters(&self, _grant: &Grant<proof::InventoryRead>) -> Result<Vec<ClusterSummary>, CaError> {
        let counts: HashMap<String, (u64, u64)> =
            self.core.store.cluster_counts().await?.into_iter().map(|(id, n, g)| (id, (n, g))).collect();
        let runs = self.core.store.pve_runs().await?;
        Ok(self
            .core
            .store
            .clusters()
            .await?
            .into_iter()
            .map(|c| {
                let (nodes, guests) = counts.get(&c.id).copied().unwrap_or_default();
                summary(c, nodes, guests, &runs)
            })
            .collect())
    }

    /// `GET /v1/admin/inventory/clusters/{agent}/{cluster}`.
    pub async fn cluster_view(&self, _grant: &Grant<proof::InventoryRead>, id: &str) -> Result<ClusterView, CaError> {
        let (row, inventory) = self.core.store.cluster(id).await?.ok_or(CaError::NotFound("cluster"))?;
        let runs = self.core.store.pve_runs().await?;
        let (mut node_links, mut ambiguous_nodes) = (BTreeMap::new(), BTreeMap::new());
        let enrolled = self.core.store.nodes().await?;
        for (node, link) in self.pve_links(&enrolled).await?.into_iter().filter(|(n, _)| n.cluster_id == row.id) {
            match link {
                Link::Enrolled(name) => {
                    node_links.insert(node.name, name);
                }
                Link::Ambiguous(names) => {
                    ambiguous_nodes.insert(node.name, names);
                }
                Link::Unlinked => {}
            }
        }
        let (nodes, guests) = (inventory.nodes.len(), inventory.guests.len());
        let summary = summary(row, nodes as u64, guests as u64, &runs);
        Ok(ClusterView { summary, inventory, node_links, ambiguous_nodes })
    }

    /// Every PVE node's link to one of the `enrolled` nodes (see `links`).
    pub(crate) async fn pve_links(
        &self,
        enrolled: &[portcullis_proto::NodeRecord],
    ) -> Result<Vec<(store::PveNodeRow, Link)>, CaError> {
        let enrolled: Vec<Device> = enrolled.iter().map(|n| self.core.device(n)).collect();
        Ok(links::links(self.core.store.pve_nodes().await?, &enrolled))
    }
}

/// With `auto_discovery_trials`, a credential rule may also try its token on a device its
/// targets do not name but that a fingerprint marked a candidate, inside its scope (the
/// first such rule by name). Each attempt is a grant like any other, audited with
/// `trial: true`.
pub(crate) fn trial_rule<'p>(policy: &'p Policy, device: &Device) -> Option<&'p Rule> {
    if device.metadata.get(CANDIDATE_KEY).map(String::as_str) != Some("true") {
        return None;
    }
    policy.rules().find(|r| {
        r.credential().is_some_and(|k| k.provider() == Provider::Proxmox && k.auto_discovery_trials())
            && r.scope().includes_device(device)
    })
}

/// What a run warned about, kept with the run so the next one records only a change.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Warnings {
    endpoint_failures: Vec<String>,
    write_privileges: Vec<String>,
}

impl Warnings {
    fn is_empty(&self) -> bool {
        self.endpoint_failures.is_empty() && self.write_privileges.is_empty()
    }
}

fn describe_failure(f: &EndpointFailure) -> String {
    match &f.hint {
        Some(hint) => format!("{}: {} ({hint})", f.path, f.code),
        None => format!("{}: {}", f.path, f.code),
    }
}

fn summary(c: ClusterRow, nodes: u64, guests: u64, runs: &[store::PveRunRow]) -> ClusterSummary {
    let last = runs
        .iter()
        .filter(|r| r.cluster.as_deref() == Some(c.id.as_str()) || r.device == c.collected_from)
        .max_by_key(|r| r.finished_at.unwrap_or(r.claimed_at));
    let failures = last
        .and_then(|r| r.failures_json.as_deref())
        .and_then(|j| serde_json::from_str::<Warnings>(j).ok())
        .map(|w| w.endpoint_failures)
        .unwrap_or_default();
    ClusterSummary {
        name: c.name,
        agent: c.agent,
        version: c.version,
        quorate: c.quorate,
        nodes,
        guests,
        collected_from: c.collected_from,
        changed_at: c.changed_at,
        last_run_at: last.map(|r| r.finished_at.unwrap_or(r.claimed_at)),
        last_result: last.and_then(|r| r.result.clone()),
        last_endpoint_failures: failures,
        id: c.id,
    }
}
