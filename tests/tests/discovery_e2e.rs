//! Hardware discovery end to end: the all-in-one's bastion claims due nodes from its CA,
//! logs in through the built-in agent to a throwaway `sshd` with a discovery certificate,
//! and the CA stores the parsed facts. The node's account `portcullis-discovery` exists
//! (created here when missing) and sshd forces a fixture script printing a report, so the
//! test can change the "hardware" between runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_proto::discovery::{DISCOVERY_COMMAND, DISCOVERY_LOGIN};
use portcullis_tests::bastion_world::{NewNode, add_node_with, loopback_ip};
use portcullis_tests::sshd::Sshd;
use portcullis_tests::{Server, ServerOpts};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const POLICY: &str = r#"
[[role]]
name = "prod-root"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue"]
max_cert_ttl = "1h"

[[binding]]
group = "ops"
roles = ["prod-root"]

[[rule]]
name = "prod-ssh"
purpose = "ssh_login"
targets = 'in:devices tags.env:prod'
scope = { agents = ["local"] }

[[rule]]
name = "hardware"
purpose = "inventory_enrichment"
targets = 'in:devices tags.env:prod'
scope = { agents = ["local"] }
"#;

const REPORT: &str = "@@portcullis-discovery v1
@@section dmidecode-t1
# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.2.0 present.

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: Dell Inc.
\tProduct Name: PowerEdge R640
\tVersion: Not Specified
\tSerial Number: 7XYZ123
\tUUID: 4C4C4544-0058-5910-8033-B7C04F313233
\tFamily: PowerEdge
@@section dmidecode-t3
Handle 0x0300, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: Dell Inc.
\tType: Rack Mount Chassis
\tSerial Number: 7XYZ123
\tAsset Tag: Not Specified
@@section ip-link
1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eno1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq master vmbr0 state UP mode DEFAULT group default qlen 1000\\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff
3: vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff
@@section ethtool eno1
Settings for eno1:
\tSpeed: 10000Mb/s
\tDuplex: Full
\tLink detected: yes
@@section ethtool-i eno1
driver: ixgbe
firmware-version: 0x800008a4
bus-info: 0000:18:00.0
@@end
";

/// The discovery account, as `portcullis-enroll --discovery` makes it (a real shell is
/// needed to run the forced command; the certificate and sshd forbid everything else).
fn ensure_discovery_user() {
    let exists = std::process::Command::new("id").arg(DISCOVERY_LOGIN).output().unwrap().status.success();
    if !exists {
        let out = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", DISCOVERY_LOGIN])
            .output()
            .unwrap();
        let again = std::process::Command::new("id").arg(DISCOVERY_LOGIN).output().unwrap().status.success();
        assert!(again, "useradd: {}", String::from_utf8_lossy(&out.stderr));
    }
    // No password, but not "locked" (`!`): sshd without PAM refuses locked accounts for
    // every method, certificates included.
    let ok = std::process::Command::new("usermod").args(["-p", "*", DISCOVERY_LOGIN]).status().unwrap().success();
    assert!(ok, "usermod");
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A world-readable directory with the report and the script sshd forces.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = Fixture { dir };
        f.set_report(REPORT);
        let script = f.dir.path().join("discover.sh");
        std::fs::write(&script, format!("#!/bin/sh\nexec cat {}\n", f.report_path().display())).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        f
    }

    fn report_path(&self) -> std::path::PathBuf {
        self.dir.path().join("report.txt")
    }

    fn set_report(&self, text: &str) {
        let tmp = self.dir.path().join("report.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(tmp, self.report_path()).unwrap();
    }

    /// Replaces what the forced command does.
    fn set_script(&self, text: &str) {
        std::fs::write(self.dir.path().join("discover.sh"), text).unwrap();
    }

    fn sshd_match_block(&self) -> String {
        format!(
            "Match User {DISCOVERY_LOGIN}\n  ForceCommand {}\n  PermitTTY no\n  AllowTcpForwarding no\n  \
             X11Forwarding no\n  AllowAgentForwarding no\n",
            self.dir.path().join("discover.sh").display()
        )
    }
}

/// The all-in-one with discovery on every second and [`POLICY`]; an admin token.
async fn discovery_server() -> (Server, String) {
    let server = Server::start_with(ServerOpts {
        args: vec!["--discovery".into(), "--discovery-interval".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let (status, body) = server.write_policy("prod.toml", POLICY).await;
    assert!(status.is_success(), "policy: {body}");
    let admin = server.admin_token().await;
    (server, admin)
}

/// A node registered with tags `env:prod`, its sshd trusting the CA with the principals
/// the CA lists (including the discovery login, checked here), and `pinned` (or its real
/// host key) as the pinned host key.
async fn add_node(server: &Server, admin: &str, name: &str, fixture: &Fixture, pinned: Option<String>) -> Sshd {
    let ip = loopback_ip();
    let extra = fixture.sshd_match_block();
    let new = NewNode { sshd_extra: &extra, pinned_host_key: pinned, ..NewNode::at(name, &ip) };
    let node = add_node_with(server, admin, new).await;
    let (status, principals) = server.get_json(Some(admin), &format!("/v1/nodes/{name}/principals")).await;
    assert!(status.is_success(), "{principals}");
    let listed = principals["principals"][DISCOVERY_LOGIN].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "the discovery login lists exactly its node principal: {principals}");
    assert!(listed[0].as_str().unwrap().starts_with("pn_"), "{principals}");
    node
}

async fn inventory(server: &Server, admin: &str, node: &str) -> Value {
    let (status, body) = server.get_json(Some(admin), &format!("/v1/admin/inventory/{node}")).await;
    assert!(status.is_success(), "{body}");
    body
}

/// Polls `check` on pve01's inventory until it holds (or fails after 40 s).
async fn wait_inventory(
    server: &Server,
    admin: &str,
    sshd: &Sshd,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let node = "pve01";
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let body = inventory(server, admin, node).await;
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}\nnode log:\n{}\nserver log:\n{}", sshd.log(), server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn other_host_key(dir: &Path) -> String {
    let path = dir.join("other");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_stores_facts_detects_drift_and_refuses_wrong_host_keys() {
    ensure_discovery_user();
    let fixture = Fixture::new();
    let (server, admin) = discovery_server().await;
    let node = add_node(&server, &admin, "pve01", &fixture, None).await;
    let keys = tempfile::tempdir().unwrap();
    let imposter = add_node(&server, &admin, "pve02", &fixture, Some(other_host_key(keys.path()))).await;

    // First run: facts stored, one history entry, one `inventory_drift` (first).
    let first = wait_inventory(&server, &admin, &node, "facts stored", |b| {
        b["history"].as_array().is_some_and(|h| !h.is_empty())
    })
    .await;
    assert_eq!(first["facts"]["system.serial"], "7XYZ123", "{first}");
    assert_eq!(first["facts"]["nic.eno1.speed_mbps"], "10000", "{first}");
    assert_eq!(first["facts"]["nic.eno1.driver"], "ixgbe", "{first}");
    assert!(first["facts"].get("nic.vmbr0.mac").is_none(), "bridges are not hardware: {first}");
    // The node saw the discovery certificate's key id.
    assert!(node.log().contains("ID discovery:"), "node log: {}", node.log());

    // Later runs with the same output: zero changes (no history row, no drift audit).
    let runs_before = server.audit_events("discovery_started").await.len();
    wait_inventory(&server, &admin, &node, "an unchanged run", |b| b["last_result"] == "unchanged").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.audit_events("discovery_started").await.iter().filter(|r| r.payload["device"] == "pve01").count()
        < runs_before + 2
    {
        assert!(Instant::now() < deadline, "no further runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let same = inventory(&server, &admin, "pve01").await;
    assert_eq!(same["history"].as_array().unwrap().len(), 1, "unchanged runs add no history: {same}");
    assert_eq!(same["changed_at"], first["changed_at"], "{same}");
    let drifts = server.audit_events("inventory_drift").await;
    assert_eq!(drifts.iter().filter(|r| r.payload["device"] == "pve01").count(), 1, "{drifts:?}");

    // The NIC renegotiated at 1 Gb/s: drift recorded and audited with the field.
    fixture.set_report(&REPORT.replace("Speed: 10000Mb/s", "Speed: 1000Mb/s"));
    let changed =
        wait_inventory(&server, &admin, &node, "drift", |b| b["facts"]["nic.eno1.speed_mbps"] == "1000").await;
    let history = changed["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{changed}");
    assert_eq!(history[0]["changes"][0]["field"], "nic.eno1.speed_mbps", "{changed}");
    assert_eq!(history[0]["changes"][0]["old"], "10000", "{changed}");
    let drifts = server.audit_events("inventory_drift").await;
    let last = drifts.iter().rev().find(|r| r.payload["device"] == "pve01").unwrap();
    assert_eq!(last.payload["fields"], serde_json::json!(["nic.eno1.speed_mbps"]), "{last:?}");
    assert_eq!(last.payload["first"], false);

    // The CLI shows the facts and the change.
    let cli = portcullis_tests::cli::AdminCli::login(&server).await;
    let shown = cli.run(&["admin", "inventory", "show", "pve01"], "");
    assert!(shown.contains("system.serial") && shown.contains("7XYZ123"), "{shown}");
    assert!(shown.contains("nic.eno1.speed_mbps: 10000 -> 1000"), "{shown}");

    // Garbage output: refused, audited, facts kept.
    fixture.set_report("hello\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = server.audit_events("discovery_failed").await;
        if failed.iter().any(|r| r.payload["device"] == "pve01" && r.payload["reason"] == "output_invalid") {
            break;
        }
        assert!(Instant::now() < deadline, "garbage not refused: {failed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(inventory(&server, &admin, "pve01").await["facts"]["system.serial"], "7XYZ123");

    // dmidecode printed nothing (the sudoers entry broke): the run succeeds on the NICs,
    // the DMI facts known stay, nothing drifts, and the CA says what to check.
    let start = REPORT.find("@@section dmidecode-t1").unwrap();
    let end = REPORT.find("@@section ip-link").unwrap();
    let without_dmi = format!("{}@@section dmidecode-t1\n@@section dmidecode-t3\n{}", &REPORT[..start], &REPORT[end..]);
    fixture.set_report(&without_dmi.replace("Speed: 10000Mb/s", "Speed: 1000Mb/s"));
    let kept = wait_inventory(&server, &admin, &node, "a run without DMI", |b| b["last_result"] == "unchanged").await;
    assert_eq!(kept["facts"]["system.serial"], "7XYZ123", "{kept}");
    assert_eq!(kept["history"].as_array().unwrap().len(), 2, "{kept}");
    assert!(server.log().contains("no dmidecode facts"), "{}", server.log());

    // pve02's pinned key is not the one its sshd presents: refused before authentication,
    // audited, nothing stored.
    let refused = server.audit_events("discovery_failed").await;
    let mismatch = refused.iter().find(|r| r.payload["device"] == "pve02").expect("pve02 failure audited");
    assert_eq!(mismatch.payload["reason"], "host_key_mismatch", "{mismatch:?}");
    let view = inventory(&server, &admin, "pve02").await;
    assert!(view["facts"].as_object().unwrap().is_empty(), "{view}");
    assert!(!imposter.log().contains("Accepted"), "no login on the imposter: {}", imposter.log());
}

/// Discovery is scheduled per node: a node whose command hangs (until the 30 s exec
/// timeout) delays only itself — the other node is discovered every interval meanwhile —
/// and is not handed out again while its run is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_node_delays_only_itself() {
    ensure_discovery_user();
    let (fixture, hanging) = (Fixture::new(), Fixture::new());
    hanging.set_script("#!/bin/sh\nexec sleep 60\n");
    let (server, admin) = discovery_server().await;
    let stuck = add_node(&server, &admin, "pve02", &hanging, None).await;
    let node = add_node(&server, &admin, "pve01", &fixture, None).await;

    let runs = |device: &'static str| {
        let server = &server;
        async move {
            let started = server.audit_events("discovery_started").await;
            started.iter().filter(|r| r.payload["device"] == device).count()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs("pve01").await < 4 || !stuck.log().contains(&format!("Accepted publickey for {DISCOVERY_LOGIN}")) {
        assert!(
            Instant::now() < deadline,
            "pve01 waited for the hanging node: {} runs\n{}\n{}",
            runs("pve01").await,
            node.log(),
            stuck.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(runs("pve02").await, 1, "the hanging node was handed out again while its run was open");
    assert!(inventory(&server, &admin, "pve02").await["last_result"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_off_opens_no_connection() {
    ensure_discovery_user();
    let fixture = Fixture::new();
    // The same policy (a matching inventory_enrichment rule), no `--discovery`, 1 s interval.
    let server =
        Server::start_with(ServerOpts { args: vec!["--discovery-interval".into(), "1".into()], ..Default::default() })
            .await;
    let (status, body) = server.write_policy("prod.toml", POLICY).await;
    assert!(status.is_success(), "policy: {body}");
    let admin = server.admin_token().await;
    let node = add_node(&server, &admin, "pve01", &fixture, None).await;
    // Five claim intervals. The one connection the node's log may show is the harness's
    // readiness probe (closed before the SSH banner exchange).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = node.log();
    assert!(log.matches("Connection from").count() <= 1, "discovery is off, yet: {log}");
    assert!(!log.contains(DISCOVERY_LOGIN) && !log.contains("Accepted"), "discovery is off, yet: {log}");
    assert!(server.audit_events("discovery_started").await.is_empty());
    let view = inventory(&server, &admin, "pve01").await;
    assert!(view["last_run_at"].is_null(), "{view}");
}

/// The README's way: a node enrolled with the real `portcullis-enroll --discovery`
/// (under `--root`, with a real sshd on a port of its own) is discovered — the
/// enrollment installed the discovery principal and the script, and the CA learnt the
/// node's SSH port from `sshd -T`. Nothing here is written by the harness but the
/// node's own sshd config and the account (left to the root's owner under `--root`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_enrolled_with_portcullis_enroll_discovery_is_discovered() {
    use portcullis_tests::enroll_node::{NODE, Node, run};
    ensure_discovery_user();
    let (server, admin) = discovery_server().await;
    let request = serde_json::json!({ "ttl_seconds": 600, "uses": 1, "tags": { "env": "prod" } });
    let (status, token) = server.post_json(Some(&admin), "/v1/admin/enroll-tokens", &request).await;
    assert!(status.is_success(), "{token}");
    let node = Node::start_with(false, |root| {
        // On a real node the certificate's forced command is the installed script's path;
        // below `--root` it lives under the root, so the node's own config points there.
        let script = root.join(DISCOVERY_COMMAND.trim_start_matches('/'));
        let config = root.join("etc/ssh/sshd_config");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!("Match User {DISCOVERY_LOGIN}\n  ForceCommand {}\n", script.display()));
        std::fs::write(&config, text).unwrap();
        // sshd reads the principals file as the logging-in user.
        std::fs::set_permissions(root.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    });

    let mut cmd = node.enroll_cmd();
    cmd.args(["enroll", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--discovery"]);
    cmd.args(["--token", token["token"].as_str().unwrap(), "--address", "127.0.0.1"]);
    let (code, json, out) = run(cmd);
    assert_eq!(code, 0, "enroll: {json}\n{}\n{}", String::from_utf8_lossy(&out.stderr), server.log());
    let principals = std::fs::read_to_string(node.path(&format!("/etc/ssh/portcullis/principals/{DISCOVERY_LOGIN}")))
        .expect("enrollment installs the discovery principal");
    let principal = principals.split_whitespace().last().unwrap_or_default();
    assert!(principal.starts_with("pn_") && principal.ends_with(DISCOVERY_LOGIN), "{principals}");
    let (_, nodes) = server.get_json(Some(&admin), "/v1/admin/nodes").await;
    assert_eq!(nodes[0]["ssh_port"], node.port, "the CA recorded the node's sshd port: {nodes}");

    let deadline = Instant::now() + Duration::from_secs(40);
    let view = loop {
        let view = inventory(&server, &admin, NODE).await;
        if view["last_result"].as_str().is_some_and(|r| ["first", "changed", "unchanged"].contains(&r)) {
            break view;
        }
        let failed = server.audit_events("discovery_failed").await;
        assert!(
            Instant::now() < deadline,
            "no successful discovery run: {view}\nfailures: {failed:?}\nnode log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(node.log().contains(&format!("Accepted publickey for {DISCOVERY_LOGIN}")), "{}", node.log());
    assert!(server.audit_events("discovery_failed").await.is_empty(), "{view}");
}
