//! Proxmox VE inventory, the bastion's half: runs the CA's collection grants through the
//! devices' agents.
//!
//! Every `next_claim_secs` the bastion asks the CA for due work, naming only the agents
//! connected to it; the CA's policy decides which devices (credential rules and their
//! scope) and hands one grant per device: where to connect, the token, the TLS policy.
//! A run opens one channel through the device's agent, speaks TLS end to end (the agent
//! relays ciphertext and never sees the token), checks the certificate against the
//! secret's TLS policy **before** any request (a mismatch sends nothing), and reads the
//! API with read-only GETs, each answer capped at [`MAX_ENDPOINT_BYTES`] and each request
//! and the whole run bounded in time. The token lives in the job, in memory, for the run
//! only. What was collected (normalized, see [`parse`]) or why nothing was goes back to
//! the CA, which stores it.

mod client;
mod parse;

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::pve::*;

use crate::shared::Shared;
use client::{Api, Fetch};

const FIRST_CLAIM: Duration = Duration::from_secs(1);
const RETRY_CLAIM: Duration = Duration::from_secs(30);
/// Wait while no agent is connected (nothing could be handed out) or every slot is busy.
const NOTHING_TO_CLAIM: Duration = Duration::from_secs(5);
/// Runs in flight at most, whatever the CA hands out.
const MAX_IN_FLIGHT: u32 = 64;

/// Asks the CA for collection work forever; see the module doc.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut wait = FIRST_CLAIM;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut limit = crate::run_limit::RunLimit::default();
    loop {
        tokio::time::sleep(wait).await;
        while in_flight.try_join_next().is_some() {}
        let free = MAX_IN_FLIGHT.saturating_sub(u32::try_from(in_flight.len()).unwrap_or(u32::MAX));
        let agents = shared.agents.names();
        if free == 0 || agents.is_empty() {
            wait = NOTHING_TO_CLAIM;
            continue;
        }
        let request = PveClaimRequest { agents, max_jobs: free.min(MAX_PVE_JOBS_PER_CLAIM) };
        let answer = match shared.control.claim_pve(&request).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Proxmox VE claim failed");
                wait = RETRY_CLAIM;
                continue;
            }
        };
        wait = Duration::from_secs(answer.next_claim_secs.clamp(1, 86_400));
        if !answer.enabled || (answer.jobs.is_empty() && answer.probes.is_empty()) {
            continue;
        }
        let permits = limit.permits(answer.concurrency);
        for probe in answer.probes {
            let (shared, permits) = (Arc::clone(&shared), Arc::clone(&permits));
            in_flight.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let outcome = client::probe(&shared, &probe).await;
                let report = PveReportRequest { run_id: probe.run_id, device: probe.device, outcome };
                if let Err(e) = shared.control.report_pve(&report).await {
                    tracing::warn!(error = %e, device = %report.device, "Proxmox VE fingerprint not accepted");
                }
            });
        }
        for job in answer.jobs {
            let (shared, permits) = (Arc::clone(&shared), Arc::clone(&permits));
            in_flight.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let span = tracing::info_span!("pve", run_id = %job.run_id, device = %job.device);
                let whole = Duration::from_secs(PVE_RUN_TIMEOUT_SECS);
                let work = tracing::Instrument::instrument(collect(&shared, &job), span.clone());
                let outcome = tokio::time::timeout(whole, work)
                    .await
                    .unwrap_or(PveOutcome::Failed { reason: PveFailure::Timeout });
                if let PveOutcome::Failed { reason } = &outcome {
                    span.in_scope(|| tracing::info!(reason = reason.as_str(), "Proxmox VE collection failed"));
                }
                let report = PveReportRequest { run_id: job.run_id.clone(), device: job.device.clone(), outcome };
                // The job (and its token) is dropped when this task ends.
                drop(job);
                if let Err(e) = shared.control.report_pve(&report).await {
                    span.in_scope(|| tracing::warn!(error = %e, "Proxmox VE report not accepted"));
                }
            });
        }
    }
}

/// The endpoints every run reads. Per-node and per-guest paths follow from their answers.
const VERSION: &str = "/version";
const PERMISSIONS: &str = "/access/permissions";
const CLUSTER_STATUS: &str = "/cluster/status";
const NODES: &str = "/nodes";
const RESOURCES: &str = "/cluster/resources";
const CEPH_STATUS: &str = "/cluster/ceph/status";

/// One run: version first (it tells a PVE API, a wrong token and a wrong server apart),
/// then the token's own privileges, then the inventory.
async fn collect(shared: &Shared, job: &PveJob) -> PveOutcome {
    let failed = |reason| PveOutcome::Failed { reason };
    if shared.clock.now_unix() > job.expires_at {
        return failed(PveFailure::GrantExpired);
    }
    let mut api = match Api::connect(shared, job).await {
        Ok(api) => api,
        Err(reason) => return failed(reason),
    };
    let version = match api.get(VERSION).await {
        Fetch::Ok(v) => match parse::version(&v) {
            Some(v) => v,
            None => return failed(PveFailure::NotProxmox),
        },
        Fetch::Unauthorized(_) => return failed(PveFailure::AuthFailed),
        Fetch::Failed(f) if f.code == "timeout" => return failed(PveFailure::Timeout),
        Fetch::Failed(_) => return failed(PveFailure::NotProxmox),
    };
    let mut failures = Vec::new();
    // Strict means "only a token known to be read-only": one whose privileges cannot be
    // read is refused too, not trusted.
    let write_privileges = api.get(PERMISSIONS).await.ok(&mut failures).map(|v| parse::write_privileges(&v));
    let write_privileges = match write_privileges {
        Some(Some(held)) if job.strict_permissions && !held.is_empty() => return failed(PveFailure::WritePrivileges),
        Some(Some(held)) => held,
        _ if job.strict_permissions => return failed(PveFailure::PrivilegesUnknown),
        Some(None) => {
            failures.push(EndpointFailure {
                path: PERMISSIONS.into(),
                code: "invalid".into(),
                status: None,
                hint: None,
            });
            Vec::new()
        }
        None => Vec::new(),
    };
    // The inventory is what these three list: one that did not answer is not an empty
    // cluster. Reported as collected, its guests and nodes would be recorded as gone
    // (and a cluster without its status named after its first node, as a new one).
    let mut core = async |path| match api.get(path).await {
        Fetch::Ok(v) => Ok(v),
        Fetch::Unauthorized(_) => Err(PveFailure::AuthFailed),
        Fetch::Failed(f) if f.code == "timeout" => Err(PveFailure::Timeout),
        Fetch::Failed(f) if f.code == "too_large" => Err(PveFailure::TooLarge),
        Fetch::Failed(f) => {
            // The run's outcome names no endpoint: the operator's guidance goes here.
            tracing::warn!(path = %f.path, code = %f.code, hint = ?f.hint, "Proxmox VE: an endpoint the inventory needs did not answer");
            Err(if f.status == Some(403) { PveFailure::Forbidden } else { PveFailure::Incomplete })
        }
    };
    let (status, nodes, resources) = match (core(CLUSTER_STATUS).await, core(NODES).await, core(RESOURCES).await) {
        (Ok(status), Ok(nodes), Ok(resources)) => (status, nodes, resources),
        (Err(reason), _, _) | (_, Err(reason), _) | (_, _, Err(reason)) => return failed(reason),
    };
    let mut inv = parse::inventory(version, Some(&status), Some(&nodes), Some(&resources), &job.device);
    let online: Vec<String> = inv.nodes.iter().filter(|n| n.status == "online").map(|n| n.name.clone()).collect();
    for node in &online {
        if let Some(v) = api.get(&format!("/nodes/{node}/network")).await.ok(&mut failures) {
            inv.interfaces.extend(parse::interfaces(node, &v));
        }
        if let Some(v) = api.get(&format!("/nodes/{node}/disks/list")).await.ok(&mut failures) {
            inv.disks.extend(parse::disks(node, &v));
        }
    }
    for guest in inv.guests.iter_mut().filter(|g| online.contains(&g.node)) {
        let path = format!("/nodes/{}/{}/{}/config", guest.node, guest.kind, guest.vmid);
        if let Some(v) = api.get(&path).await.ok(&mut failures) {
            guest.config = parse::config(&v);
        }
    }
    inv.ceph = ceph(&mut api, online.first(), &mut failures).await;
    // A run cut short by its budget is not a smaller inventory: reported as collected,
    // it would record every guest it did not reach as gone.
    if api.over_budget() {
        return failed(PveFailure::TooLarge);
    }
    PveOutcome::Collected { inventory: Box::new(inv), endpoint_failures: failures, write_privileges }
}

/// Ceph as the cluster reports it; `None` when it is not installed.
async fn ceph(api: &mut Api<'_>, node: Option<&String>, failures: &mut Vec<EndpointFailure>) -> Option<PveCeph> {
    let status = match api.get(CEPH_STATUS).await {
        Fetch::Ok(v) => v,
        Fetch::Failed(f) if client::not_installed(&f) => return None,
        other => {
            other.ok(failures);
            return Some(PveCeph { health: "unavailable".into(), ..PveCeph::default() });
        }
    };
    let mut ceph = PveCeph { health: parse::ceph_health(&status), ..PveCeph::default() };
    let node = node?;
    if let Some(v) = api.get(&format!("/nodes/{node}/ceph/osd")).await.ok(failures) {
        ceph.osds = parse::ceph_osds(&v);
    }
    if let Some(v) = api.get(&format!("/nodes/{node}/ceph/pool")).await.ok(failures) {
        ceph.pools = parse::ceph_named(&v, "pool_name");
    }
    if let Some(v) = api.get(&format!("/nodes/{node}/ceph/fs")).await.ok(failures) {
        ceph.filesystems = parse::ceph_named(&v, "name");
    }
    Some(ceph)
}
