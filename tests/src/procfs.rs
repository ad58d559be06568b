//! What benchmarks read about processes from Linux's `/proc`: CPU time, resident memory,
//! and which process is which (the harness keeps its children private, so a server is
//! found by an argument on its command line and its parent).
//!
//! Every reader returns 0 or `None` when the process is gone or the file unreadable: a
//! benchmark prints what it could measure rather than stopping halfway.

use std::collections::HashMap;
use std::path::Path;

/// USER_HZ: the unit of `/proc/<pid>/stat` times on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields after the command name of `/proc/<pid>/stat` (the name may hold spaces;
/// what follows its last `)` is fixed): index 0 is field 3 (state).
fn stat_fields(pid: &str) -> Vec<String> {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Vec::new();
    };
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after.split_whitespace().map(str::to_owned).collect()
}

fn ticks(fields: &[String], i: usize) -> f64 {
    fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
}

/// User + system CPU seconds of a process's own threads so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(&pid.to_string());
    (ticks(&f, 11) + ticks(&f, 12)) / TICKS_PER_SECOND
}

/// User + system CPU seconds of a process's children that have exited and been waited
/// for (a forking server's finished connections, a shell pipeline's commands).
pub fn children_cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(&pid.to_string());
    (ticks(&f, 13) + ticks(&f, 14)) / TICKS_PER_SECOND
}

/// [`children_cpu_seconds`] of the calling process.
pub fn own_children_cpu_seconds() -> f64 {
    children_cpu_seconds(std::process::id())
}

/// Busy (non-idle) CPU seconds of the whole machine, summed over cores.
pub fn machine_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal …
    let t: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|i| t.get(*i)).sum::<f64>() / TICKS_PER_SECOND
}

/// A `KiB` figure from a `/proc` key-value file (`VmRSS:  1234 kB`).
fn kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set size (`VmRSS`) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS")
}

/// Peak resident set size (`VmHWM`) in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM")
}

/// Anonymous resident memory (`RssAnon`: heap and stacks, no mapped files) in KiB.
pub fn rss_anon_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "RssAnon")
}

/// Proportional set size in KiB: shared pages divided among the processes sharing
/// them, so a sum over processes counts every page once.
pub fn pss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss")
}

/// Every live process id with its parent's.
fn parents() -> HashMap<u32, u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let pid = name.to_str()?;
            let ppid = stat_fields(pid).get(1)?.parse().ok()?;
            Some((pid.parse().ok()?, ppid))
        })
        .collect()
}

/// All descendants of `pid` (children, their children, …), not `pid` itself.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents = parents();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parents {
            if parent == p {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// The child of the calling process whose command line contains `arg` (a server's
/// unique temporary data directory or config file). Matched as a substring: `sshd`
/// rewrites its command line into one string (`sshd: /usr/sbin/sshd -D -f … [listener]`).
pub fn child_with_arg(arg: &Path) -> Option<u32> {
    let me = std::process::id();
    let needle = arg.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let pid = name.to_str()?;
        if stat_fields(pid).get(1)?.parse::<u32>().ok()? != me {
            return None;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let found = !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle);
        found.then(|| pid.parse().ok())?
    })
}

/// How many file descriptors `pid` holds open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Soft limit on open files of the calling process (`Max open files` in `/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// How many of `pid`'s TCP connections to remote port `port` are established (IPv4 and
/// IPv6): a client's open connections to one server.
pub fn established_to_port(pid: u32, port: u16) -> usize {
    // The sockets this process holds, by inode (`socket:[INODE]` links in its fd table).
    let owned: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')).map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let port_hex = format!("{port:04X}");
    tcp_sockets(&format!("/proc/{pid}/net"))
        .iter()
        .filter(|f| {
            f.get(2).and_then(|a| port_of(a)) == Some(port_hex.as_str())
                && f.get(3).map(String::as_str) == Some("01")
                && f.get(9).is_some_and(|inode| owned.contains(inode))
        })
        .count()
}

/// Connections waiting in the accept queue of the TCP listener on local port `port`
/// (IPv4 and IPv6), as `ss -lnt` shows in `Recv-Q`; `0` when nothing listens there.
pub fn accept_queue(port: u16) -> usize {
    let port_hex = format!("{port:04X}");
    tcp_sockets("/proc/net")
        .iter()
        .filter(|f| {
            f.get(1).and_then(|a| port_of(a)) == Some(port_hex.as_str()) && f.get(3).map(String::as_str) == Some("0A")
        })
        // For a listening socket (state 0A), `rx_queue` is the accept queue's length.
        .filter_map(|f| f.get(4)?.split_once(':').and_then(|(_, rx)| usize::from_str_radix(rx, 16).ok()))
        .sum()
}

/// The sockets of the TCP tables (`tcp`, `tcp6`) in `net_dir`, each split into its fields:
/// sl local_address rem_address st tx_queue:rx_queue tr:when retrnsmt uid timeout inode.
fn tcp_sockets(net_dir: &str) -> Vec<Vec<String>> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("{net_dir}/{table}")).ok())
        .flat_map(|text| {
            text.lines().skip(1).map(|l| l.split_whitespace().map(str::to_owned).collect()).collect::<Vec<_>>()
        })
        .collect()
}

/// The port of a `/proc/net/tcp` address (`HEXADDR:HEXPORT`), in hex.
fn port_of(address: &str) -> Option<&str> {
    address.rsplit_once(':').map(|(_, port)| port)
}
