//! `portcullisd`: parses arguments and configuration, then runs the chosen components.

mod config;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::ServerConfig;
use portcullis_ca::{Ca, SystemClock, api, server, tls};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "portcullisd",
    version,
    about = "Portcullis server: SSH certificate authority (and, later, bastion and agent)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// A TOML file with an `[ldap]` table: users unknown locally are looked up there.
        #[arg(long)]
        ldap_config: Option<PathBuf>,
        /// A TOML file with an `[oidc]` table: single sign-on through an OpenID Connect provider.
        #[arg(long)]
        oidc_config: Option<PathBuf>,
    },
    /// The certificate authority (control plane) from a configuration file.
    Ca {
        #[arg(long, short, default_value = "/etc/portcullis/portcullisd.toml")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (config, all_in_one) = match cli.command {
            Command::AllInOne { data_dir, listen, tls_names, ldap_config, oidc_config } => {
                let mut config = ServerConfig::all_in_one(&data_dir, &listen, tls_names)?;
                if let Some(path) = ldap_config {
                    config.ldap = Some(config::read_ldap_file(&path)?);
                }
                if let Some(path) = oidc_config {
                    config.oidc = Some(config::read_oidc_file(&path)?);
                }
                (config, true)
            }
            Command::Ca { config } => (ServerConfig::from_file(&config)?, false),
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
        ca.trusted_keys(portcullis_ca::keys::KeyPurpose::User)
    );
    // With no user at all there would be no way in: create `admin`. The all-in-one shows
    // the password on the operator's terminal; the `ca` service (whose stdout is a journal)
    // only says which 0600 file holds it.
    config::announce_bootstrap_admin(&ca, &data_dir, all_in_one).await?;
    if all_in_one {
        println!("Log in: portcullis login --ca {url} --ca-fingerprint {} --user admin", tls.pin);
    }

    spawn_reload_on_sighup(Arc::clone(&ca));
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
    };
    server::serve(listener, tls.config, api::router(Arc::clone(&ca)), shutdown).await;
    ca.store().close().await;
    Ok(())
}

/// `systemctl reload` sends SIGHUP: re-read the policy directory. A broken policy is
/// refused (and audited) and the running one stays in force.
fn spawn_reload_on_sighup(ca: Arc<Ca>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policy reload only through the API");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match ca.reload_policy_on_signal().await {
                Ok(r) => {
                    tracing::info!(digest = %r.digest, changed = r.changed, "policy reloaded on SIGHUP")
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the previous policy stays in force")
                }
            }
        }
    });
}

/// Installed side by side (a package, or `cargo build`), the enrollment tool sits next
/// to the server binary.
fn default_enroll_binary() -> Option<PathBuf> {
    Some(std::env::current_exe().ok()?.parent()?.join("portcullis-enroll"))
}
