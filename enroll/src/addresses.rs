//! Which addresses the node reports to the CA when the operator gives no `--address`:
//! its global IPv4/IPv6 addresses from `ip -j addr` and its FQDN from `hostname -f`.
//! The CA puts them in the host certificate's principals, so clients that reach the node
//! by address or full name can check it.
//!
//! Detection is best effort and never fails enrollment: a command that is missing, fails,
//! hangs or prints something unexpected yields no addresses and a note saying why.
//!
//! Under `--root` (tests, image builds) the node is not this machine, so the real commands
//! are not run; `PORTCULLIS_ENROLL_IP_CMD` and `PORTCULLIS_ENROLL_HOSTNAME_CMD` (`sh -c`
//! commands whose stdout stands in for `ip -j addr` and `hostname -f`) are used instead
//! when set. With the real root those variables are ignored.

use crate::root::Root;
use serde::Deserialize;
use std::io::Read;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const IP_CMD_VAR: &str = "PORTCULLIS_ENROLL_IP_CMD";
pub const HOSTNAME_CMD_VAR: &str = "PORTCULLIS_ENROLL_HOSTNAME_CMD";

/// The CA accepts at most this many addresses; more would refuse the whole enrollment.
pub const MAX_ADDRESSES: usize = 32;

/// `hostname -f` asks the resolver, which can hang on a node with broken DNS.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Enough for hundreds of interfaces (a PVE host has one tap/veth per guest).
const MAX_OUTPUT: u64 = 4 << 20;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detected {
    /// FQDN first, then IP addresses in `ip`'s order, deduplicated, at most [`MAX_ADDRESSES`].
    pub addresses: Vec<String>,
    /// Why a source gave nothing (for the progress output).
    pub problems: Vec<String>,
}

/// One interface of `ip -j addr` (iproute2's JSON); unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct Link {
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    // Addresses that are about to go away or not usable yet: privacy (temporary) IPv6
    // addresses change daily and would only churn the host certificate.
    #[serde(default)]
    temporary: bool,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    tentative: bool,
    #[serde(default)]
    dadfailed: bool,
}

fn reportable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// The node's reportable IP addresses from `ip -j addr` output.
pub fn parse_ip_json(text: &[u8]) -> Result<Vec<IpAddr>, String> {
    let links: Vec<Link> =
        serde_json::from_slice(text).map_err(|e| format!("`ip -j addr` printed something else than its JSON ({e})"))?;
    let mut out = Vec::new();
    for link in links.iter().filter(|l| !l.flags.iter().any(|f| f == "LOOPBACK")) {
        for a in &link.addr_info {
            if a.temporary || a.deprecated || a.tentative || a.dadfailed {
                continue;
            }
            if matches!(a.scope.as_deref(), Some("host" | "link")) {
                continue;
            }
            // Zone ids (`%eth0`) only appear on link-local addresses, which are skipped anyway.
            let Some(ip) = a.local.as_deref().and_then(|l| l.parse::<IpAddr>().ok()) else { continue };
            if reportable(&ip) && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

/// `hostname -f` output → the FQDN worth reporting: a different name than `name`, made
/// of the characters the CA accepts, and not a loopback name.
pub fn fqdn_from(text: &[u8], name: &str) -> Option<String> {
    let fqdn = std::str::from_utf8(text).ok()?.trim().trim_end_matches('.').to_owned();
    let lower = fqdn.to_ascii_lowercase();
    let valid = !fqdn.is_empty()
        && fqdn.len() <= 253
        && fqdn.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !fqdn.starts_with(['.', '-']);
    let loopback = lower == "localhost" || lower.starts_with("localhost.");
    (valid && !loopback && !fqdn.eq_ignore_ascii_case(name)).then_some(fqdn)
}

/// The command standing in for `program args`: the real one on a real root, the injected
/// one (if any) under `--root`.
fn command(root: &Root, var: &str, program: &str, args: &[&str]) -> Option<Command> {
    if root.is_system() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        return Some(cmd);
    }
    let script = std::env::var(var).ok().filter(|s| !s.trim().is_empty())?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    Some(cmd)
}

/// Stdout of a successful run, bounded in time and size.
fn output(mut cmd: Command, what: &str) -> Result<Vec<u8>, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + TIMEOUT;
    // Read on a thread: a large output must not block the child on a full pipe.
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = match stdout {
            Some(s) => s.take(MAX_OUTPUT).read_to_end(&mut buf).map(|_| buf),
            None => Ok(buf),
        };
        let _ = tx.send(read);
    });
    let read = rx.recv_timeout(TIMEOUT);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    match (read, status) {
        (Ok(Ok(buf)), Some(status)) if status.success() => Ok(buf),
        (Ok(Err(e)), Some(_)) => Err(format!("cannot read the output of {what}: {e}")),
        (_, Some(status)) => Err(format!("{what} failed ({status})")),
        (_, None) => Err(format!("{what} did not finish within {} s", TIMEOUT.as_secs())),
    }
}

/// Detects the addresses of the node called `name`. Never fails: see [`Detected::problems`].
pub fn detect(root: &Root, name: &str) -> Detected {
    let mut d = Detected::default();
    let ip = command(root, IP_CMD_VAR, "ip", &["-j", "addr"]);
    let hostname = command(root, HOSTNAME_CMD_VAR, "hostname", &["-f"]);
    if ip.is_none() && hostname.is_none() {
        d.problems.push(format!("not run under --root (set {IP_CMD_VAR} / {HOSTNAME_CMD_VAR} to stand in)"));
        return d;
    }
    match hostname.map(|cmd| output(cmd, "`hostname -f`")) {
        Some(Ok(text)) => d.addresses.extend(fqdn_from(&text, name)),
        Some(Err(e)) => d.problems.push(e),
        None => {}
    }
    match ip.map(|cmd| output(cmd, "`ip -j addr`").and_then(|text| parse_ip_json(&text))) {
        Some(Ok(ips)) => d.addresses.extend(ips.iter().map(IpAddr::to_string)),
        Some(Err(e)) => d.problems.push(e),
        None => {}
    }
    if d.addresses.len() > MAX_ADDRESSES {
        d.problems.push(format!("{} addresses found; reporting the first {MAX_ADDRESSES}", d.addresses.len()));
        d.addresses.truncate(MAX_ADDRESSES);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a PVE 8 node: loopback, a bridge with global, ULA, temporary and
    /// link-local addresses, an interface with a link-local IPv4, and a down tap.
    const IP_J_ADDR: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[
        {"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo"},
        {"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},
      {"ifindex":2,"ifname":"vmbr0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[
        {"family":"inet","local":"192.0.2.10","prefixlen":24,"broadcast":"192.0.2.255","scope":"global","label":"vmbr0"},
        {"family":"inet","local":"192.0.2.11","prefixlen":24,"scope":"global","secondary":true,"label":"vmbr0"},
        {"family":"inet6","local":"2001:db8::aaaa","prefixlen":64,"scope":"global","temporary":true,"dynamic":true},
        {"family":"inet6","local":"2001:db8::10","prefixlen":64,"scope":"global"},
        {"family":"inet6","local":"fd00::10","prefixlen":64,"scope":"global"},
        {"family":"inet6","local":"2001:db8::99","prefixlen":64,"scope":"global","tentative":true},
        {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
      {"ifindex":3,"ifname":"eno2","flags":["BROADCAST","UP"],"addr_info":[
        {"family":"inet","local":"169.254.3.4","prefixlen":16,"scope":"link"},
        {"family":"inet","local":"192.0.2.10","prefixlen":24,"scope":"global"}]},
      {"ifindex":4,"ifname":"tap100i0","flags":["BROADCAST"],"addr_info":[]},
      {}
    ]"#;

    #[test]
    fn reports_global_addresses_only_once_in_order() {
        let ips: Vec<String> = parse_ip_json(IP_J_ADDR.as_bytes()).unwrap().iter().map(IpAddr::to_string).collect();
        assert_eq!(ips, ["192.0.2.10", "192.0.2.11", "2001:db8::10", "fd00::10"]);
    }

    #[test]
    fn skips_link_local_and_loopback_even_without_scope_or_flags() {
        let text = r#"[{"addr_info":[{"local":"169.254.1.1"},{"local":"fe80::2"},{"local":"127.0.1.1"},
            {"local":"::ffff:192.0.2.1"},{"local":"0.0.0.0"},{"local":"not an address"},{"local":"198.51.100.7"}]}]"#;
        assert_eq!(parse_ip_json(text.as_bytes()).unwrap(), ["198.51.100.7".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn unexpected_ip_output_is_an_error_not_a_panic() {
        assert!(parse_ip_json(b"1: lo: <LOOPBACK,UP> mtu 65536").is_err());
        assert!(parse_ip_json(b"{\"not\":\"a list\"}").is_err());
        assert_eq!(parse_ip_json(b"[]"), Ok(vec![]));
    }

    #[test]
    fn fqdn_only_when_it_says_more_than_the_name() {
        assert_eq!(fqdn_from(b"pve1.example.com\n", "pve1"), Some("pve1.example.com".into()));
        assert_eq!(fqdn_from(b"pve1.example.com.\n", "pve1"), Some("pve1.example.com".into()));
        assert_eq!(fqdn_from(b"pve1\n", "pve1"), None);
        assert_eq!(fqdn_from(b"PVE1\n", "pve1"), None);
        assert_eq!(fqdn_from(b"localhost.localdomain\n", "pve1"), None);
        assert_eq!(fqdn_from(b"", "pve1"), None);
        assert_eq!(fqdn_from(b"evil name; rm -rf /\n", "pve1"), None);
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn command_output_is_bounded_and_failures_are_reported() {
        assert_eq!(output(sh("echo hi"), "t").unwrap(), b"hi\n");
        // More than a pipe buffer: read while the child runs, no deadlock.
        assert_eq!(output(sh("head -c 1000000 /dev/zero"), "t").unwrap().len(), 1_000_000);
        assert!(output(sh("echo partial; exit 3"), "t").unwrap_err().contains("failed"));
        assert!(output(Command::new("/nonexistent/ip"), "t").unwrap_err().contains("cannot run"));
    }

    #[test]
    fn under_a_test_root_nothing_runs_unless_injected() {
        // Neither variable is set by the test harness.
        if std::env::var_os(IP_CMD_VAR).is_none() && std::env::var_os(HOSTNAME_CMD_VAR).is_none() {
            let d = detect(&Root::new("/nonexistent-root"), "n");
            assert!(d.addresses.is_empty());
            assert_eq!(d.problems.len(), 1, "{d:?}");
        }
    }
}
