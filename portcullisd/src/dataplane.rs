//! The data plane in `portcullisd`: the bastion and the edge agent, standalone or inside
//! the all-in-one.
//!
//! A service keeps its identity in a state directory: `identity` (its Ed25519 private
//! key, 0600, generated on first start and never sent anywhere) and `api-token` (the
//! `pcs_…` credential the CA returned at enrollment, 0600). The first start needs a
//! one-time enrollment token minted for the service's kind.

use anyhow::{Context, bail};
use portcullis_bastion::edge::{self, AgentConfig, AllowList, BastionEndpoint};
use portcullis_bastion::{
    Bastion, BastionConfig, ControlConfig, ControlPlane, EventSink, InProcessCa, SystemClock, TrustConfig, TrustSource,
};
use portcullis_ca::fsutil;
use portcullis_proto::bastion::{ServiceEnrollRequest, ServiceKind, ServiceProof};
use secrecy::{ExposeSecret, SecretString};
use ssh_key::rand_core::UnwrapErr;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the CA is, pinned; the all-in-one's own data plane calls it in process.
#[derive(Debug, Clone)]
pub struct CaEndpoint {
    pub url: String,
    pub pin: String,
    pub in_process: Option<InProcessCa>,
}

/// The service's key and CA credential, from its state directory.
pub struct Identity {
    pub key: PrivateKey,
    pub api_token: SecretString,
}

/// Loads the identity key, generating it on first start.
pub fn identity_key(state_dir: &Path) -> anyhow::Result<PrivateKey> {
    portcullis_ca::fsutil::create_private_dir(state_dir)?;
    let path = state_dir.join("identity");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let key =
            PrivateKey::from_openssh(&text).with_context(|| format!("{} is not an OpenSSH key", path.display()))?;
        if key.algorithm() != Algorithm::Ed25519 {
            bail!("{} must be an Ed25519 key", path.display());
        }
        return Ok(key);
    }
    let key = PrivateKey::random(&mut UnwrapErr(ssh_key::getrandom::SysRng), Algorithm::Ed25519)
        .map_err(|_| anyhow::anyhow!("cannot generate the identity key"))?;
    let text = key.to_openssh(LineEnding::LF).map_err(|_| anyhow::anyhow!("cannot encode the identity key"))?;
    fsutil::write_private(&path, text.as_bytes())?;
    Ok(key)
}

/// The identity of a standalone service: enrolls with `enroll_token` the first time.
pub async fn enrolled_identity(
    ca: &CaEndpoint,
    state_dir: &Path,
    kind: ServiceKind,
    name: &str,
    agent_endpoint: Option<String>,
    enroll_token: Option<SecretString>,
) -> anyhow::Result<Identity> {
    let key = identity_key(state_dir)?;
    let token_path = state_dir.join("api-token");
    if token_path.exists() {
        let token = std::fs::read_to_string(&token_path)?.trim().to_owned();
        return Ok(Identity { key, api_token: SecretString::from(token) });
    }
    let Some(enroll_token) = enroll_token else {
        bail!(
            "not enrolled yet: pass --enroll-token (from `portcullis admin enroll-token create --service {}`)",
            kind.as_str()
        );
    };
    let mut request = ServiceEnrollRequest {
        kind,
        name: name.to_owned(),
        public_key: public_line(&key)?,
        agent_endpoint,
        proof: None,
    };
    // Proof of holding the key: the CA requires it to re-enroll a registered name.
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let message = request.proof_message(enroll_token.expose_secret(), timestamp);
    let signature = key
        .sign(ServiceProof::NAMESPACE, ssh_key::HashAlg::Sha512, message.as_bytes())
        .and_then(|s| s.to_pem(LineEnding::LF))
        .map_err(|_| anyhow::anyhow!("cannot sign the enrollment proof"))?;
    request.proof = Some(ServiceProof { timestamp, signature });
    let answer = ControlPlane::enroll(&ca.url, &ca.pin, &enroll_token, &request)
        .await
        .with_context(|| format!("enrollment of {} {name} failed", kind.as_str()))?;
    fsutil::write_private(&token_path, answer.api_token.expose().as_bytes())?;
    println!("Enrolled {} {name} with the CA.", kind.as_str());
    Ok(Identity { key, api_token: SecretString::from(answer.api_token.expose()) })
}

pub fn public_line(key: &PrivateKey) -> anyhow::Result<String> {
    PublicKey::new(key.public_key().key_data().clone(), "")
        .to_openssh()
        .map_err(|_| anyhow::anyhow!("cannot encode a public key"))
}

pub fn control_plane(ca: &CaEndpoint, token: &SecretString) -> anyhow::Result<Arc<ControlPlane>> {
    Ok(Arc::new(ControlPlane::new(ControlConfig {
        ca_url: ca.url.clone(),
        ca_pin: ca.pin.clone(),
        in_process: ca.in_process.clone(),
        api_token: SecretString::from(token.expose_secret().to_owned()),
        timeout: Duration::from_secs(10),
    })?))
}

/// Settings of the bastion's SSH front door (all-in-one and standalone bastion).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct FrontDoorArgs {
    /// How often refusals of unauthenticated clients beyond the first of each source,
    /// reason and user are written as one `refusals_summarized` audit record.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub refusal_summary_every: std::time::Duration,
    /// Key exchange offered to SSH clients: `compatible` (mlkem768x25519-sha256 first,
    /// X25519 for clients before OpenSSH 9.9) or `strict` (the post-quantum hybrid only:
    /// ssh-audit finds nothing to warn about; older clients cannot connect).
    #[arg(long, default_value = "compatible")]
    pub ssh_kex: portcullis_bastion::KexProfile,
}

impl Default for FrontDoorArgs {
    fn default() -> Self {
        Self {
            refusal_summary_every: std::time::Duration::from_secs(60),
            ssh_kex: portcullis_bastion::KexProfile::Compatible,
        }
    }
}

/// Starts the bastion: trust refresh, heartbeat, audit forwarding, both listeners.
/// Returns once the listeners are bound; the tasks run until the process ends.
pub async fn start_bastion(
    ca: &CaEndpoint,
    identity: Identity,
    ssh_listen: &str,
    agent_listener: tokio::net::TcpListener,
    front_door: FrontDoorArgs,
) -> anyhow::Result<(std::net::SocketAddr, Arc<Bastion>)> {
    let clock: Arc<dyn portcullis_bastion::Clock> = Arc::new(SystemClock);
    let trust = Arc::new(TrustSource::new(
        TrustConfig { in_process: ca.in_process.clone(), ..TrustConfig::new(&ca.url, &ca.pin) },
        Arc::clone(&clock),
    )?);
    if let Err(e) = trust.refresh().await {
        tracing::warn!(error = %e, "first trust refresh failed; refusing every login until it succeeds");
    }
    trust.spawn_refresher();
    let control = control_plane(ca, &identity.api_token)?;
    let mut events = EventSink::new();
    events.forward_to(Arc::clone(&control), front_door.refusal_summary_every);
    // Users pin this key (`portcullis ssh-config --bastion` fetches it from the CA).
    println!("Bastion host key: {}", identity.key.public_key().fingerprint(ssh_key::HashAlg::Sha256));
    let config = BastionConfig { kex_profile: front_door.ssh_kex, ..BastionConfig::new(identity.key) };
    let bastion = Arc::new(Bastion::new(config, trust, control, clock, events)?);
    let listener =
        tokio::net::TcpListener::bind(ssh_listen).await.with_context(|| format!("cannot listen on {ssh_listen}"))?;
    let addr = listener.local_addr()?;
    bastion.spawn_heartbeat();
    bastion.spawn_discovery();
    bastion.spawn_pve();
    tokio::spawn({
        let bastion = Arc::clone(&bastion);
        async move {
            if let Err(e) = bastion.serve_agents(agent_listener).await {
                tracing::error!(error = %e, "agent listener failed");
            }
        }
    });
    tokio::spawn({
        let bastion = Arc::clone(&bastion);
        async move {
            if let Err(e) = bastion.serve(listener).await {
                tracing::error!(error = %e, "SSH listener failed");
            }
        }
    });
    Ok((addr, bastion))
}

/// The standalone bastion's web front door ([`portcullis_bastion::web`]): the web UI and
/// the browser console on the bastion's own HTTPS origin.
#[derive(clap::Args, Debug, Clone)]
pub struct WebArgs {
    /// Serve the web UI and the browser console over HTTPS here (e.g. `0.0.0.0:443`); the
    /// UI's API calls are passed on to the CA. Off when not given.
    #[arg(long, env = "PORTCULLIS_WEB_LISTEN")]
    pub web_listen: Option<String>,
    /// PEM certificate chain of the web front door (with `--web-tls-key`); without them a
    /// self-signed certificate is generated in the state directory, which browsers warn about.
    #[arg(long, requires = "web_tls_key", env = "PORTCULLIS_WEB_TLS_CERT")]
    pub web_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "web_tls_cert", env = "PORTCULLIS_WEB_TLS_KEY")]
    pub web_tls_key: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated certificate (beside localhost and 127.0.0.1).
    #[arg(long = "web-tls-name")]
    pub web_tls_names: Vec<String>,
}

/// Starts the web front door when `--web-listen` is given; returns its address.
pub async fn start_web(
    args: &WebArgs,
    state_dir: &Path,
    bastion: &Bastion,
) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let Some(listen) = &args.web_listen else { return Ok(None) };
    let tls = match (&args.web_tls_cert, &args.web_tls_key) {
        (Some(cert), Some(key)) => portcullis_ca::tls::operator_tls(cert, key)?,
        _ => {
            let dir = state_dir.join("web-tls");
            portcullis_ca::fsutil::create_private_dir(&dir)?;
            let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            names.extend(args.web_tls_names.iter().cloned());
            portcullis_ca::tls::bootstrap_tls(&dir, &names)?
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    // Same-origin only: the pages that ask for tickets are served by this listener.
    let console = portcullis_bastion::console::ConsoleEndpoint::new(Vec::new());
    console.attach(bastion);
    let router = portcullis_bastion::web::router(&console);
    // It stops with the process, after the bastion's drain.
    let limits = portcullis_ca::server::ConnectionLimits::default();
    tokio::spawn(portcullis_ca::server::serve(listener, tls.config, router, limits, std::future::pending()));
    // `systemctl reload` or a renewal on disk: the new certificate from the next handshake.
    crate::spawn_tls_watch(tls.reloader.clone());
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let reloader = tls.reloader;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                crate::log_tls_reload(reloader.reload());
            }
        });
    }
    println!("Web UI (browser console): https://{addr}/ui/ (TLS public-key pin {})", tls.pin);
    Ok(Some(addr))
}

/// Serves a bastion's or agent's `/metrics`, `/healthz` and `/readyz` on `addr` (plain HTTP).
pub async fn start_metrics<T: portcullis_bastion::metrics::Observed>(addr: &str, role: Arc<T>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("Metrics on http://{}/metrics", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = portcullis_bastion::metrics::serve(listener, role).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

/// Runs the edge agent (spawned; returns at once).
pub fn start_agent(
    ca: &CaEndpoint,
    name: &str,
    identity: Identity,
    bastions: Vec<BastionEndpoint>,
    allow: Option<AllowList>,
) -> anyhow::Result<Arc<edge::AgentStatus>> {
    let config = agent_config(ca, name, identity, bastions, allow)?;
    let status = Arc::clone(&config.status);
    tokio::spawn(edge::run(config));
    Ok(status)
}

/// The all-in-one's agent, served by `bastion` in this process (no SSH link to itself).
/// Returns once the agent has its allow-list from the CA.
pub async fn start_in_process_agent(
    ca: &CaEndpoint,
    name: &str,
    identity: Identity,
    bastion: &portcullis_bastion::Bastion,
) -> anyhow::Result<()> {
    let agent = edge::InProcessAgent::start(agent_config(ca, name, identity, Vec::new(), None)?).await;
    bastion.attach_in_process_agent(agent);
    Ok(())
}

fn agent_config(
    ca: &CaEndpoint,
    name: &str,
    identity: Identity,
    bastions: Vec<BastionEndpoint>,
    allow: Option<AllowList>,
) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig {
        name: name.to_owned(),
        key: Arc::new(identity.key),
        control: control_plane(ca, &identity.api_token)?,
        bastions,
        allow,
        connect_timeout: Duration::from_secs(10),
        status: Arc::default(),
        clock: Arc::new(portcullis_bastion::SystemClock),
    })
}

/// `--bastion HOST:PORT=KEYFILE_OR_KEYLINE` for agents that should not rely on the CA's
/// directory.
pub fn parse_bastion_arg(arg: &str) -> anyhow::Result<BastionEndpoint> {
    let (address, key) = arg.split_once('=').context("expected HOST:PORT=PUBLIC_KEY_FILE")?;
    let text = std::fs::read_to_string(PathBuf::from(key)).unwrap_or_else(|_| key.to_owned());
    let host_key = PublicKey::from_openssh(text.trim()).context("the bastion host key does not parse")?;
    Ok(BastionEndpoint { address: address.to_owned(), host_key })
}

/// Name of the all-in-one's own bastion and agent.
pub const LOCAL: &str = "local";

/// The all-in-one's bastion and agent, registered with the CA in-process (no token)
/// and calling it through its own API with their credentials like remote ones would —
/// the router called in this process (`endpoint.in_process`).
pub async fn start_local_data_plane(
    ca: &portcullis_ca::Ca,
    data_dir: &std::path::Path,
    endpoint: &CaEndpoint,
    (ssh_listen, agent_listen): &(String, String),
    front_door: FrontDoorArgs,
) -> anyhow::Result<(std::net::SocketAddr, Arc<portcullis_bastion::Bastion>)> {
    let agents = tokio::net::TcpListener::bind(agent_listen)
        .await
        .with_context(|| format!("cannot listen on {agent_listen}"))?;
    let mut agent_addr = agents.local_addr()?;
    println!("Edge agents connect to {agent_addr}");
    // A listener on every address is listed in the bastion directory as loopback (no
    // better address is known here; agents elsewhere are given `--bastion`).
    if agent_addr.ip().is_unspecified() {
        agent_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let bastion_key = identity_key(&data_dir.join("bastion"))?;
    let registered = ca
        .services()
        .register_service(ServiceKind::Bastion, LOCAL, &public_line(&bastion_key)?, Some(&agent_addr.to_string()))
        .await?;
    let identity = Identity { key: bastion_key, api_token: SecretString::from(registered.api_token.expose()) };
    let (ssh_addr, bastion) = start_bastion(endpoint, identity, ssh_listen, agents, front_door).await?;

    let agent_key = identity_key(&data_dir.join("agent"))?;
    let registered = ca.services().register_service(ServiceKind::Agent, LOCAL, &public_line(&agent_key)?, None).await?;
    let identity = Identity { key: agent_key, api_token: SecretString::from(registered.api_token.expose()) };
    start_in_process_agent(endpoint, LOCAL, identity, &bastion).await?;
    Ok((ssh_addr, bastion))
}
