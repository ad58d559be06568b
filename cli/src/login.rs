//! `login`, `status`, `logout`, `ssh-config`: the user's side of the certificate flow.

use crate::api::{Api, Refused};
use crate::args::{LoginArgs, SshConfigArgs};
use crate::shared::printable;
use crate::state::{Installed, KeyFiles, Paths, Session, read_certificate, write_atomic};
use anyhow::{Context, anyhow, bail};
use portcullis_policies::parse_account;
use portcullis_proto::oidc::AuthMethods;
use portcullis_proto::pin::normalize_pin;
use portcullis_proto::{LoginResponse, RevokeOwnRequest, RevokeResponse, UserCertRequest, UserCertResponse};
use secrecy::{ExposeSecret, SecretString};
use ssh_key::Certificate;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn when(ts: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(i64::try_from(ts).unwrap_or(i64::MAX)) else {
        return ts.to_string();
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.format(&fmt).unwrap_or_else(|_| ts.to_string())
}

fn span(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn read_password(prompt: &str, from_stdin: bool) -> anyhow::Result<SecretString> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        rpassword::prompt_password(prompt)
            .context("cannot read the password (use --password-stdin without a terminal)")?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(SecretString::from(password))
}

/// A new password: the next line of stdin, or typed twice at the terminal.
fn read_new_password(username: &str, from_stdin: bool) -> anyhow::Result<SecretString> {
    let new = read_password(&format!("New password for {username}: "), from_stdin)?;
    if !from_stdin && read_password("Repeat the new password: ", false)?.expose_secret() != new.expose_secret() {
        bail!("the two new passwords differ; nothing was changed");
    }
    Ok(new)
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let paths = Paths::new()?;
    let previous = paths.load_session();
    // One spelling of the CA's address, so `https://ca:8443/` keeps the pin remembered
    // for `https://ca:8443` (it was dropped, falling back to the system's roots).
    let ca_url = args
        .ca
        .clone()
        .or_else(|| previous.as_ref().map(|s| s.ca_url.clone()))
        .ok_or_else(|| anyhow!("no CA known yet: pass --ca https://HOST:PORT"))?
        .trim_end_matches('/')
        .to_owned();
    let pin = match &args.ca_fingerprint {
        Some(fp) => Some(normalize_pin(fp).ok_or_else(|| anyhow!("--ca-fingerprint must look like SHA256:<base64>"))?),
        // A remembered pin only applies to the CA it was given for.
        None => previous
            .as_ref()
            .filter(|s| s.ca_url.trim_end_matches('/') == ca_url)
            .and_then(|s| s.ca_fingerprint.clone()),
    };
    let ttl_seconds = args
        .ttl
        .as_deref()
        .map(|t| duration_secs(t).ok_or_else(|| anyhow!("--ttl must be a duration like 1h or 30m")))
        .transpose()?;

    let api = Api::new(&ca_url, pin.as_deref())?;
    let password_requested =
        args.password || args.password_stdin || args.change_password || args.user.is_some() || args.source.is_some();
    let use_oidc = args.oidc
        || (!password_requested
            // A CA too old to answer `/v1/auth/methods` offers passwords only.
            && api.get::<AuthMethods>("/v1/auth/methods").await.ok().is_some_and(|m| m.oidc.is_some()));
    let session: LoginResponse = if use_oidc {
        crate::sso::device_login(&api, args.fresh).await?
    } else {
        let username = args
            .user
            .clone()
            .or_else(|| previous.as_ref().map(|s| s.username.clone()))
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| anyhow!("pass --user NAME"))?;
        let password = read_password(&format!("Password for {username} at {ca_url}: "), args.password_stdin)?;
        let sign_in = |new_password: Option<SecretString>| {
            let body = serde_json::json!({
                "username": username,
                "password": password.expose_secret(),
                "source": args.source,
                "new_password": new_password.as_ref().map(|p| p.expose_secret()),
            });
            let api = &api;
            async move { api.post::<_, LoginResponse>("/v1/auth/login", &body).await }
        };
        // Asked for a new password, or told the current one was for one sign-in only:
        // sign in again with the same password and a new one.
        let first = if args.change_password { None } else { Some(sign_in(None).await) };
        match first {
            Some(Ok(session)) => session,
            Some(Err(e)) if !Refused::is(&e, "password_change_required") => return Err(e),
            told => {
                if told.is_some() {
                    println!("This password is for one sign-in only: choose your own.");
                }
                sign_in(Some(read_new_password(&username, args.password_stdin)?)).await?
            }
        }
    };
    // The name goes into files (`session.json`, the `User` line `ssh-config` prints for
    // `~/.ssh/config`) and onto the terminal: only a name the CA itself could have made,
    // so a CA that has been taken over cannot slip a `ProxyCommand` line into the user's
    // ssh configuration.
    if parse_account(&session.username).is_none() {
        bail!("the CA named you {:?}, which is not a user name; nothing was saved", printable(&session.username));
    }
    let api = api.with_token(session.token.expose());

    paths.ensure_dir()?;
    // Whose key: one of the user's own (`--key`), or the CLI's (made on first use).
    let own = args.key.as_deref().map(KeyFiles::at);
    let (public, key_file, cert_file, made) = match own {
        Some(own) => (own.public_key()?, own.private, own.cert, None),
        None => {
            let (key, created) = paths.load_or_create_key()?;
            (key.public_key().clone(), paths.key.clone(), paths.cert.clone(), Some(created))
        }
    };
    let public_key = public.to_openssh().map_err(|_| anyhow!("cannot encode the public key"))?;
    let request =
        UserCertRequest { public_key, ttl_seconds, roles: (!args.roles.is_empty()).then(|| args.roles.clone()) };
    let answer: UserCertResponse = api.post("/v1/certs/user", &request).await?;
    let cert = issued_for(&answer.certificate, &public)?;
    write_atomic(&cert_file, format!("{}\n", answer.certificate.trim()).as_bytes(), 0o644)?;
    // Certificates written for the user's own keys stay on the list until `logout`,
    // whichever key later logins certify.
    let mut installed = previous.as_ref().map(Session::installed).unwrap_or_default();
    if made.is_none() {
        installed.retain(|i| i.cert != cert_file);
        installed.push(Installed { cert: cert_file.clone(), serial: cert.serial() });
    }
    paths.save_session(&Session {
        ca_url: ca_url.clone(),
        ca_fingerprint: pin,
        username: session.username.clone(),
        token: Some(session.token.expose().to_owned()),
        expires_at: session.expires_at,
        key: made.is_none().then(|| key_file.clone()),
        installed,
    })?;

    let lifetime = cert.valid_before().saturating_sub(now());
    println!("Logged in to {ca_url} as {}.", session.username);
    let whose = match made {
        Some(true) => "Created",
        Some(false) => "Reused",
        None => "Your",
    };
    println!("{whose} key {}", key_file.display());
    show_certificate(&cert_file, &cert);
    if made.is_none() {
        // The user's own key: their agent is theirs to manage.
        println!(
            "Use it with `ssh -i {}` (ssh finds the certificate beside the key) or load it with `ssh-add -t {} {}`.",
            key_file.display(),
            lifetime.max(1),
            key_file.display()
        );
        return Ok(());
    }
    // Earlier logins' certificates (revoked ones too) must not stay usable from the
    // agent: only the new one is loaded.
    forget_in_agent(&paths, Some(public.key_data()));
    match add_to_agent(&paths.key, lifetime) {
        AgentOutcome::Added => {
            println!("Added to ssh-agent for {} (it forgets the key when the certificate expires).", span(lifetime))
        }
        AgentOutcome::NoAgent => {
            println!("No ssh-agent running (SSH_AUTH_SOCK unset): use `ssh -i {}`.", paths.key.display())
        }
        AgentOutcome::Failed(why) => {
            println!("Could not add to ssh-agent ({why}): use `ssh -i {}`.", paths.key.display())
        }
    }
    Ok(())
}

pub fn duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

enum AgentOutcome {
    Added,
    NoAgent,
    Failed(String),
}

/// Takes every Portcullis identity out of the agent: keys with the comment the CLI gives
/// its keys, and any key or certificate for `ours` — not just the newest certificate
/// (`ssh-add -d KEY` removes only the one beside the key file). Identities the user
/// added themselves stay. Returns how many were removed.
fn forget_in_agent(paths: &Paths, ours: Option<&ssh_key::public::KeyData>) -> usize {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return 0;
    }
    let Ok(listed) = Command::new("ssh-add").arg("-L").stdin(Stdio::null()).stderr(Stdio::null()).output() else {
        return 0;
    };
    let mut removed = 0;
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let mut fields = line.splitn(3, ' ');
        let (Some(kind), Some(_blob)) = (fields.next(), fields.next()) else { continue };
        let comment = fields.next().unwrap_or("").trim();
        let key_data = if kind.contains("-cert-v01@openssh.com") {
            Certificate::from_openssh(line).ok().map(|c| c.public_key().clone())
        } else {
            ssh_key::PublicKey::from_openssh(line).ok().map(|k| k.key_data().clone())
        };
        let is_ours = comment == crate::state::KEY_COMMENT || (ours.is_some() && key_data.as_ref() == ours);
        if !is_ours {
            continue;
        }
        // `ssh-add -d` takes a file: the listed line itself names the identity.
        let file = paths.dir.join(".agent-forget.pub");
        if write_atomic(&file, format!("{line}\n").as_bytes(), 0o600).is_err() {
            continue;
        }
        let done = Command::new("ssh-add").arg("-d").arg(&file).stdin(Stdio::null()).output();
        let _ = std::fs::remove_file(&file);
        if done.is_ok_and(|o| o.status.success()) {
            removed += 1;
        }
    }
    removed
}

/// `ssh-add -t` picks up `<key>-cert.pub` beside the key and forgets both at expiry.
fn add_to_agent(key: &std::path::Path, lifetime: u64) -> AgentOutcome {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return AgentOutcome::NoAgent;
    }
    match Command::new("ssh-add")
        .arg("-t")
        .arg(lifetime.max(1).to_string())
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => AgentOutcome::Added,
        Ok(out) => AgentOutcome::Failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => AgentOutcome::Failed(e.to_string()),
    }
}

pub async fn status() -> anyhow::Result<()> {
    let paths = Paths::new()?;
    let Some(session) = paths.load_session() else {
        println!("Not logged in.");
        return Ok(());
    };
    println!("CA: {}", session.ca_url);
    let t = now();
    if session.token.is_none() {
        println!("Session: none ({} logged out; run `portcullis login`)", session.username);
    } else if session.expires_at > t {
        println!("Session: {} (expires {})", session.username, when(session.expires_at));
    } else {
        println!("Session: {} (expired {}; run `portcullis login`)", session.username, when(session.expires_at));
    }
    let cert_file = session.key.as_deref().map_or_else(|| paths.cert.clone(), |key| KeyFiles::at(key).cert);
    match read_certificate(&cert_file) {
        Some(cert) => show_certificate(&cert_file, &cert),
        None => println!("Certificate: none"),
    }
    Ok(())
}

/// The certificate the CA answered with, checked before anything is written: a user
/// certificate for exactly the key that was sent. What is shown and how long ssh-agent
/// keeps the key come from it, not from the answer's other fields.
fn issued_for(text: &str, key: &ssh_key::PublicKey) -> anyhow::Result<Certificate> {
    let cert = Certificate::from_openssh(text.trim()).map_err(|_| anyhow!("the CA answered with no certificate"))?;
    if cert.cert_type() != ssh_key::certificate::CertType::User || cert.public_key() != key.key_data() {
        bail!("the CA answered with a certificate for another key; nothing was written");
    }
    Ok(cert)
}

/// A certificate as `login` and `status` show it (its strings came from the CA).
fn show_certificate(file: &std::path::Path, cert: &Certificate) {
    let t = now();
    println!("Certificate {}", file.display());
    println!("  key id: {}  serial: {}", printable(cert.key_id()), cert.serial());
    println!("  principals: {}", printable(&cert.valid_principals().join(", ")));
    let before = cert.valid_before();
    if before > t {
        println!("  valid until {} ({} left)", when(before), span(before - t));
    } else {
        println!("  EXPIRED at {}; run `portcullis login`", when(before));
    }
}

/// Revokes the certificates this CLI installed (so a copy left elsewhere stops working
/// once nodes fetch the KRL) — its own key's, and every one a `login --key` wrote since
/// the last logout —, ends the API session, takes every Portcullis identity out of
/// ssh-agent and deletes the CLI's key pair and the certificates; a key of the user's own
/// stays, and so does a certificate file that holds another certificate by now. The
/// CA's URL, pin and the user name stay for the next `login`.
pub async fn logout() -> anyhow::Result<()> {
    let paths = Paths::new()?;
    let ours = std::fs::read_to_string(&paths.public).ok().and_then(|l| ssh_key::PublicKey::from_openssh(&l).ok());
    let session = paths.load_session();
    // What is there to revoke and remove: the CLI's own certificate, and those of the
    // user's keys that still hold what the CLI wrote.
    let mut certificates: Vec<(PathBuf, Certificate)> =
        read_certificate(&paths.cert).map(|c| (paths.cert.clone(), c)).into_iter().collect();
    for installed in session.as_ref().map(Session::installed).unwrap_or_default() {
        match read_certificate(&installed.cert) {
            Some(cert) if cert.serial() == installed.serial => certificates.push((installed.cert, cert)),
            Some(_) => println!("Left {}: it holds another certificate by now.", installed.cert.display()),
            None => {}
        }
    }
    if let Some(mut session) = session
        && let Some(token) = session.token.take()
    {
        let api = Api::new(&session.ca_url, session.ca_fingerprint.as_deref())?.with_token(&token);
        for (_, cert) in certificates.iter().filter(|(_, c)| c.valid_before() > now()) {
            let request = RevokeOwnRequest { serial: cert.serial().to_string() };
            match api.post::<_, RevokeResponse>("/v1/certs/user/revoke", &request).await {
                Ok(_) => println!(
                    "Revoked certificate serial {} (nodes refuse it once they fetch the revocation list).",
                    cert.serial()
                ),
                Err(e) => eprintln!(
                    "warning: certificate {} could not be revoked ({e}); it expires on its own",
                    cert.serial()
                ),
            }
        }
        if let Err(e) = api.post_unit("/v1/auth/logout", &serde_json::json!({})).await {
            eprintln!("warning: the CA did not confirm the logout ({e}); local credentials are removed anyway");
        }
        session.expires_at = 0;
        session.key = None;
        session.installed.clear();
        paths.save_session(&session)?;
    }
    let forgotten = forget_in_agent(&paths, ours.as_ref().map(|k| k.key_data()));
    if forgotten > 0 {
        println!("Removed {forgotten} Portcullis key(s) and certificate(s) from ssh-agent.");
    }
    let mut removed = paths.remove_credentials();
    for (file, _) in certificates.iter().filter(|(file, _)| *file != paths.cert) {
        if std::fs::remove_file(file).is_ok() {
            println!("Removed {} (your key stays).", file.display());
            removed.push(file.clone());
        }
    }
    if removed.is_empty() {
        println!("Nothing to remove; not logged in.");
    } else {
        println!("Logged out; removed {} file(s).", removed.len());
    }
    Ok(())
}

pub async fn ssh_config(args: SshConfigArgs) -> anyhow::Result<()> {
    let paths = Paths::new()?;
    // Checked again here: a session saved by an older CLI took the name as the CA sent it,
    // and this text goes into `~/.ssh/config`, where a line break would start a directive.
    let session = paths.load_session().filter(|s| parse_account(&s.username).is_some() && !has_control(&s.ca_url));
    let username = session.as_ref().map(|s| s.username.clone());
    let header =
        session.as_ref().map(|s| format!(": certificate from {} for {}", s.ca_url, s.username)).unwrap_or_default();
    let bastion = match &args.bastion {
        Some(b) => Some(split_host_port(b).ok_or_else(|| anyhow!("--bastion must be HOST:PORT"))?),
        None => None,
    };
    let trust = match session.as_ref().filter(|s| s.token.is_some()) {
        Some(s) => Some(write_known_hosts(&paths, s, bastion).await?),
        None => None,
    };
    println!("# Portcullis{header}");
    match &trust {
        Some(fingerprints) => {
            for line in fingerprints {
                println!("# {line}");
            }
        }
        None => println!("# Not logged in: no host keys from the CA (run `portcullis login`, then this again)."),
    }
    print!("{}", render_ssh_config(&paths, &args, bastion, username.as_deref(), trust.is_some()));
    Ok(())
}

/// Writes `known_hosts` beside the certificate from what the CA vouches for, fetched over
/// the pinned connection: `@cert-authority` lines for the host CA (enrolled nodes present
/// host certificates) and the bastions' own keys at the address given. Nothing is
/// trusted on first use. Returns what to show the user: each key's fingerprint.
async fn write_known_hosts(
    paths: &Paths,
    session: &Session,
    bastion: Option<(&str, u16)>,
) -> anyhow::Result<Vec<String>> {
    let token = session.token.as_deref().unwrap_or_default();
    let api = Api::new(&session.ca_url, session.ca_fingerprint.as_deref())?.with_token(token);
    let host_cas = api.get_text("/v1/ca/host/keys").await.context("cannot read the host CA keys")?;
    let bastions = match bastion {
        Some(_) => api.get_text("/v1/bastions/host-keys").await.context("cannot read the bastions' host keys")?,
        None => String::new(),
    };
    let mut text = format!(
        "# Written by `portcullis ssh-config` from {}; run it again after a host CA key rotation.\n",
        session.ca_url
    );
    let mut shown = Vec::new();
    for line in host_cas.lines().filter(|l| !l.trim().is_empty()) {
        let key = ssh_key::PublicKey::from_openssh(line).context("the CA sent an unreadable host CA key")?;
        text.push_str(&format!("@cert-authority * {line}\n"));
        shown.push(format!("host CA {}", key.fingerprint(ssh_key::HashAlg::Sha256)));
    }
    if let Some((host, port)) = bastion {
        let pattern = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
        for line in bastions.lines().filter(|l| !l.trim().is_empty()) {
            let key = ssh_key::PublicKey::from_openssh(line).context("the CA sent an unreadable bastion key")?;
            text.push_str(&format!("{pattern} {line}\n"));
            shown.push(format!(
                "{} {}",
                printable(key.comment().as_str_lossy()),
                key.fingerprint(ssh_key::HashAlg::Sha256)
            ));
        }
    }
    paths.ensure_dir()?;
    write_atomic(&paths.known_hosts, text.as_bytes(), 0o644)?;
    shown.insert(0, format!("host keys the CA vouches for, in {}:", paths.known_hosts.display()));
    Ok(shown)
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// The Host blocks: with a bastion, one for the bastion itself (terminated mode:
/// `ssh LOGIN%NODE@alias`) and one making `hosts` jump through it (jump mode, SSH end to
/// end with the user's own certificate); without, one block using the certificate.
fn render_ssh_config(
    paths: &Paths,
    args: &SshConfigArgs,
    bastion: Option<(&str, u16)>,
    username: Option<&str>,
    known_hosts: bool,
) -> String {
    // The CA's host keys first; the user's own known_hosts still answers for other hosts.
    let trust = if known_hosts {
        format!("    UserKnownHostsFile {} ~/.ssh/known_hosts\n", paths.known_hosts.display())
    } else {
        String::new()
    };
    let identity = format!(
        "    IdentityFile {}\n    CertificateFile {}\n    IdentitiesOnly yes\n{trust}",
        paths.key.display(),
        paths.cert.display()
    );
    let Some((host, port)) = bastion else {
        return format!("Host {}\n{identity}", args.hosts);
    };
    let user = username.map(|u| format!("    User {u}\n")).unwrap_or_default();
    format!(
        "# Terminated mode: ssh root%NODE@{alias} (the bastion logs in with a per-session certificate)\n\
         Host {alias}\n    HostName {host}\n    Port {port}\n{user}{identity}\
         # Jump mode: ssh root@NODE (through the bastion, end to end with your certificate)\n\
         Host {hosts}\n    ProxyJump {alias}\n{identity}",
        alias = args.alias,
        hosts = args.hosts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_secs("90"), Some(90));
        assert_eq!(duration_secs("30m"), Some(1800));
        assert_eq!(duration_secs("2h"), Some(7200));
        assert_eq!(duration_secs("0h"), None);
        assert_eq!(duration_secs("1x"), None);
        assert_eq!(duration_secs("h"), None);
    }

    #[test]
    fn ssh_config_blocks() {
        let paths = Paths::new().unwrap();
        let args = SshConfigArgs { hosts: "pve*".into(), bastion: None, alias: "portcullis".into() };
        let plain = render_ssh_config(&paths, &args, None, Some("alice"), false);
        assert!(plain.starts_with("Host pve*\n") && !plain.contains("ProxyJump"), "{plain}");
        let both = render_ssh_config(&paths, &args, split_host_port("bastion.example:2222"), Some("alice"), true);
        assert!(
            both.contains("Host portcullis\n    HostName bastion.example\n    Port 2222\n    User alice\n"),
            "{both}"
        );
        assert!(both.contains("Host pve*\n    ProxyJump portcullis\n"), "{both}");
        assert_eq!(both.matches("    UserKnownHostsFile ").count(), 2, "both blocks use the CA's host keys: {both}");
        assert!(!plain.contains("UserKnownHostsFile"), "not logged in: no file to name");
        assert_eq!(split_host_port("[2001:db8::1]:22"), Some(("2001:db8::1", 22)));
        assert_eq!(split_host_port("bastion"), None);
        assert_eq!(split_host_port("a b:22"), None);
    }

    #[test]
    fn spans() {
        assert_eq!(span(8 * 3600), "8h00m");
        assert_eq!(span(125), "2m");
        assert_eq!(span(5), "5s");
    }
}
