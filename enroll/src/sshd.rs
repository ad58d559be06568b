//! Talking to the node's OpenSSH: validate (`sshd -t`), read the effective configuration
//! (`sshd -T`), reload (never restart: a restart drops the listening socket and, with a
//! bad config, would not come back), and a live login.

use crate::error::{Error, Result};
use crate::root::Root;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct SshdCtl {
    pub root: Root,
    pub sshd: PathBuf,
    /// `sh -c` command that reloads the daemon; default `systemctl reload <service>`.
    pub reload_cmd: Option<String>,
    pub service: String,
}

fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    cmd.stdin(Stdio::null()).output().map_err(|e| Error::Failed(format!("cannot run {what}: {e}")))
}

impl SshdCtl {
    fn config(&self) -> PathBuf {
        self.root.sshd_config()
    }

    /// `sshd -t`: Ok, or the daemon's own complaint.
    pub fn test(&self) -> Result<()> {
        let out = run(Command::new(&self.sshd).arg("-t").arg("-f").arg(self.config()), "sshd -t")?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Failed(format!(
                "sshd -t rejects the configuration: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// `sshd -T`: keyword (lowercase) → values in order.
    pub fn effective(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let out = run(Command::new(&self.sshd).arg("-T").arg("-f").arg(self.config()), "sshd -T")?;
        if !out.status.success() {
            return Err(Error::Failed(format!("sshd -T failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut parts = line.splitn(2, ' ');
            if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                map.entry(k.to_ascii_lowercase()).or_default().push(v.to_owned());
            }
        }
        Ok(map)
    }

    pub fn reload(&self) -> Result<()> {
        let out = match &self.reload_cmd {
            Some(cmd) => run(Command::new("/bin/sh").arg("-c").arg(cmd), "the reload command")?,
            None => run(Command::new("systemctl").args(["reload", &self.service]), "systemctl reload")?,
        };
        if !out.status.success() {
            return Err(Error::Failed(format!(
                "reloading sshd failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // sshd re-executes itself on SIGHUP; give it a moment before anyone connects.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }
}

/// Pids of sshd sessions that have not authenticated yet: a connection's process before
/// it sets its title (`sshd … -R`), `sshd: [accepted]`, and the unprivileged `… [net]`
/// child (which exits at authentication). Each was forked with the configuration the
/// listener held then, and reads that configuration's `RevokedKeys` when it
/// authenticates.
pub fn preauth_sessions() -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        if before_authentication(&args) {
            out.insert(pid);
        }
    }
    out
}

/// Whether a process with these arguments is an sshd connection not yet authenticated:
/// freshly re-executed (`-R`), or titled `[accepted]`/`[net]` — by `sshd` itself, and
/// since OpenSSH 9.8 (Debian 13, PVE 9) by `sshd-session` and 10.0's `sshd-auth`, which
/// run the connections instead.
fn before_authentication(args: &[&[u8]]) -> bool {
    const PROGRAMS: [&str; 3] = ["sshd", "sshd-session", "sshd-auth"];
    let Some(first) = args.first() else { return false };
    let title = String::from_utf8_lossy(first);
    let rexec =
        PROGRAMS.iter().any(|p| title.ends_with(&format!("/{p}")) || title == *p) && args.iter().any(|a| *a == b"-R");
    let preauth = PROGRAMS.iter().any(|p| title.starts_with(&format!("{p}: ")))
        && (title.ends_with("[accepted]") || title.ends_with("[net]"));
    rexec || preauth
}

/// Waits (at most `max`) until none of `sessions` is still before authentication. Returns
/// how many still were when the wait ran out.
pub fn wait_authenticated(sessions: &BTreeSet<u32>, max: Duration) -> usize {
    let deadline = std::time::Instant::now() + max;
    loop {
        let left = preauth_sessions().intersection(sessions).count();
        if left == 0 || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether this node's own OpenSSH loads `krl`. `ssh-keygen -Q` reads a KRL with the code
/// sshd's `RevokedKeys` uses; our parser follows the newest OpenSSH, and an older one
/// refuses a section it predates (revocation by SHA-256 hash needs 7.9) — while sshd
/// names a KRL it cannot load, it refuses every public key, `authorized_keys` included,
/// and `sshd -t` never loads it. Exit 0 (the probe key is not revoked) or 1 (it is) both
/// mean the KRL loaded. Refused only when `ssh-keygen` ran and could not load it: a
/// check that cannot run (no `ssh-keygen`, no temporary directory) says so on stderr and
/// leaves the decision to our parser, so it never stops revocations reaching the node.
pub fn node_loads_krl(krl: &[u8]) -> Result<()> {
    match ask_ssh_keygen(krl) {
        Ok(None) => Ok(()),
        Ok(Some(said)) => Err(Error::Ca(format!(
            "this node's OpenSSH cannot load the CA's KRL ({said}); refused, the installed KRL stays"
        ))),
        Err(why) => {
            eprintln!(
                "portcullis-enroll: cannot check the KRL with this node's ssh-keygen ({why}); trusting our parser"
            );
            Ok(())
        }
    }
}

/// `Ok(None)`: `ssh-keygen -Q` loaded `krl`; `Ok(Some(what it said))`: it ran and
/// refused it; `Err`: it could not be asked.
fn ask_ssh_keygen(krl: &[u8]) -> std::result::Result<Option<String>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let (krl_path, probe_path) = (dir.path().join("revoked.krl"), dir.path().join("probe.pub"));
    // Any well-formed key will do: only whether the KRL loads matters.
    let probe = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey([7; 32]));
    let probe = probe.to_openssh().map_err(|e| format!("cannot encode the probe key: {e}"))?;
    for (path, bytes) in [(&krl_path, krl), (&probe_path, probe.as_bytes())] {
        std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let out = run(Command::new("ssh-keygen").arg("-Q").arg("-f").arg(&krl_path).arg(&probe_path), "ssh-keygen -Q")
        .map_err(|e| e.to_string())?;
    if matches!(out.status.code(), Some(0 | 1)) {
        return Ok(None);
    }
    let said = String::from_utf8_lossy(&out.stderr).replace(&*krl_path.to_string_lossy(), "the KRL");
    let said: String = said.lines().next().unwrap_or("").chars().filter(|c| !c.is_control()).take(200).collect();
    Ok(Some(if said.is_empty() { format!("ssh-keygen -Q exited {}", out.status) } else { said }))
}

/// `OpenSSH_9.2p1 Debian-2+deb12u3, …` → `OpenSSH_9.2p1 Debian-2+deb12u3`.
pub fn openssh_version() -> Option<String> {
    let out = Command::new("ssh").arg("-V").stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.split(',').next().map(|s| s.trim().to_owned()).filter(|s| s.starts_with("OpenSSH"))
}

/// How `known_hosts` names `address:port`.
pub fn known_hosts_name(address: IpAddr, port: u16) -> String {
    match port {
        22 => address.to_string(),
        _ => format!("[{address}]:{port}"),
    }
}

/// A login as `login` at `address:port` (where sshd listens, see
/// `preflight::verify_address`) with exactly this key and certificate, checking the
/// server against `known_hosts`; runs `true` (the certificate forces a command anyway).
/// Retried briefly: right after a reload the daemon may still be re-executing.
pub fn verify_login(
    address: IpAddr,
    port: u16,
    login: &str,
    key: &Path,
    cert: &Path,
    known_hosts: &Path,
) -> Result<()> {
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(400));
        }
        let out = run(
            Command::new("ssh")
                .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
                .args(["-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
                .args(["-o", "LogLevel=ERROR", "-o", "PasswordAuthentication=no"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
                .arg("-o")
                .arg(format!("CertificateFile={}", cert.display()))
                .arg("-i")
                .arg(key)
                .arg("-p")
                .arg(port.to_string())
                .arg("-l")
                .arg(login)
                .arg(address.to_string())
                .arg("true"),
            "ssh",
        )?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    }
    Err(Error::Failed(format!("the verification login as {login}@{address} port {port} failed: {last}")))
}

#[cfg(test)]
mod tests {
    use super::before_authentication;

    #[test]
    fn connections_before_authentication_are_seen_in_every_openssh_layout() {
        let waits = |args: &[&str]| before_authentication(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>());
        // OpenSSH up to 9.7: sshd re-executes itself per connection.
        assert!(waits(&["/usr/sbin/sshd", "-D", "-R"]));
        assert!(waits(&["sshd: root [net]"]));
        assert!(waits(&["sshd: [accepted]"]));
        // 9.8 and later: sshd-session (and 10.0's sshd-auth) run the connections.
        assert!(waits(&["/usr/lib/openssh/sshd-session", "-R"]));
        assert!(waits(&["sshd-session: root [net]"]));
        assert!(waits(&["sshd-auth: [accepted]"]));
        // Authenticated sessions and the listener are not waited for.
        assert!(!waits(&["sshd: root@pts/0"]));
        assert!(!waits(&["sshd-session: root [priv]"]));
        assert!(!waits(&["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"]));
        assert!(!waits(&[]));
    }
}
