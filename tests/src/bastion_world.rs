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

pub const PASSWORD: &str = "correct horse battery staple";

/// alice (group ops) may log in as root on `env:prod` devices through agent `local`;
/// sessions go idle after `idle`.
pub fn policy(idle: &str) -> String {
    format!(
        r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue", "sessions.kill"]
max_cert_ttl = "1h"
extensions = ["permit-pty"]
session = {{ idle = "{idle}", absolute = "1h" }}

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

/// An unused loopback address, so the node's sshd can listen on port 22 like a real one.
fn loopback_ip() -> String {
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
}

/// CA + bastion + agent (the all-in-one), an enrolled-looking node, and alice with a
/// certificate, written into an ssh config with `bastion` and `node` host blocks.
impl World {
    /// Starts everything; sessions go idle after `idle`.
    pub async fn start(idle: &str) -> World {
        let server = Server::start().await;
        let (status, body) = server.write_policy("prod.toml", &policy(idle)).await;
        assert!(status.is_success(), "policy: {body}");
        let admin = server.admin_token().await;
        let ip = loopback_ip();
        // The node trusts the CA exactly as enrollment would make it (principals from the CA).
        let mut record = NodeRecord {
            name: "pve01".into(),
            addresses: vec![ip.clone()],
            tags: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        };
        server.add_node(&admin, &record).await;
        let (status, principals) = server.get_json(Some(&admin), "/v1/nodes/pve01/principals").await;
        assert!(status.is_success(), "{principals}");
        let principals = serde_json::from_value(principals["principals"].clone()).unwrap();
        let node = Sshd::start_at(
            &NodeTrust { trusted_user_ca_keys: server.user_ca_keys.clone(), principals, krl: None },
            &ip,
            22,
        );
        record.host_keys = vec![node.host_public_key()];
        server.add_node(&admin, &record).await;

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
        World { server, node, admin, dir, config }
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
