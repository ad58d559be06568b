//! Preflight: learn the node and refuse — before any change — whatever cannot be done
//! safely. Everything here only reads.

use crate::error::{Error, Result};
use crate::fsx;
use crate::root::Root;
use crate::sshd::{SshdCtl, openssh_version};
use crate::sshd_config::{self, OUR_KEYWORDS};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct HostKey {
    /// The private key file (`HostKey` in sshd's configuration).
    pub path: PathBuf,
    /// Its OpenSSH public key line.
    pub public: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub os: Option<String>,
    pub openssh: Option<String>,
    pub pve: bool,
    pub pve_version: Option<String>,
    pub pve_cluster: Option<String>,
    pub service: String,
    pub host_keys: Vec<HostKey>,
    pub port: u16,
    /// Where the verification login goes (see [`verify_address`]).
    pub verify_address: IpAddr,
}

/// An address sshd listens on at `port` (from `sshd -T`'s `listenaddress` lines): the
/// loopback when it listens there or on a wildcard, else its first address with that
/// port — a node whose sshd listens only on its management address is verified there.
/// OpenSSH binds IPv6 sockets v6-only, so `[::]` means `::1`, not `127.0.0.1`.
pub fn verify_address(listen: &[String], port: u16) -> IpAddr {
    let addresses: Vec<IpAddr> = listen
        .iter()
        .filter_map(|line| line.split_whitespace().next()?.parse::<SocketAddr>().ok())
        .filter(|a| a.port() == port)
        .map(|a| a.ip())
        .collect();
    let local = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(v6) if v6.is_unspecified() => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ip if ip.is_loopback() => Some(*ip),
        _ => None,
    };
    let v4_first = |ip: &IpAddr| ip.is_ipv6();
    let mut locals: Vec<IpAddr> = addresses.iter().filter_map(local).collect();
    locals.sort_by_key(v4_first);
    locals.first().or(addresses.first()).copied().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn os_pretty_name(root: &Root) -> Option<String> {
    let text = std::fs::read_to_string(root.path("/etc/os-release")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_owned())
}

fn pve_version(root: &Root) -> Option<String> {
    if !root.is_system() {
        return None;
    }
    let out = std::process::Command::new("pveversion").stdin(std::process::Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn pve_cluster(root: &Root) -> Option<String> {
    let text = std::fs::read_to_string(root.path("/etc/pve/corosync.conf")).ok()?;
    text.lines().find_map(|l| l.trim().strip_prefix("cluster_name:")).map(|v| v.trim().to_owned())
}

/// Debian and PVE call the unit `ssh.service`; others `sshd.service`.
pub fn service_name(root: &Root) -> String {
    for dir in ["/lib/systemd/system", "/usr/lib/systemd/system", "/etc/systemd/system"] {
        if root.path(dir).join("ssh.service").exists() {
            return "ssh".into();
        }
        if root.path(dir).join("sshd.service").exists() {
            return "sshd".into();
        }
    }
    "ssh".into()
}

fn public_line(private: &Path) -> Result<String> {
    host_public_key(private)?.to_openssh().map_err(|e| Error::Failed(format!("{}: {e}", private.display())))
}

/// The public half of the host key at `private`: its `.pub` file, else the key itself.
pub(crate) fn host_public_key(private: &Path) -> Result<ssh_key::PublicKey> {
    let pub_path = PathBuf::from(format!("{}.pub", private.display()));
    if let Ok(text) = std::fs::read_to_string(&pub_path)
        && let Ok(key) = ssh_key::PublicKey::from_openssh(text.trim())
    {
        return Ok(key);
    }
    let key = ssh_key::PrivateKey::read_openssh_file(private)
        .map_err(|e| Error::Refused(format!("cannot read the host key {}: {e}", private.display())))?;
    Ok(key.public_key().clone())
}

/// Runs every check; `Err(Refused)` means the node is left exactly as it was.
pub fn run(root: &Root, sshd: &SshdCtl, port_override: Option<u16>) -> Result<Facts> {
    if !root.sshd_config().is_file() {
        return Err(Error::Refused(format!(
            "{} does not exist: is OpenSSH server installed?",
            root.sshd_config().display()
        )));
    }
    let scan = sshd_config::scan(root)?;
    if !scan.includes_drop_ins {
        return Err(Error::Refused(format!(
            "{} does not include {}/*.conf (the Debian default); add that Include line first",
            root.sshd_config().display(),
            root.drop_in_dir().display()
        )));
    }
    let ours = |kw: &str, value: &str| match kw {
        "trustedusercakeys" => Path::new(value) == root.user_ca(),
        "authorizedprincipalsfile" => value == format!("{}/%u", root.principals_dir().display()),
        "revokedkeys" => Path::new(value) == root.krl(),
        "hostcertificate" => Path::new(value).starts_with(root.stage()),
        _ => false,
    };
    let conflicts = sshd_config::conflicts(&scan, &ours);
    if let Some(first) = conflicts.first() {
        let list: Vec<String> = conflicts
            .iter()
            .map(|d| {
                let place = if d.in_match { " inside a Match block" } else { "" };
                format!("{}:{}: {} {}{place}", d.file.display(), d.line, d.keyword, d.value)
            })
            .collect();
        return Err(Error::Refused(format!(
            "sshd would ignore or override our {} (first value wins, and these are read first): {}",
            first.keyword,
            list.join("; ")
        )));
    }
    let default_file = root.path("/etc/default/ssh");
    if let Some(text) = fsx::read_opt(&default_file)? {
        let overrides = command_line_overrides(&String::from_utf8_lossy(&text));
        if !overrides.is_empty() {
            return Err(Error::Refused(format!(
                "{} starts sshd with {} on its command line, which wins over every configuration file (and \
                 `sshd -T` does not show it); remove it from SSHD_OPTS first",
                default_file.display(),
                overrides.join(", ")
            )));
        }
    }
    sshd.test().map_err(|e| Error::Refused(format!("the current configuration is already invalid: {e}")))?;
    let effective = sshd.effective().map_err(|e| Error::Refused(e.to_string()))?;
    for kw in OUR_KEYWORDS.iter().filter(|k| **k != "hostcertificate") {
        if let Some(v) = effective.get(*kw).and_then(|v| v.first())
            && v != "none"
            && !ours(kw, v)
        {
            return Err(Error::Refused(format!("sshd -T already shows {kw} {v}; refusing to override it")));
        }
    }
    let host_keys = effective
        .get("hostkey")
        .map(|v| v.iter().map(PathBuf::from).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.exists())
        .map(|path| Ok(HostKey { public: public_line(&path)?, path }))
        .collect::<Result<Vec<_>>>()?;
    if host_keys.is_empty() {
        return Err(Error::Refused("sshd has no readable host key".into()));
    }
    let port = match port_override {
        Some(p) => p,
        None => effective
            .get("port")
            .and_then(|v| v.first())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::Refused("cannot tell which port sshd listens on; pass --sshd-port".into()))?,
    };
    Ok(Facts {
        os: os_pretty_name(root),
        openssh: openssh_version(),
        pve: root.path("/etc/pve").is_dir(),
        pve_version: pve_version(root),
        pve_cluster: pve_cluster(root),
        service: service_name(root),
        host_keys,
        verify_address: verify_address(effective.get("listenaddress").map(Vec::as_slice).unwrap_or_default(), port),
        port,
    })
}

/// What Debian's `/etc/default/ssh` puts on sshd's command line (`SSHD_OPTS`, which the
/// service passes to `sshd -D`) that would decide what the drop-in sets: `-o` with one of
/// our keywords, or `-f` (another configuration file altogether). Command-line options
/// win over every file and `sshd -T -f sshd_config` does not see them, so the drop-in
/// would be silently overridden — Portcullis's revocations not enforced while every
/// check passed.
fn command_line_overrides(default_file: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in default_file.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let Some(value) = line.strip_prefix("SSHD_OPTS=").or_else(|| line.strip_prefix("export SSHD_OPTS=")) else {
            continue;
        };
        let words: Vec<&str> = value.trim_matches(|c| c == '"' || c == '\'').split_whitespace().collect();
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            let option = match word {
                "-o" => words.next().unwrap_or_default(),
                "-f" => {
                    found.push("-f (another configuration file)".to_owned());
                    continue;
                }
                w if w.starts_with("-o") => &w[2..],
                w if w.starts_with("-f") => {
                    found.push("-f (another configuration file)".to_owned());
                    continue;
                }
                _ => continue,
            };
            let keyword = option.split(['=', ' ']).next().unwrap_or_default().to_ascii_lowercase();
            if OUR_KEYWORDS.contains(&keyword.as_str()) || keyword == "authorizedprincipalscommand" {
                found.push(format!("-o {option}"));
            }
        }
    }
    found
}

/// The key that signs node proofs: Ed25519 when there is one.
pub fn proof_key(keys: &[HostKey]) -> Option<PathBuf> {
    keys.iter().find(|k| k.public.starts_with("ssh-ed25519 ")).or_else(|| keys.first()).map(|k| k.path.clone())
}

#[cfg(test)]
mod tests {
    use super::{command_line_overrides, verify_address};

    #[test]
    fn command_line_options_that_would_override_the_drop_in_are_found() {
        let debian = "# Default settings for openssh-server.\n# SSHD_OPTS=\"-o RevokedKeys=/x\"\nSSHD_OPTS=\n";
        assert!(command_line_overrides(debian).is_empty(), "the shipped file, commented example and all");
        assert!(command_line_overrides("SSHD_OPTS=\"-o LogLevel=VERBOSE -4\"").is_empty(), "unrelated options");
        assert_eq!(command_line_overrides("SSHD_OPTS=\"-o RevokedKeys=/other.krl\""), ["-o RevokedKeys=/other.krl"]);
        assert_eq!(
            command_line_overrides("SSHD_OPTS='-oTrustedUserCAKeys=/ca.pub -f /etc/ssh/other'"),
            ["-o TrustedUserCAKeys=/ca.pub", "-f (another configuration file)"]
        );
        assert_eq!(
            command_line_overrides("export SSHD_OPTS=\"-o authorizedprincipalsfile=none\""),
            ["-o authorizedprincipalsfile=none"]
        );
    }
    use std::net::IpAddr;

    fn at(listen: &[&str], port: u16) -> IpAddr {
        verify_address(&listen.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), port)
    }

    #[test]
    fn the_verification_login_goes_where_sshd_listens() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Debian's default: both wildcards; v4 first.
        assert_eq!(at(&["[::]:22", "0.0.0.0:22"], 22), ip("127.0.0.1"));
        assert_eq!(at(&["[::]:22"], 22), ip("::1"), "a v6 wildcard is v6-only in OpenSSH");
        assert_eq!(at(&["127.0.3.9:2222"], 2222), ip("127.0.3.9"));
        // Only a management address: verified there.
        assert_eq!(at(&["192.0.2.5:22", "[2001:db8::5]:22"], 22), ip("192.0.2.5"));
        assert_eq!(at(&["10.0.0.9:22 rdomain mgmt"], 22), ip("10.0.0.9"));
        // Another port's listener is not where this port answers.
        assert_eq!(at(&["192.0.2.5:2222", "0.0.0.0:22"], 22), ip("127.0.0.1"));
        // Nothing usable: the loopback, as before.
        assert_eq!(at(&[], 22), ip("127.0.0.1"));
        assert_eq!(at(&["garbage"], 22), ip("127.0.0.1"));
    }
}
