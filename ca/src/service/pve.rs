//! Proxmox VE inventory, the CA's half: API-token custody, the collection claim (the
//! brokered grant), and the report's storage with drift.
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

use super::Ca;
use super::services::ServiceCaller;
use super::sessions::policy_device_of;
use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, ClusterRow, SecretRow};
use portcullis_policies::{Device, Grant, Permission, Provider};
use portcullis_proto::pve::*;
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, BTreeSet, HashMap};

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
pub const CANDIDATE_KEY: &str = "proxmox_candidate";

/// Bounds on a report, far above any real cluster, so a hostile bastion cannot make the
/// CA store without limit.
const MAX_NODES: usize = 1_000;
const MAX_GUESTS: usize = 100_000;
const MAX_ROWS: usize = 100_000;
const MAX_CONFIG_KEYS: usize = 512;
const MAX_TEXT: usize = 4_096;
/// Changed fields named in one drift record.
const MAX_FIELDS_AUDITED: usize = 200;

fn secret_name(name: &str) -> Result<(), CaError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    ok.then_some(()).ok_or_else(|| CaError::BadRequest("a secret name is 1-64 of A-Z a-z 0-9 _ . -".into()))
}

fn secret_value(value: &str) -> Result<(), CaError> {
    let ok = !value.is_empty() && value.len() <= MAX_SECRET_BYTES && value.chars().all(|c| c.is_ascii_graphic());
    ok.then_some(())
        .ok_or_else(|| CaError::BadRequest(format!("the secret must be 1-{MAX_SECRET_BYTES} printable characters")))
}

fn identity(identity: &str) -> Result<(), CaError> {
    valid_token_identity(identity)
        .then_some(())
        .ok_or_else(|| CaError::BadRequest("the identity must be a PVE token id, USER@REALM!TOKENID".into()))
}

fn tls(policy: &TlsPolicy) -> Result<String, CaError> {
    if let TlsPolicy::CaBundle { pem } = policy
        && pem.len() > MAX_CA_BUNDLE_BYTES
    {
        return Err(CaError::BadRequest("the CA bundle is too large".into()));
    }
    portcullis_proto::pin::api_client_config(policy).map_err(|e| CaError::BadRequest(format!("TLS policy: {e}")))?;
    serde_json::to_string(policy).map_err(|_| CaError::Internal("TLS policy encoding".into()))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
}

impl Ca {
    fn secrets_grant(grant: &Grant) -> Result<(), CaError> {
        (grant.permission() == Permission::SecretsManage)
            .then_some(())
            .ok_or(CaError::Forbidden("this operation needs secrets.manage"))
    }

    fn secret_info(&self, row: SecretRow) -> SecretInfo {
        let policy = self.policy();
        let rules = policy
            .rules()
            .filter(|r| r.credential().is_some_and(|k| k.secret() == row.name))
            .map(|r| r.name().to_owned())
            .collect();
        let tls =
            serde_json::from_str::<TlsPolicy>(&row.tls_json).map_or_else(|_| "(unreadable)".into(), |t| t.describe());
        SecretInfo {
            name: row.name,
            kind: row.kind,
            identity: row.identity,
            fingerprint: row.fingerprint,
            tls,
            created_at: row.created_at,
            rotated_at: row.rotated_at,
            changed_by: row.changed_by,
            rules,
        }
    }

    /// `GET /v1/admin/secrets`.
    pub async fn secrets(&self, grant: &Grant) -> Result<Vec<SecretInfo>, CaError> {
        Self::secrets_grant(grant)?;
        Ok(self.store.secrets().await?.into_iter().map(|r| self.secret_info(r)).collect())
    }

    /// `POST /v1/admin/secrets`.
    pub async fn add_secret(&self, grant: &Grant, req: &SecretAddRequest) -> Result<SecretInfo, CaError> {
        Self::secrets_grant(grant)?;
        secret_name(&req.name)?;
        if req.kind != PROXMOX_API_TOKEN {
            return Err(CaError::BadRequest(format!("unknown secret kind; the known kind is {PROXMOX_API_TOKEN}")));
        }
        identity(&req.identity)?;
        secret_value(&req.secret)?;
        let tls_json = tls(&req.tls)?;
        let value = SecretString::from(req.secret.clone());
        let now = self.now();
        let row = SecretRow {
            name: req.name.clone(),
            kind: req.kind.clone(),
            identity: req.identity.clone(),
            sealed: crate::sealed::seal(&self.passphrase, &req.name, &req.kind, &value)?,
            fingerprint: crate::sealed::fingerprint(&req.name, &value),
            tls_json,
            created_at: now,
            rotated_at: None,
            changed_by: grant.username().to_owned(),
        };
        let mut tx = self.store.begin().await?;
        if !store::insert_secret(tx.conn(), &row).await? {
            return Err(CaError::Conflict(format!("a secret named {:?} exists; rotate it instead", req.name)));
        }
        let event = AuditEvent::SecretAdded {
            name: row.name.clone(),
            kind: row.kind.clone(),
            identity: row.identity.clone(),
            fingerprint: row.fingerprint.clone(),
            tls: req.tls.describe(),
            by: row.changed_by.clone(),
        };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(self.secret_info(row))
    }

    /// `PUT /v1/admin/secrets/{name}`: a new value; identity and TLS policy stay unless given.
    pub async fn rotate_secret(
        &self,
        grant: &Grant,
        name: &str,
        req: &SecretRotateRequest,
    ) -> Result<SecretInfo, CaError> {
        Self::secrets_grant(grant)?;
        secret_name(name)?;
        secret_value(&req.secret)?;
        let mut row = self.store.secret(name).await?.ok_or(CaError::NotFound("secret"))?;
        if let Some(id) = &req.identity {
            identity(id)?;
            row.identity = id.clone();
        }
        if let Some(policy) = &req.tls {
            row.tls_json = tls(policy)?;
        }
        let value = SecretString::from(req.secret.clone());
        let now = self.now();
        row.sealed = crate::sealed::seal(&self.passphrase, &row.name, &row.kind, &value)?;
        row.fingerprint = crate::sealed::fingerprint(&row.name, &value);
        row.changed_by = grant.username().to_owned();
        row.rotated_at = Some(now);
        let mut tx = self.store.begin().await?;
        if !store::rotate_secret(tx.conn(), &row, now).await? {
            return Err(CaError::NotFound("secret"));
        }
        let described = serde_json::from_str::<TlsPolicy>(&row.tls_json).map(|t| t.describe()).unwrap_or_default();
        let event = AuditEvent::SecretRotated {
            name: row.name.clone(),
            identity: row.identity.clone(),
            fingerprint: row.fingerprint.clone(),
            tls: described,
            by: row.changed_by.clone(),
        };
        audit::record(tx.conn(), now, &event).await?;
        tx.commit().await?;
        Ok(self.secret_info(row))
    }

    /// `DELETE /v1/admin/secrets/{name}`. Rules that name it then collect nothing (logged).
    pub async fn remove_secret(&self, grant: &Grant, name: &str) -> Result<(), CaError> {
        Self::secrets_grant(grant)?;
        secret_name(name)?;
        let now = self.now();
        let mut tx = self.store.begin().await?;
        if !store::delete_secret(tx.conn(), name).await? {
            return Err(CaError::NotFound("secret"));
        }
        let event = AuditEvent::SecretRemoved { name: name.to_owned(), by: grant.username().to_owned() };
        audit::record(tx.conn(), now, &event).await?;
        Ok(tx.commit().await?)
    }

    /// The decrypted token of a stored secret, for one claim.
    async fn unseal(&self, name: &str) -> Result<Option<(SecretRow, SecretString, TlsPolicy)>, CaError> {
        let Some(row) = self.store.secret(name).await? else { return Ok(None) };
        let value = crate::sealed::open(&self.passphrase, &row.name, &row.kind, &row.sealed)?;
        let policy = serde_json::from_str(&row.tls_json).map_err(|_| CaError::Internal("stored TLS policy".into()))?;
        Ok(Some((row, value, policy)))
    }

    /// `POST /v1/bastion/pve/claim`.
    pub async fn claim_pve(&self, bastion: &ServiceCaller, req: &PveClaimRequest) -> Result<PveClaimResponse, CaError> {
        let settings = &self.pve;
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
        let policy = self.policy();
        let now = self.now();
        let due_before = now.saturating_sub(settings.interval_secs);
        let abandoned_before = now.saturating_sub(PVE_RUN_TIMEOUT_SECS + 60);
        // One decryption per secret per claim.
        let mut unsealed: HashMap<String, Option<(SecretRow, SecretString, TlsPolicy)>> = HashMap::new();
        for node in self.store.nodes().await? {
            if answer.jobs.len() + answer.probes.len() >= max_jobs {
                break;
            }
            let device = policy_device_of(&node, self.default_agent.as_deref());
            let Some(agent) = device.agent.clone() else { continue };
            if !agents.contains(agent.as_str()) {
                continue;
            }
            let Ok(rule) = policy.match_credential_rule(Provider::Proxmox, &device) else {
                // No rule hands this device a token: at most a fingerprint, which sends none.
                if settings.fingerprint {
                    let run_id = hex::encode(portcullis_sshcert::random_bytes::<16>());
                    let mut tx = self.store.begin().await?;
                    let claimed = store::claim_pve_run(
                        tx.conn(),
                        &node.name,
                        &run_id,
                        &bastion.name,
                        now,
                        due_before,
                        abandoned_before,
                    )
                    .await?;
                    tx.commit().await?;
                    if claimed {
                        answer.probes.push(PveProbe {
                            run_id,
                            target_host: node.addresses.first().cloned().unwrap_or_else(|| node.name.clone()),
                            target_port: settings.fingerprint_port,
                            device: node.name,
                            agent,
                        });
                    }
                }
                continue;
            };
            let Some(credential) = rule.credential() else { continue };
            if !unsealed.contains_key(credential.secret()) {
                let loaded = self.unseal(credential.secret()).await?;
                unsealed.insert(credential.secret().to_owned(), loaded);
            }
            let Some(Some((secret, value, tls))) = unsealed.get(credential.secret()) else {
                self.discovery_skips.once(&node.name, "the credential rule's secret is not stored");
                continue;
            };
            let run_id = hex::encode(portcullis_sshcert::random_bytes::<16>());
            let mut tx = self.store.begin().await?;
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
                token_secret: value.expose_secret().to_owned(),
                tls: tls.clone(),
                strict_permissions: credential.strict_permissions(),
                expires_at: now.saturating_add(PVE_RUN_TIMEOUT_SECS),
            });
        }
        Ok(answer)
    }

    /// `POST /v1/bastion/pve/report`.
    pub async fn report_pve(
        &self,
        bastion: &ServiceCaller,
        req: &PveReportRequest,
    ) -> Result<PveReportResponse, CaError> {
        if !portcullis_proto::discovery::valid_run_id(&req.run_id) || !valid_name(&req.device) {
            return Err(CaError::BadRequest("invalid collection report".into()));
        }
        let now = self.now();
        let (mut inventory, failures, write_privileges) = match &req.outcome {
            PveOutcome::Failed { reason } => {
                let reason = reason.as_str();
                let mut tx = self.store.begin().await?;
                if !store::finish_pve_run(tx.conn(), &req.device, &req.run_id, &bastion.name, now, reason, None, None)
                    .await?
                {
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
                return Ok(PveReportResponse { result: reason.to_owned(), changed_fields: Vec::new() });
            }
            PveOutcome::Probed { candidate, cert_sha256 } => {
                return self.record_probe(bastion, req, *candidate, cert_sha256.as_deref()).await;
            }
            PveOutcome::Collected { inventory, endpoint_failures, write_privileges } => {
                ((**inventory).clone(), endpoint_failures.clone(), write_privileges.clone())
            }
        };
        check(&inventory, &failures, &write_privileges).map_err(|e| CaError::BadRequest(format!("report: {e}")))?;
        normalize(&mut inventory);
        let node = self.store.node(&req.device).await?.ok_or(CaError::NotFound("node"))?;
        let agent = policy_device_of(&node, self.default_agent.as_deref()).agent.unwrap_or_default();
        let cluster_id = format!("{agent}/{}", inventory.cluster);
        let warnings = Warnings {
            endpoint_failures: failures.iter().map(describe_failure).collect(),
            write_privileges: write_privileges.clone(),
        };
        let warnings_json = serde_json::to_string(&warnings).map_err(|_| CaError::Internal("warnings".into()))?;
        let mut tx = self.store.begin().await?;
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
        let now = self.now();
        let result = if candidate { "candidate" } else { "not_candidate" };
        let mut tx = self.store.begin().await?;
        if !store::finish_pve_run(tx.conn(), &req.device, &req.run_id, &bastion.name, now, result, None, None).await? {
            return Err(CaError::NotFound("open collection run"));
        }
        let mut node = self.store.node(&req.device).await?.ok_or(CaError::NotFound("node"))?;
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
    pub async fn clusters(&self, _grant: &Grant) -> Result<Vec<ClusterSummary>, CaError> {
        let counts: HashMap<String, (u64, u64)> =
            self.store.cluster_counts().await?.into_iter().map(|(id, n, g)| (id, (n, g))).collect();
        let runs = self.store.pve_runs().await?;
        Ok(self
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
    pub async fn cluster_view(&self, _grant: &Grant, id: &str) -> Result<ClusterView, CaError> {
        let (row, inventory) = self.store.cluster(id).await?.ok_or(CaError::NotFound("cluster"))?;
        let runs = self.store.pve_runs().await?;
        let enrolled: BTreeSet<String> = self.store.nodes().await?.into_iter().map(|n| n.name).collect();
        let enrolled_nodes =
            inventory.nodes.iter().filter(|n| enrolled.contains(&n.name)).map(|n| n.name.clone()).collect();
        let (nodes, guests) = (inventory.nodes.len(), inventory.guests.len());
        let summary = summary(row, nodes as u64, guests as u64, &runs);
        Ok(ClusterView { summary, inventory, enrolled_nodes })
    }
}

/// A guest's device name: `vm100.alpha` (QEMU) or `ct101.alpha` (LXC) — PVE's own "VM 100"
/// and "CT 101", qualified by the cluster. `None` when the cluster's name would make an
/// invalid device name.
pub(crate) fn guest_device_name(g: &store::GuestRow) -> Option<String> {
    let prefix = if g.kind == "lxc" { "ct" } else { "vm" };
    let name = format!("{prefix}{}.{}", g.vmid, g.cluster);
    crate::validate::node_name(&name).is_ok().then_some(name)
}

/// A guest as the policy sees it: kind `qemu` or `lxc`, its cluster's agent, its PVE tags
/// as `tags.<tag>:true`, and `metadata.vmid`, `.cluster`, `.node` (its parent), `.status`.
pub(crate) fn guest_device(g: &store::GuestRow) -> Option<Device> {
    let metadata = [
        ("vmid", g.vmid.to_string()),
        ("cluster", g.cluster.clone()),
        ("node", g.node.clone()),
        ("status", g.status.clone()),
    ];
    Some(Device {
        name: guest_device_name(g)?,
        kind: Some(g.kind.clone()),
        vendor: Some("proxmox".to_owned()),
        source: Some("proxmox".to_owned()),
        agent: Some(g.agent.clone()),
        partition: Some(super::certs::DEFAULT_PARTITION.to_owned()),
        tags: g.tags.iter().map(|t| (t.clone(), "true".to_owned())).collect(),
        metadata: metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..Device::default()
    })
}

impl Ca {
    /// Every collected guest as a device.
    pub(crate) async fn guest_devices(&self) -> Result<Vec<(store::GuestRow, Device)>, CaError> {
        Ok(self.store.guests().await?.into_iter().filter_map(|g| guest_device(&g).map(|d| (g, d))).collect())
    }
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

/// Bounds and names of a reported inventory.
fn check(inv: &PveInventory, failures: &[EndpointFailure], privileges: &[String]) -> Result<(), &'static str> {
    let text = |s: &str| s.len() <= MAX_TEXT && !s.chars().any(char::is_control);
    let name = |s: &str| !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_graphic());
    if !name(&inv.cluster) || !text(&inv.version) {
        return Err("cluster name or version");
    }
    if inv.nodes.len() > MAX_NODES || inv.guests.len() > MAX_GUESTS {
        return Err("too many nodes or guests");
    }
    let rows = inv.storage.len() + inv.interfaces.len() + inv.disks.len();
    let ceph = inv.ceph.as_ref().map_or(0, |c| c.osds.len() + c.pools.len() + c.filesystems.len());
    if rows > MAX_ROWS || ceph > MAX_ROWS || failures.len() > MAX_ROWS || privileges.len() > MAX_ROWS {
        return Err("too many rows");
    }
    let unique = |keys: Vec<String>| {
        let n = keys.len();
        keys.into_iter().collect::<BTreeSet<_>>().len() == n
    };
    if !inv.nodes.iter().all(|n| name(&n.name) && text(&n.status))
        || !unique(inv.nodes.iter().map(|n| n.name.clone()).collect())
    {
        return Err("node names");
    }
    if !inv.guests.iter().all(|g| {
        text(&g.name)
            && name(&g.node)
            && text(&g.status)
            && matches!(g.kind.as_str(), "qemu" | "lxc")
            && g.config.len() <= MAX_CONFIG_KEYS
            && g.config.iter().all(|(k, v)| name(k) && text(v))
            && g.tags.iter().all(|t| text(t))
    }) || !unique(inv.guests.iter().map(|g| g.vmid.to_string()).collect())
    {
        return Err("guests");
    }
    let keyed = |node: &str, key: &str| name(node) && name(key);
    if !inv.storage.iter().all(|s| keyed(&s.node, &s.name) && text(&s.kind) && text(&s.content))
        || !unique(inv.storage.iter().map(|s| format!("{}/{}", s.node, s.name)).collect())
        || !inv.interfaces.iter().all(|i| keyed(&i.node, &i.name) && text(&i.kind))
        || !unique(inv.interfaces.iter().map(|i| format!("{}/{}", i.node, i.name)).collect())
        || !inv.disks.iter().all(|d| keyed(&d.node, &d.devpath))
        || !unique(inv.disks.iter().map(|d| format!("{}/{}", d.node, d.devpath)).collect())
    {
        return Err("storage, interfaces or disks");
    }
    if let Some(c) = &inv.ceph {
        let items = [&c.osds, &c.pools, &c.filesystems];
        if !text(&c.health)
            || !items.iter().all(|l| l.iter().all(|i| name(&i.name) && text(&i.status)))
            || !items.iter().all(|l| unique(l.iter().map(|i| i.name.clone()).collect()))
        {
            return Err("ceph");
        }
    }
    if !failures.iter().all(|f| text(&f.path) && text(&f.code) && f.hint.as_deref().is_none_or(text))
        || !privileges.iter().all(|p| text(p))
    {
        return Err("endpoint failures");
    }
    Ok(())
}

/// Sorts every list by its key, so two equal inventories are equal values whatever order
/// the API or the database gave.
fn normalize(inv: &mut PveInventory) {
    inv.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    inv.guests.sort_by_key(|g| g.vmid);
    inv.storage.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    inv.interfaces.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    inv.disks.sort_by(|a, b| (&a.node, &a.devpath).cmp(&(&b.node, &b.devpath)));
    for g in &mut inv.guests {
        g.tags.sort();
    }
    if let Some(c) = &mut inv.ceph {
        for list in [&mut c.osds, &mut c.pools, &mut c.filesystems] {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
}

/// The inventory as flat `path → value` fields.
fn fields(inv: &PveInventory) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let opt = |v: &Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    f.insert("version".into(), inv.version.clone());
    f.insert("clustered".into(), inv.clustered.to_string());
    f.insert("quorate".into(), inv.quorate.map(|q| q.to_string()).unwrap_or_default());
    for n in &inv.nodes {
        let p = format!("node.{}", n.name);
        f.insert(format!("{p}.status"), n.status.clone());
        f.insert(format!("{p}.address"), s(&n.address));
        f.insert(format!("{p}.cpus"), opt(&n.cpus));
        f.insert(format!("{p}.memory_bytes"), opt(&n.memory_bytes));
        f.insert(format!("{p}.ssl_fingerprint"), s(&n.ssl_fingerprint));
    }
    for g in &inv.guests {
        let p = format!("guest.{}", g.vmid);
        f.insert(format!("{p}.kind"), g.kind.clone());
        f.insert(format!("{p}.name"), g.name.clone());
        f.insert(format!("{p}.node"), g.node.clone());
        f.insert(format!("{p}.status"), g.status.clone());
        f.insert(format!("{p}.template"), g.template.to_string());
        f.insert(format!("{p}.cpus"), opt(&g.cpus));
        f.insert(format!("{p}.memory_bytes"), opt(&g.memory_bytes));
        f.insert(format!("{p}.disk_bytes"), opt(&g.disk_bytes));
        f.insert(format!("{p}.tags"), g.tags.join(";"));
        for (k, v) in &g.config {
            f.insert(format!("{p}.config.{k}"), v.clone());
        }
    }
    for st in &inv.storage {
        let p = format!("storage.{}/{}", st.node, st.name);
        f.insert(format!("{p}.kind"), st.kind.clone());
        f.insert(format!("{p}.content"), st.content.clone());
        f.insert(format!("{p}.shared"), st.shared.to_string());
        f.insert(format!("{p}.active"), st.active.to_string());
        f.insert(format!("{p}.total_bytes"), opt(&st.total_bytes));
    }
    for i in &inv.interfaces {
        let p = format!("interface.{}/{}", i.node, i.name);
        f.insert(format!("{p}.kind"), i.kind.clone());
        f.insert(format!("{p}.cidr"), s(&i.cidr));
        f.insert(format!("{p}.active"), i.active.to_string());
        f.insert(format!("{p}.bridge_ports"), s(&i.bridge_ports));
    }
    for d in &inv.disks {
        let p = format!("disk.{}/{}", d.node, d.devpath);
        f.insert(format!("{p}.model"), s(&d.model));
        f.insert(format!("{p}.serial"), s(&d.serial));
        f.insert(format!("{p}.size_bytes"), opt(&d.size_bytes));
        f.insert(format!("{p}.kind"), s(&d.kind));
        f.insert(format!("{p}.health"), s(&d.health));
    }
    if let Some(c) = &inv.ceph {
        f.insert("ceph.health".into(), c.health.clone());
        for (kind, list) in [("osd", &c.osds), ("pool", &c.pools), ("fs", &c.filesystems)] {
            for item in list {
                f.insert(format!("ceph.{kind}.{}", item.name), item.status.clone());
            }
        }
    }
    f
}

/// The field paths that differ (added, removed or changed).
fn drift(old: Option<&PveInventory>, new: &PveInventory) -> Vec<String> {
    let before = old.map(fields).unwrap_or_default();
    let after = fields(new);
    let mut changed: Vec<String> =
        after.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    changed.extend(before.keys().filter(|k| !after.contains_key(*k)).cloned());
    changed.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> PveInventory {
        PveInventory {
            version: "9.0.10".into(),
            cluster: "lab".into(),
            clustered: true,
            quorate: Some(true),
            nodes: vec![PveNode { name: "pve1".into(), status: "online".into(), ..PveNode::default() }],
            guests: vec![
                PveGuest {
                    vmid: 101,
                    kind: "lxc".into(),
                    name: "ct".into(),
                    node: "pve1".into(),
                    ..PveGuest::default()
                },
                PveGuest {
                    vmid: 100,
                    kind: "qemu".into(),
                    name: "vm".into(),
                    node: "pve1".into(),
                    ..PveGuest::default()
                },
            ],
            ..PveInventory::default()
        }
    }

    #[test]
    fn order_is_not_drift_and_a_status_change_is() {
        let (mut a, mut b) = (inv(), inv());
        b.guests.reverse();
        normalize(&mut a);
        normalize(&mut b);
        assert!(drift(Some(&a), &b).is_empty());
        b.guests[0].status = "running".into();
        assert_eq!(drift(Some(&a), &b), ["guest.100.status"]);
        b.guests.pop();
        assert!(drift(Some(&a), &b).iter().any(|f| f == "guest.101.kind"), "a removed guest is drift");
    }

    #[test]
    fn hostile_reports_are_refused() {
        let mut dup = inv();
        dup.guests[1].vmid = 101;
        assert_eq!(check(&dup, &[], &[]), Err("guests"));
        let mut control = inv();
        control.nodes[0].name = "pve\n1".into();
        assert!(check(&control, &[], &[]).is_err());
        let mut kind = inv();
        kind.guests[0].kind = "docker".into();
        assert!(check(&kind, &[], &[]).is_err());
        assert_eq!(check(&inv(), &[], &[]), Ok(()));
    }
}
