//! Hardware discovery, the bastion's half: runs the CA's discovery jobs through the
//! nodes' agents.
//!
//! Every `next_claim_secs` the bastion asks the CA for due work, sending the agents
//! connected to it and a fresh Ed25519 key for the round (in memory only). While the CA
//! says discovery is off, that is all it does: no node is ever contacted. Each job is one
//! SSH connection through the node's agent: the host key must be one of the keys pinned
//! at enrollment (never trust on first use, whatever a rule says), the login uses the
//! job's certificate (forced command, no pty, valid on that node only), stdout is captured
//! up to [`MAX_DISCOVERY_OUTPUT_BYTES`] (more is `output_too_large`, not truncated), with
//! a connect and an exec timeout. The raw output or the failure reason goes back to the
//! CA, which parses and stores it. Jobs run with bounded concurrency, scheduled per
//! node: one failing or hanging node never stops or delays the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::discovery::*;
use russh::client;
use russh::keys::PrivateKey;
use russh::{ChannelMsg, Disconnect};
use ssh_key::Certificate;

use crate::agent_hub::BrokerError;
use crate::host_keys::{HostKeyChecker, HostKeys};
use crate::shared::Shared;

/// Wait before the first claim, and after a failed one.
const FIRST_CLAIM: Duration = Duration::from_secs(1);
const RETRY_CLAIM: Duration = Duration::from_secs(30);

/// Asks the CA for work forever; see the module doc. Jobs are scheduled per node: a
/// claim does not wait for the previous round to finish, so a node that hangs until its
/// timeouts delays only itself (the CA does not hand a node out again while its run is
/// open). At most [`MAX_JOBS_PER_CLAIM`] jobs are in flight, `concurrency` of them
/// connected at once.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut wait = FIRST_CLAIM;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut limit = crate::run_limit::RunLimit::default();
    loop {
        tokio::time::sleep(wait).await;
        // Finished jobs are reaped (a panicking job ends only its own task).
        while in_flight.try_join_next().is_some() {}
        let free = MAX_JOBS_PER_CLAIM.saturating_sub(u32::try_from(in_flight.len()).unwrap_or(u32::MAX));
        if free == 0 {
            wait = FIRST_CLAIM;
            continue;
        }
        let Some((key, public_key)) = crate::terminated::session_key() else {
            wait = RETRY_CLAIM;
            continue;
        };
        let request = DiscoveryClaimRequest { agents: shared.agents.names(), public_key, max_jobs: free };
        let answer = match shared.control.claim_discovery(&request).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "discovery claim failed");
                wait = RETRY_CLAIM;
                continue;
            }
        };
        wait = Duration::from_secs(answer.next_claim_secs.clamp(1, 86_400));
        if !answer.enabled || answer.jobs.is_empty() {
            continue;
        }
        let permits = limit.permits(answer.concurrency);
        let key = Arc::new(key);
        for job in answer.jobs {
            let (shared, key, permits) = (Arc::clone(&shared), Arc::clone(&key), Arc::clone(&permits));
            in_flight.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let span = tracing::info_span!("discovery", run_id = %job.run_id, device = %job.device);
                let outcome = tracing::Instrument::instrument(run_job(&shared, key, &job), span.clone()).await;
                if let DiscoveryOutcome::Failed { reason } = &outcome {
                    span.in_scope(|| tracing::info!(reason = reason.as_str(), "discovery run failed"));
                }
                let report = DiscoveryReportRequest { run_id: job.run_id.clone(), device: job.device.clone(), outcome };
                if let Err(e) = shared.control.report_discovery(&report).await {
                    span.in_scope(|| tracing::warn!(error = %e, "discovery report not accepted"));
                }
            });
        }
    }
}

/// One node: connect through its agent, log in, run the forced command, capture stdout.
async fn run_job(shared: &Shared, key: Arc<PrivateKey>, job: &DiscoveryJob) -> DiscoveryOutcome {
    let failed = |reason| DiscoveryOutcome::Failed { reason };
    let Ok(cert) = Certificate::from_openssh(job.certificate.trim()) else {
        return failed(DiscoveryFailure::AuthFailed);
    };
    let originator = SocketAddr::from(([127, 0, 0, 1], 0));
    // One deadline for reaching the node and logging in: the seed's connect timeout
    // bounds the whole connection, not each of its two steps.
    let connected_by = tokio::time::Instant::now() + Duration::from_secs(DISCOVERY_CONNECT_TIMEOUT_SECS);
    let opened = tokio::time::timeout_at(
        connected_by,
        shared.agents.open(&job.agent, &job.target_host, job.target_port, originator),
    );
    let channel = match opened.await {
        Err(_) => return failed(DiscoveryFailure::Timeout),
        Ok(Err(BrokerError::AgentUnavailable)) => return failed(DiscoveryFailure::AgentUnavailable),
        Ok(Err(_)) => return failed(DiscoveryFailure::TargetUnreachable),
        Ok(Ok((channel, _link))) => channel,
    };
    let checker = HostKeys::pinned(&job.known_host_keys).checker::<DiscoveryError>();
    // Dropping the session does not end the client's task: a node that stops reading
    // (and floods keepalives whose answers then cannot be written) would keep it, and
    // the agent channel under it, for good. These limits end it.
    let config = Arc::new(client::Config {
        preferred: crate::algorithms::preferred_client(),
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_max: 3,
        inactivity_timeout: Some(Duration::from_secs(DISCOVERY_CONNECT_TIMEOUT_SECS + DISCOVERY_EXEC_TIMEOUT_SECS)),
        ..client::Config::default()
    });
    let login = async {
        let mut session = client::connect_stream(config, channel.into_stream(), checker).await?;
        let auth = session.authenticate_openssh_cert(job.login.clone(), key, cert).await?;
        if !auth.success() {
            return Err(DiscoveryError::AuthFailed);
        }
        Ok::<_, DiscoveryError>(session)
    };
    let session = match tokio::time::timeout_at(connected_by, login).await {
        Err(_) => return failed(DiscoveryFailure::Timeout),
        Ok(Err(e)) => return failed(e.failure()),
        Ok(Ok(session)) => session,
    };
    let exec = Duration::from_secs(DISCOVERY_EXEC_TIMEOUT_SECS);
    let outcome = match tokio::time::timeout(exec, capture(&session)).await {
        Err(_) => failed(DiscoveryFailure::Timeout),
        Ok(outcome) => outcome,
    };
    // The outcome is known; a node slow to take the goodbye does not hold the job.
    let _ = tokio::time::timeout(Duration::from_secs(2), session.disconnect(Disconnect::ByApplication, "", "")).await;
    outcome
}

/// Runs the (forced) command and reads stdout up to the cap; stderr is discarded.
async fn capture(session: &client::Handle<HostKeyChecker<DiscoveryError>>) -> DiscoveryOutcome {
    let failed = |reason| DiscoveryOutcome::Failed { reason };
    let Ok(mut channel) = session.channel_open_session().await else {
        return failed(DiscoveryFailure::TargetUnreachable);
    };
    // The certificate forces the command; naming it too keeps the node's log readable.
    if channel.exec(true, DISCOVERY_COMMAND).await.is_err() {
        return failed(DiscoveryFailure::CommandFailed);
    }
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if stdout.len().saturating_add(data.len()) > MAX_DISCOVERY_OUTPUT_BYTES {
                    return failed(DiscoveryFailure::OutputTooLarge);
                }
                stdout.extend_from_slice(&data);
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::ExitSignal { .. } => return failed(DiscoveryFailure::CommandFailed),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    if status != Some(0) {
        return failed(DiscoveryFailure::CommandFailed);
    }
    match String::from_utf8(stdout) {
        Ok(stdout) => DiscoveryOutcome::Output { stdout },
        Err(_) => failed(DiscoveryFailure::OutputInvalid),
    }
}

#[derive(Debug, thiserror::Error)]
enum DiscoveryError {
    #[error("host key not pinned for this node")]
    HostKey,
    #[error("the node refused the discovery certificate")]
    AuthFailed,
    #[error("SSH: {0}")]
    Ssh(russh::Error),
}

impl From<russh::Error> for DiscoveryError {
    fn from(e: russh::Error) -> Self {
        match e {
            russh::Error::UnknownKey => DiscoveryError::HostKey,
            e => DiscoveryError::Ssh(e),
        }
    }
}

impl DiscoveryError {
    fn failure(&self) -> DiscoveryFailure {
        match self {
            DiscoveryError::HostKey => DiscoveryFailure::HostKeyMismatch,
            DiscoveryError::AuthFailed => DiscoveryFailure::AuthFailed,
            DiscoveryError::Ssh(_) => DiscoveryFailure::TargetUnreachable,
        }
    }
}
