//! A CA + bastion + built-in agent (the all-in-one), a node (`sshd` on port 22 of its
//! own loopback address, trusting the CA as enrollment would make it) and a user with a
//! certificate, plus an ssh config with `bastion` (terminated mode, `root%pve01`),
//! `jump` and `node` (jump mode through `jump`) host blocks: what the bastion tests and
//! benchmarks share.

use crate::Server;
use crate::server::write_file;
use crate::ssh::{ed25519_key, public_line, write_key_pair};
use crate::sshd::{NodeTrust, Sshd};
use portcullis_proto::NodeRecord;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

/// alice (group ops) may log in as root on `env:prod` devices through agent `local`;
/// sessions go idle after `idle`.
pub fn policy(idle: &str) -> String {
    // Caps far above the defaults: the benches hold thousands of sessions as alice.
    policy_with(&format!("idle = \"{idle}\", absolute = \"1h\", {BENCH_CAPS}"), "env:prod")
}

/// Session caps for a run that holds thousands of sessions of one user.
pub const BENCH_CAPS: &str = "max_per_user = 100000, max_per_device = 100000, max_per_agent = 100000";

/// The same with the role's `session` table contents and target tag given.
pub fn policy_with(session: &str, target_tag: &str) -> String {
    format!(
        r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.{target_tag}'
permissions = ["certs.issue", "sessions.kill"]
max_cert_ttl = "1h"
extensions = ["permit-pty"]
session = {{ {session} }}

[[binding]]
group = "ops"
roles = ["prod-root"]

[[rule]]
name = "prod-ssh"
purpose = "ssh_login"
targets = 'in:devices tags.env:prod'
scope = {{ agents = ["local"] }}
allowed_ports = [22, 2200]
"#
    )
}

/// alice may open browser consoles as root on `env:prod` devices through agent `local`.
pub const CONSOLE_POLICY: &str = r#"
[[role]]
name = "prod-console"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["devices.console.open", "certs.issue"]
session = { idle = "15m", absolute = "1h" }

[[binding]]
group = "ops"
roles = ["prod-console"]

[[rule]]
name = "prod-consoles"
purpose = "console_access"
targets = 'in:devices tags.env:prod'
scope = { agents = ["local"] }
"#;

/// An unused loopback address, so the node's sshd can listen on port 22 like a real one.
pub fn loopback_ip() -> String {
    let [a, b, c] = portcullis_sshcert::random_bytes::<3>();
    format!("127.{}.{}.{}", a.max(1), b, c.clamp(2, 254))
}

pub struct World {
    pub server: Server,
    pub node: Sshd,
    /// An admin API token.
    pub admin: String,
    pub dir: tempfile::TempDir,
    /// The ssh config file (`ssh -F`).
    pub config: PathBuf,
    /// The ssh options every host block shares (alice's key and certificate, batch mode).
    identity: String,
}

/// CA + bastion + agent (the all-in-one), an enrolled-looking node, and alice with a
/// certificate, written into an ssh config with `bastion` and `node` host blocks.
impl World {
    /// Starts everything; sessions go idle after `idle`.
    pub async fn start(idle: &str) -> World {
        World::start_with(idle, crate::ServerOpts::default()).await
    }

    pub async fn start_with(idle: &str, opts: crate::ServerOpts) -> World {
        let server = Server::start_with(opts).await;
        let (status, body) = server.write_policy("prod.toml", &policy(idle)).await;
        assert!(status.is_success(), "policy: {body}");
        let admin = server.admin_token().await;
        let node = add_node(&server, &admin, "pve01", &loopback_ip(), None, None).await;

        server.add_user(&admin, "alice", &["ops"], PASSWORD).await;
        let dir = tempfile::tempdir().unwrap();
        let key = ed25519_key();
        let key_path = write_key_pair(dir.path(), "id", &key);
        let token = server.login("alice", PASSWORD).await;
        let (status, body) = server.issue_cert(&token, &public_line(&key)).await;
        assert!(status.is_success(), "issue: {body}");
        let cert = write_file(dir.path(), "id-cert.pub", body["certificate"].as_str().unwrap());
        let common = format!(
            "  IdentityFile {}\n  CertificateFile {}\n  IdentitiesOnly yes\n  IdentityAgent none\n  BatchMode yes\n\
         \x20 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n\
         \x20 LogLevel ERROR\n  ConnectTimeout 20\n",
            key_path.display(),
            cert.display()
        );
        let b = server.bastion;
        let ip = node.ip.clone();
        let config = write_file(
            dir.path(),
            "ssh_config",
            format!(
                "Host bastion\n  HostName {}\n  Port {}\n  User root%pve01\n{common}\
             Host jump\n  HostName {}\n  Port {}\n  User alice\n{common}\
             Host node\n  HostName {ip}\n  Port 22\n  User root\n  ProxyJump jump\n{common}",
                b.ip(),
                b.port(),
                b.ip(),
                b.port()
            ),
        );
        World { server, node, admin, dir, config, identity: common }
    }

    /// Appends a jump-mode host block `alias`: `root@ip:port` through the bastion.
    pub fn add_jump_host(&self, alias: &str, ip: &str, port: u16) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let block =
            format!("Host {alias}\n  HostName {ip}\n  Port {port}\n  User root\n  ProxyJump jump\n{}", self.identity);
        std::fs::write(&self.config, format!("{text}{block}")).unwrap();
    }

    /// Appends a terminated-mode host block `alias` for user `LOGIN%DEVICE`.
    pub fn add_host(&self, alias: &str, user: &str) {
        self.add_host_via(alias, user, self.server.bastion);
    }

    /// [`World::add_host`] through the bastion listening at `bastion` (a standalone one).
    pub fn add_host_via(&self, alias: &str, user: &str, bastion: std::net::SocketAddr) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let b = bastion;
        let block =
            format!("Host {alias}\n  HostName {}\n  Port {}\n  User {user}\n{}", b.ip(), b.port(), self.identity);
        std::fs::write(&self.config, format!("{text}{block}")).unwrap();
    }

    /// Runs `ssh` in the background; returns the child.
    pub fn spawn_ssh(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new("ssh")
            .arg("-F")
            .arg(&self.config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `ssh ARGS… 'echo started; COMMAND'` in the background, returned once the remote
    /// command runs (the session is fully connected).
    pub fn spawn_started(&self, host: &str, command: &str) -> std::process::Child {
        self.spawn_started_with(&[host], command)
    }

    /// [`World::spawn_started`] with `ssh` options before the host (`args` ends with it).
    pub fn spawn_started_with(&self, args: &[&str], command: &str) -> std::process::Child {
        use std::io::BufRead;
        let started = format!("echo started; {command}");
        let mut child = self.spawn_ssh(&[args, &[started.as_str()]].concat());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert_eq!(line.trim(), "started", "the session did not start");
        child
    }

    /// The id of a live session, waiting for one to appear.
    pub async fn live_session_id(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.server.get_json(Some(&self.admin), "/v1/admin/sessions").await;
            assert!(status.is_success(), "{body}");
            if let Some(id) = body.as_array().and_then(|a| a.first()).and_then(|s| s["session_id"].as_str()) {
                return id.to_owned();
            }
            assert!(Instant::now() < deadline, "no live session appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A hand-made SSH client (russh) logged in to the bastion as `user` with alice's own
    /// key and certificate: for what stock `ssh` would not send.
    pub async fn russh_login(&self, user: &str) -> russh::client::Handle<crate::ssh::TrustAnyHost> {
        let key = std::fs::read_to_string(self.dir.path().join("id")).unwrap();
        let key = ssh_key::PrivateKey::from_openssh(key).unwrap();
        let cert = std::fs::read_to_string(self.dir.path().join("id-cert.pub")).unwrap();
        let cert = ssh_key::Certificate::from_openssh(cert.trim()).unwrap();
        let config = std::sync::Arc::new(russh::client::Config::default());
        let mut conn = russh::client::connect(config, self.server.bastion, crate::ssh::TrustAnyHost).await.unwrap();
        let auth = conn.authenticate_openssh_cert(user, std::sync::Arc::new(key), cert).await.unwrap();
        assert!(auth.success(), "alice logs in as {user} through the bastion");
        conn
    }

    /// A node `name` (`env:prod`) that is a TCP listener on `ip:port` with a small receive
    /// buffer: it accepts one connection and reads nothing until `go` is sent, then reads
    /// to the end and returns what came — so what is sent to it piles up in the bastion.
    pub async fn add_slow_reader(
        &self,
        name: &str,
        ip: &str,
        port: u16,
    ) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::AsyncReadExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind(format!("{ip}:{port}").parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let node = NodeRecord {
            name: name.into(),
            addresses: vec![ip.into()],
            tags: [("env".to_owned(), "prod".to_owned())].into(),
            ssh_port: Some(port),
            ..Default::default()
        };
        self.server.add_node(&self.admin, &node).await;
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = wait.await;
            let mut received = Vec::new();
            let _ = stream.read_to_end(&mut received).await;
            received
        });
        (go, reader)
    }

    /// Runs `program -F config ARGS…` (ssh, scp, sftp) to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        std::process::Command::new(program).arg("-F").arg(&self.config).args(args).output().unwrap()
    }
}

/// An ssh run's status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A node as enrollment leaves it: registered (tags `env:prod`, the given agent), an
/// `sshd` on `ip:22` (inside `netns` if given) trusting the CA's user keys with the
/// principals the CA lists for it, and its host key pinned in the inventory.
pub async fn add_node(
    server: &Server,
    admin: &str,
    name: &str,
    ip: &str,
    agent: Option<&str>,
    netns: Option<&str>,
) -> Sshd {
    add_node_with(server, admin, NewNode { agent, netns, ..NewNode::at(name, ip) }).await
}

/// What [`add_node_with`] sets up.
pub struct NewNode<'a> {
    pub name: &'a str,
    pub ip: &'a str,
    pub agent: Option<&'a str>,
    pub netns: Option<&'a str>,
    /// Appended to the node's `sshd_config` (e.g. a `Match` block).
    pub sshd_extra: &'a str,
    /// Pinned in the inventory instead of the node's real host key.
    pub pinned_host_key: Option<String>,
    /// Where its sshd listens and what the inventory says (`None`: 22, unsaid).
    pub ssh_port: Option<u16>,
}

impl<'a> NewNode<'a> {
    /// `name` at `ip`, served by the default agent, its sshd on port 22 with nothing
    /// extra, its real host key pinned.
    pub fn at(name: &'a str, ip: &'a str) -> NewNode<'a> {
        NewNode { name, ip, agent: None, netns: None, sshd_extra: "", pinned_host_key: None, ssh_port: None }
    }
}

/// [`add_node`] with every option.
pub async fn add_node_with(server: &Server, admin: &str, n: NewNode<'_>) -> Sshd {
    let record = NodeRecord {
        name: n.name.into(),
        addresses: vec![n.ip.to_owned()],
        tags: [("env".to_owned(), "prod".to_owned())].into(),
        agent: n.agent.map(str::to_owned),
        ssh_port: n.ssh_port,
        ..Default::default()
    };
    server.add_node(admin, &record).await;
    let (status, principals) = server.get_json(Some(admin), &format!("/v1/nodes/{}/principals", n.name)).await;
    assert!(status.is_success(), "{principals}");
    let principals = serde_json::from_value(principals["principals"].clone()).unwrap();
    let trust = NodeTrust { trusted_user_ca_keys: server.user_ca_keys.clone(), principals, krl: None };
    let node = Sshd::start_configured(&trust, n.ip, n.ssh_port.unwrap_or(22), n.netns, n.sshd_extra);
    let host_keys = vec![n.pinned_host_key.unwrap_or_else(|| node.host_public_key())];
    let pin = portcullis_proto::NodeUpdate { host_keys: Some(host_keys), ..Default::default() };
    server.update_node(admin, n.name, &pin).await;
    node
}

/// Waits for a backgrounded ssh to end; its output and how long that took.
pub fn wait_output(child: std::process::Child, within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(within).expect("session did not end in time").unwrap();
    (out, started.elapsed())
}
