//! `portcullisd`: parses arguments and configuration, then runs the chosen components.

mod config;
mod dataplane;
mod sdnotify;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::ServerConfig;
use portcullis_ca::{Ca, SystemClock, api, server, tls};
use portcullis_proto::bastion::ServiceKind;
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "portcullisd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PORTCULLIS_GIT_REVISION"), ")"),
    about = "Portcullis server: SSH certificate authority, bastion and edge agent"
)]
struct Cli {
    /// Log lines as `text` (colour only on a terminal) or `json` (one object per line,
    /// with the span fields: session, user, device, connection), for a log shipper.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// Logs go to stderr (the journal under systemd); `RUST_LOG` filters them.
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().with_current_span(true).with_span_list(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on embedded SQLite with generated keys: for a first run and small sites.
    AllInOne {
        /// Where the database, keys, passphrase and policy live; created on first start.
        #[arg(long, default_value = "./portcullis-data", env = "PORTCULLIS_DATA_DIR")]
        data_dir: PathBuf,
        /// Address of the HTTPS API.
        #[arg(long, default_value = "127.0.0.1:8443", env = "PORTCULLIS_LISTEN")]
        listen: String,
        /// Extra DNS names or IPs for the bootstrap TLS certificate.
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
        /// Serve this PEM certificate chain (with `--tls-key`) instead of the bootstrap
        /// certificate, e.g. one browsers trust; re-read on SIGHUP.
        #[arg(long, requires = "tls_key", env = "PORTCULLIS_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert", env = "PORTCULLIS_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// A TOML file with an `[ldap]` table: users unknown locally are looked up there.
        #[arg(long)]
        ldap_config: Option<PathBuf>,
        /// A TOML file with an `[oidc]` table: single sign-on through an OpenID Connect provider.
        #[arg(long)]
        oidc_config: Option<PathBuf>,
        /// Address of the bastion's SSH listener (`ssh -p 2222 root%NODE@HOST`).
        #[arg(long, default_value = "127.0.0.1:2222", env = "PORTCULLIS_SSH_LISTEN")]
        ssh_listen: String,
        /// Address of the bastion's listener for edge agents in other networks (the
        /// built-in agent needs none: it is served in process).
        #[arg(long, default_value = "127.0.0.1:0")]
        agent_listen: String,
        /// Collect hardware facts from nodes matched by an `inventory_enrichment` rule
        /// (off by default: without it no discovery connection is ever made).
        #[arg(long)]
        discovery: bool,
        /// Discovery interval in seconds; also how often the bastion asks the CA for work.
        #[arg(long, default_value_t = 3600)]
        discovery_interval: u64,
        /// Proxmox VE inventory interval in seconds (collection runs only where a credential
        /// rule names a stored secret).
        #[arg(long, default_value_t = 3600)]
        pve_interval: u64,
        /// Fingerprint devices no credential rule covers, without credentials, marking
        /// `metadata.proxmox_candidate` (off by default: it connects to every device).
        #[arg(long)]
        pve_fingerprint: bool,
        /// The port fingerprinted.
        #[arg(long, default_value_t = 8006, value_parser = clap::value_parser!(u16).range(1..))]
        pve_fingerprint_port: u16,
        /// Serve `/metrics` (Prometheus) and the health checks here, plain HTTP (e.g.
        /// `127.0.0.1:9464`); off by default, never on the public port.
        #[arg(long)]
        metrics_listen: Option<String>,
        /// HTTPS connections kept open from one source (an IPv4 address, an IPv6 /64);
        /// 0 lifts the cap, for a listener behind a reverse proxy.
        #[arg(long, default_value_t = portcullis_ca::server::ConnectionLimits::default().per_source)]
        https_connections_per_source: usize,
        /// HTTPS connections kept open in all.
        #[arg(long, default_value_t = portcullis_ca::server::ConnectionLimits::default().total)]
        https_connections: usize,
        #[command(flatten)]
        front_door: dataplane::FrontDoorArgs,
    },
    /// The certificate authority (control plane) from a configuration file.
    Ca {
        #[arg(long, short, default_value = "/etc/portcullis/portcullisd.toml")]
        config: PathBuf,
    },
    /// Copy the live SQLite database to a new file (online), then check the copy: audit
    /// chain, users, nodes, CA keys. The CA passphrase is not in it: keep it apart.
    Backup {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a backup and put it in place as the database of a fresh data directory
    /// (never over an existing database); migrations bring an older backup up to date.
    Restore {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The backup file written by `portcullisd backup`.
        #[arg(long)]
        from: PathBuf,
    },
    /// Check a `ca` configuration file and its policy directory offline (no database, no
    /// listener): errors name the file, line and column; exit status 1 when invalid.
    Check {
        #[arg(long, short, default_value = "/etc/portcullis/portcullisd.toml")]
        config: PathBuf,
    },
    /// The bastion: SSH front door for users, listener for edge agents.
    Bastion {
        #[command(flatten)]
        service: ServiceArgs,
        /// Users' SSH listener.
        #[arg(long, default_value = "0.0.0.0:2222")]
        listen: String,
        /// Edge agents' listener.
        #[arg(long, default_value = "0.0.0.0:2223")]
        agent_listen: String,
        /// `host:port` agents dial to reach the agent listener (registered with the CA).
        #[arg(long)]
        agent_endpoint: String,
        #[command(flatten)]
        front_door: dataplane::FrontDoorArgs,
        #[command(flatten)]
        web: dataplane::WebArgs,
        /// Serve `/metrics` (Prometheus) and the health checks here, plain HTTP (e.g.
        /// `127.0.0.1:9465`); off by default, never on the public port.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// The edge agent: dials out to the bastions and connects onward inside its network.
    Agent {
        #[command(flatten)]
        service: ServiceArgs,
        /// `HOST:PORT=PUBLIC_KEY` of a bastion's agent listener (repeatable); default:
        /// every bastion the CA lists.
        #[arg(long = "bastion")]
        bastions: Vec<String>,
        /// `ADDR[/PREFIX]:PORT` the agent may connect to (repeatable); default: port 22
        /// of the devices the CA assigns to this agent.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Serve `/metrics` (Prometheus) and the health checks here, plain HTTP (e.g.
        /// `127.0.0.1:9466`); off by default.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

/// Which database `backup` and `restore` work on: the all-in-one's data directory, or the
/// `database_url` (else `<data_dir>/portcullis.db`) of a `ca` configuration file.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct DatabaseArgs {
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
}

impl DatabaseArgs {
    fn url(&self) -> anyhow::Result<String> {
        match (&self.data_dir, &self.config) {
            (Some(dir), _) => Ok(config::embedded_database_url(dir)),
            (None, Some(config)) => Ok(ServerConfig::from_file(config)?.database_url()),
            (None, None) => anyhow::bail!("give --data-dir or --config"),
        }
    }
}

#[derive(clap::Args)]
struct ServiceArgs {
    /// The CA's URL (`https://…`); several replicas separated by commas: calls go to the
    /// one that answered last and move on when it cannot be reached.
    #[arg(long)]
    ca: String,
    /// The CA's TLS public-key pin (`SHA256:…`); one per replica key, separated by commas.
    #[arg(long)]
    ca_fingerprint: String,
    /// This service's name, as the CA registers it.
    #[arg(long)]
    name: String,
    /// Holds the identity key and the CA credential.
    #[arg(long)]
    state_dir: PathBuf,
    /// One-time enrollment token (first start only).
    #[arg(long, env = "PORTCULLIS_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
}

impl ServiceArgs {
    fn endpoint(&self) -> dataplane::CaEndpoint {
        dataplane::CaEndpoint { url: self.ca.clone(), pin: self.ca_fingerprint.clone(), in_process: None }
    }
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (config, all_in_one) = match cli.command {
            Command::Bastion { service, listen, agent_listen, agent_endpoint, front_door, web, metrics_listen } => {
                // First: enrolling may wait long on an unreachable CA.
                keep_running_on_sighup("bastion");
                let identity = dataplane::enrolled_identity(
                    &service.endpoint(),
                    &service.state_dir,
                    ServiceKind::Bastion,
                    &service.name,
                    Some(agent_endpoint),
                    service.enroll_token.clone().map(SecretString::from),
                )
                .await?;
                let agents = tokio::net::TcpListener::bind(&agent_listen)
                    .await
                    .with_context(|| format!("cannot listen on {agent_listen}"))?;
                let (addr, bastion) =
                    dataplane::start_bastion(&service.endpoint(), identity, &listen, agents, front_door).await?;
                dataplane::start_web(&web, &service.state_dir, &bastion).await?;
                if let Some(addr) = metrics_listen {
                    dataplane::start_metrics(&addr, Arc::clone(&bastion)).await?;
                }
                println!("Portcullis bastion {} listening on {addr} (agents on {agent_listen})", service.name);
                sdnotify::ready(&format!("listening on {addr}"));
                wait_for_shutdown().await?;
                drain(&bastion).await;
                return Ok(());
            }
            Command::Agent { service, bastions, allow, metrics_listen } => {
                keep_running_on_sighup("agent");
                let identity = dataplane::enrolled_identity(
                    &service.endpoint(),
                    &service.state_dir,
                    ServiceKind::Agent,
                    &service.name,
                    None,
                    service.enroll_token.clone().map(SecretString::from),
                )
                .await?;
                let bastions =
                    bastions.iter().map(|b| dataplane::parse_bastion_arg(b)).collect::<Result<Vec<_>, _>>()?;
                let allow = if allow.is_empty() {
                    None
                } else {
                    Some(portcullis_bastion::edge::AllowList::parse(&allow).map_err(anyhow::Error::msg)?)
                };
                let status = dataplane::start_agent(&service.endpoint(), &service.name, identity, bastions, allow)?;
                if let Some(addr) = metrics_listen {
                    dataplane::start_metrics(&addr, status).await?;
                }
                println!("Portcullis agent {} running", service.name);
                sdnotify::ready("running");
                return wait_for_shutdown().await;
            }
            Command::AllInOne {
                data_dir,
                listen,
                tls_names,
                tls_cert,
                tls_key,
                ldap_config,
                oidc_config,
                ssh_listen,
                agent_listen,
                discovery,
                discovery_interval,
                pve_interval,
                pve_fingerprint,
                pve_fingerprint_port,
                metrics_listen,
                https_connections_per_source,
                https_connections,
                front_door,
            } => {
                let mut config = ServerConfig::all_in_one(&data_dir, &listen, tls_names)?;
                config.tls_cert = tls_cert;
                config.tls_key = tls_key;
                if let Some(path) = ldap_config {
                    config.ldap = Some(config::read_ldap_file(&path)?);
                }
                if let Some(path) = oidc_config {
                    config.oidc = Some(config::read_oidc_file(&path)?);
                }
                // Devices enrolled without an agent are reached through the built-in one.
                config.default_agent = Some(dataplane::LOCAL.to_owned());
                config.ssh_listen = Some((ssh_listen, agent_listen));
                config.refusal_summary_every = Some(front_door.refusal_summary_every);
                config.front_door = front_door;
                config.metrics_listen = metrics_listen;
                config.https_connections_per_source = Some(https_connections_per_source);
                config.https_connections = Some(https_connections);
                config.discovery = Some(config::DiscoveryToml {
                    enabled: discovery,
                    interval: Some(std::time::Duration::from_secs(discovery_interval.max(1))),
                    concurrency: None,
                });
                config.pve = Some(config::PveToml {
                    interval: Some(std::time::Duration::from_secs(pve_interval.max(1))),
                    concurrency: None,
                    fingerprint: pve_fingerprint,
                    fingerprint_port: Some(pve_fingerprint_port),
                });
                (config, true)
            }
            Command::Ca { config } => (ServerConfig::from_file(&config)?, false),
            Command::Backup { database, out } => {
                let report = portcullis_ca::backup::backup(&database.url()?, &out).await?;
                println!("Backed up {report}.");
                println!("The CA passphrase is not in the backup: keep it, and its backups, apart from this file.");
                return Ok(());
            }
            Command::Restore { database, from } => {
                let report = portcullis_ca::backup::restore(&from, &database.url()?).await?;
                println!("Restored {report}.");
                println!("Put the CA passphrase in place (ca-passphrase or the credential), then start the CA.");
                println!(
                    "What the CA recorded after this backup is not in it: revoke again every key, certificate and \
                     user revoked since. Nodes and bastions keep their newer KRL only until this CA publishes its \
                     next one."
                );
                return Ok(());
            }
            Command::Check { config } => {
                println!("{}", ServerConfig::from_file(&config)?.check()?);
                return Ok(());
            }
        };
        run(config, all_in_one).await
    })
}

async fn run(config: ServerConfig, all_in_one: bool) -> anyhow::Result<()> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => tls::operator_tls(cert, key)?,
        _ => tls::bootstrap_tls(&config.data_dir, &config.tls_names)?,
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let data_dir = config.data_dir.clone();
    let ssh_listen = config.ssh_listen.clone();
    let front_door = config.front_door;
    let metrics_listen = config.metrics_listen.clone();
    let connection_limits = config.connection_limits()?;
    let enroll_binary = config.enroll_binary.clone().or_else(default_enroll_binary);
    let mut ca_config = config.into_ca_config()?;
    ca_config.tls_pin = tls.pin.clone();
    ca_config.enroll_binary = enroll_binary;
    let ca = Arc::new(Ca::open(ca_config, Arc::new(SystemClock)).await?);

    let url = format!("https://{addr}");
    println!("Portcullis CA listening on {url}");
    println!("TLS public-key pin: {}", tls.pin);
    if let Some(curl) = portcullis_proto::pin::curl_pin(&tls.pin) {
        println!("  (for curl: --pinnedpubkey '{curl}')");
    }
    print!(
        "User CA public key(s), for sshd's TrustedUserCAKeys:\n{}",
        ca.core().trusted_keys(portcullis_ca::keys::KeyPurpose::User)
    );
    // With no user at all there would be no way in: create `admin`. The all-in-one shows
    // the password on the operator's terminal; the `ca` service (whose stdout is a journal)
    // only says which 0600 file holds it.
    config::announce_bootstrap_admin(&ca, &data_dir, all_in_one).await?;

    if let Some(addr) = metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        println!("Metrics on http://{}/metrics", listener.local_addr()?);
        let ca = Arc::clone(&ca);
        tokio::spawn(async move {
            if let Err(e) = api::serve_metrics(listener, ca).await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    spawn_reload_on_sighup(Arc::clone(&ca), tls.reloader.clone());
    spawn_tls_watch(tls.reloader.clone());
    spawn_housekeeping(Arc::clone(&ca));
    // The all-in-one serves the browser console's WebSocket on the same origin as the
    // web UI; the endpoint answers 503 until its bastion is attached below.
    let console = portcullis_bastion::console::ConsoleEndpoint::new(Vec::new());
    let mut router = api::router(Arc::clone(&ca));
    if ssh_listen.is_some() {
        router = router.merge(console.router());
    }
    // On SIGTERM the bastion drains first, while the API still takes its sessions' closes.
    let draining: Arc<std::sync::OnceLock<Arc<portcullis_bastion::Bastion>>> = Arc::default();
    // The all-in-one's own bastion and agent call this router in process.
    let in_process = portcullis_bastion::InProcessCa::new(router.clone());
    let api = tokio::spawn(server::serve(listener, tls.config, router, connection_limits, {
        let draining = Arc::clone(&draining);
        async move {
            let _ = wait_for_shutdown().await;
            if let Some(bastion) = draining.get() {
                drain(bastion).await;
            }
        }
    }));
    if let Some(ssh_listen) = ssh_listen {
        let endpoint = dataplane::CaEndpoint {
            url: format!("https://127.0.0.1:{}", addr.port()),
            pin: tls.pin.clone(),
            in_process: Some(in_process),
        };
        let (ssh_addr, bastion) =
            dataplane::start_local_data_plane(&ca, &data_dir, &endpoint, &ssh_listen, front_door).await?;
        console.attach(&bastion);
        let _ = draining.set(Arc::clone(&bastion));
        println!("Bastion listening on {ssh_addr}: ssh -p {} root%NODE@{}", ssh_addr.port(), ssh_addr.ip());
        println!("Web UI (browser console): {url}/ui/");
    }
    if all_in_one {
        // Last line of the banner (tests wait for it).
        println!("Log in: portcullis login --ca {url} --ca-fingerprint {} --user admin", tls.pin);
    }
    sdnotify::ready(&format!("serving on {url}"));
    let _ = api.await;
    // The refusal window still open would go with the process.
    if let Err(e) = ca.core().flush_refusals_now().await {
        tracing::warn!(error = %e, "could not record the last refusal window");
    }
    ca.core().store().close().await;
    Ok(())
}

/// How long a stopping bastion waits for its sessions to close and reach the CA.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Closes every session as `shutdown` (users are told why), bounded by [`DRAIN_WITHIN`].
async fn drain(bastion: &portcullis_bastion::Bastion) {
    let left = bastion.drain(DRAIN_WITHIN).await;
    if left > 0 {
        tracing::warn!(left, "sessions still open at the end of the drain; their leases expire on their own");
    }
}

/// Until SIGINT or SIGTERM.
async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
    sdnotify::stopping();
    Ok(())
}

/// The CA's own timer: quiet bastions' leases are reclaimed and a finished refusal
/// window is summarized even when no heartbeat or refusal comes along to do it.
fn spawn_housekeeping(ca: Arc<Ca>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = ca.housekeeping().await {
                tracing::warn!(error = %e, "housekeeping failed; retrying in 5 s");
            }
        }
    });
}

/// A SIGHUP (`systemctl reload`) must never end a data-plane role: with no handler, the
/// signal's default action ends the process, which systemd takes as a clean exit and does
/// not restart. What a role reloads on it (the web front door's certificate) has its own
/// handler; this one only says so.
fn keep_running_on_sighup(role: &'static str) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(role, "SIGHUP: TLS certificates are re-read where there are any; nothing else to reload");
        }
    });
}

/// `systemctl reload` sends SIGHUP: re-read the policy directory and the TLS
/// certificate. A broken policy is refused (and audited) and the running one stays in
/// force; a certificate that does not load leaves the served one in place.
fn spawn_reload_on_sighup(ca: Arc<Ca>, tls: tls::CertReloader) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policy reload only through the API");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match ca.admin().reload_policy_on_signal().await {
                Ok(r) => {
                    tracing::info!(digest = %r.digest, changed = r.changed, "policy reloaded on SIGHUP")
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the previous policy stays in force")
                }
            }
            log_tls_reload(tls.reload());
        }
    });
}

/// How often the TLS certificate and key files are looked at for a renewal on disk.
const TLS_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves a certificate renewed on disk from the next handshake, without a signal.
pub(crate) fn spawn_tls_watch(tls: tls::CertReloader) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TLS_WATCH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let watched = tls.clone();
            // File metadata (and a reload's reads) block: off the runtime's threads.
            match tokio::task::spawn_blocking(move || watched.reload_if_changed()).await {
                Ok(Some(result)) => log_tls_reload(result),
                Ok(None) => {}
                Err(_) => tracing::error!("TLS certificate watch task failed"),
            }
        }
    });
}

/// Says how a TLS certificate reload went; loudly when its key (the pin clients check)
/// changed.
pub(crate) fn log_tls_reload(result: Result<tls::Reloaded, portcullis_ca::error::CaError>) {
    match result {
        Ok(r) if !r.new_key => tracing::info!(pin = %r.pin, "TLS certificate reloaded (same key)"),
        Ok(r) => tracing::warn!(
            new = %r.pin,
            "TLS certificate reloaded with a NEW key: clients pinning the old one (bastions, agents, the CLI) refuse it until given the new pin"
        ),
        Err(e) => {
            tracing::error!(error = %e, "TLS certificate reload failed; the previous certificate stays in use")
        }
    }
}

/// Installed side by side (a package, or `cargo build`), the enrollment tool sits next
/// to the server binary.
fn default_enroll_binary() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join("portcullis-enroll"))
}
