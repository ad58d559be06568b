//! Standalone data-plane services as their own `portcullisd agent` / `portcullisd
//! bastion` processes, enrolled with a service token like an operator would.

use crate::Server;
use crate::bins::bin;
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A one-use enrollment token for a service of `kind` (`agent`, `bastion`).
pub async fn service_token(server: &Server, admin: &str, kind: &str) -> String {
    let body = json!({ "ttl_seconds": 600, "uses": 1, "service": kind });
    let (status, body) = server.post_json(Some(admin), "/v1/admin/enroll-tokens", &body).await;
    assert!(status.is_success(), "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// A policy rule: sessions through agent `name` are allowed on `env:prod` devices it
/// serves.
pub fn agent_rule(name: &str) -> String {
    format!(
        "[[rule]]\nname = \"via-{name}\"\npurpose = \"ssh_login\"\ntargets = 'in:devices tags.env:prod'\n\
         scope = {{ agents = [\"{name}\"] }}\n"
    )
}

/// A child process killed and reaped when dropped, however the test ends; `None` while
/// it is down (killed and not started again yet).
pub struct Process(pub Option<Child>);

impl Process {
    pub fn new(child: Child) -> Process {
        Process(Some(child))
    }

    /// Its process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// SIGKILL, then waits for it.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// `portcullisd agent`; its stdout goes to `<state>.out`, its log to `<state>.log`.
pub fn spawn_agent(ca_url: &str, pin: &str, name: &str, state: &Path, token: Option<&str>, extra: &[String]) -> Child {
    spawn_agent_in(None, ca_url, pin, name, state, token, extra)
}

/// `portcullisd agent`, optionally inside a network namespace.
pub fn spawn_agent_in(
    netns: Option<&str>,
    ca_url: &str,
    pin: &str,
    name: &str,
    state: &Path,
    token: Option<&str>,
    extra: &[String],
) -> Child {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("portcullisd"));
            c
        }
        None => Command::new(bin("portcullisd")),
    };
    cmd.arg("agent");
    spawn_service(cmd, ca_url, pin, name, state, token, extra)
}

/// `portcullisd bastion` with its SSH listener on loopback port 0 and its agent
/// listener on a free loopback port (agents are told it by the CA); its stdout (which
/// names the listeners) goes to `<state>.out`, its log to `<state>.log`.
pub fn spawn_bastion(
    ca_url: &str,
    pin: &str,
    name: &str,
    state: &Path,
    token: Option<&str>,
    extra: &[String],
) -> Child {
    let agents = free_loopback_addr();
    spawn_bastion_at("127.0.0.1:0", &agents, ca_url, pin, name, state, token, extra)
}

/// [`spawn_bastion`] with both listeners where given (a restart keeps its addresses:
/// agents dial the endpoint registered at enrollment).
#[allow(clippy::too_many_arguments)]
pub fn spawn_bastion_at(
    ssh: &str,
    agents: &str,
    ca_url: &str,
    pin: &str,
    name: &str,
    state: &Path,
    token: Option<&str>,
    extra: &[String],
) -> Child {
    let mut cmd = Command::new(bin("portcullisd"));
    cmd.args(["bastion", "--listen", ssh, "--agent-listen", agents, "--agent-endpoint", agents]);
    spawn_service(cmd, ca_url, pin, name, state, token, extra)
}

/// `<state>.<ext>`, appended to (a restarted service adds to what it wrote before).
fn appending(state: &Path, ext: &str) -> std::fs::File {
    std::fs::File::options().create(true).append(true).open(state.with_extension(ext)).unwrap()
}

/// `127.0.0.1:PORT` of a port free a moment ago.
pub fn free_loopback_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

#[allow(clippy::too_many_arguments)]
fn spawn_service(
    mut cmd: Command,
    ca_url: &str,
    pin: &str,
    name: &str,
    state: &Path,
    token: Option<&str>,
    extra: &[String],
) -> Child {
    cmd.args(["--ca", ca_url, "--ca-fingerprint", pin, "--name", name, "--state-dir"])
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(appending(state, "out"))
        .stderr(appending(state, "log"));
    if let Some(token) = token {
        cmd.args(["--enroll-token", token]);
    }
    cmd.spawn().unwrap()
}

/// The value after `prefix` on the first line of a service's stdout file that has it,
/// waiting up to 30 s for the line (with the service's log in the failure).
pub fn wait_line(state: &Path, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::fs::read_to_string(state.with_extension("out")).unwrap_or_default();
        if let Some(rest) = out.lines().find_map(|l| l.strip_prefix(prefix)) {
            return rest.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line {prefix:?} in time:\n{out}\nlog: {}",
            std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the CA lists `agent` as connected to a bastion (to `bastion`, when given).
pub async fn wait_connected(server: &Server, admin: &str, agent: &str, log: &Path) {
    wait_connected_to(server, admin, agent, None, log).await
}

/// Whether `GET /v1/admin/agents` (`agents`) lists `agent` as connected to a bastion
/// (to `bastion`, when given).
pub fn agent_connected(agents: &serde_json::Value, agent: &str, bastion: Option<&str>) -> bool {
    agents.as_array().is_some_and(|all| {
        all.iter().any(|a| {
            a["name"] == agent
                && a["connected_to"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty() && bastion.is_none_or(|b| c.iter().any(|x| x == b)))
        })
    })
}

pub async fn wait_connected_to(server: &Server, admin: &str, agent: &str, bastion: Option<&str>, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server.get_json(Some(admin), "/v1/admin/agents").await;
        assert!(status.is_success(), "{body}");
        if agent_connected(&body, agent, bastion) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {agent} never connected: {body}\nagent log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
