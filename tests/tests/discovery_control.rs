//! The CA's side of hardware discovery (`proto::discovery`), driven over HTTPS the way a
//! bastion drives it, on SQLite and on PostgreSQL: off means no work; a claim hands out
//! only nodes an `inventory_enrichment` rule covers, whose agent the bastion holds and
//! whose host keys are pinned, each once per interval; the certificate (ssh-keygen -L):
//! one node principal, force-command, no extensions, minutes of life; reports only for
//! the claiming bastion's open run; an unchanged second run writes no history and no
//! audit record; drift and failures are audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaConfig, DiscoverySettings, ManualClock};
use portcullis_policies::principal::node_principal;
use portcullis_policies::proof;
use portcullis_proto::NodeRecord;
use portcullis_proto::bastion::ServiceKind;
use portcullis_proto::discovery::*;
use portcullis_tests::ssh::{ed25519_key, public_line, ssh_keygen_ok};
use portcullis_tests::{Postgres, ServedCa, TEST_PASSPHRASE, first_admin, sqlite_url};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["audit.read", "nodes.manage", "users.manage"]

[[role]]
name = "ops"
logins = ["root"]
targets = 'in:devices tags.env:lab'
permissions = ["certs.issue", "devices.console.open"]
max_cert_ttl = "1h"

[[binding]]
group = "admins"
roles = ["admin", "ops"]

[[rule]]
name = "lab-console"
purpose = "console_access"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local", "edge1"] }

[[rule]]
name = "hardware"
purpose = "inventory_enrichment"
targets = 'in:devices tags.env:lab'
scope = { agents = ["local", "edge1"] }
"#;

const REPORT: &str = "@@portcullis-discovery v1
@@section dmidecode-t1
Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: Supermicro
\tProduct Name: SYS-1029P-WTR
\tSerial Number: S123456X9
@@section dmidecode-t3
Handle 0x0003, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: Supermicro
\tType: Rack Mount Chassis
\tSerial Number: C8270AB12A34567
@@section ip-link
2: eno1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DEFAULT group default qlen 1000\\    link/ether ac:1f:6b:01:02:03 brd ff:ff:ff:ff:ff:ff
@@section ethtool eno1
Settings for eno1:
\tSpeed: 1000Mb/s
\tDuplex: Full
\tLink detected: yes
@@section ethtool-i eno1
driver: igb
bus-info: 0000:03:00.0
@@end
";

struct Fx {
    api: ServedCa,
    ca: Arc<Ca>,
    clock: ManualClock,
    admin: String,
    b1: String,
    b2: String,
    _dir: tempfile::TempDir,
}

async fn fixture(db_url: Option<&str>, enabled: bool) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.toml"), POLICY).unwrap();
    let url = db_url.map(str::to_owned).unwrap_or_else(|| sqlite_url(dir.path()));
    let clock = ManualClock::new(1_800_000_000);
    let ca = open_ca(&url, &policy_dir, &clock, enabled).await;
    let api = ServedCa::start(Arc::clone(&ca)).await;
    let admin = first_admin(&ca, "admins", "192.0.2.7").await;
    let caller = ca.identity().caller(&admin).await.unwrap();
    let nodes = ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    for (name, env, agent, keys) in [
        ("pve01", "lab", None, true),          // default agent `local`
        ("pve02", "lab", Some("edge1"), true), // only b2 holds edge1
        ("prod01", "prod", None, true),        // no inventory_enrichment rule
        ("bare01", "lab", None, false),        // no pinned host key: never TOFU
    ] {
        let node = NodeRecord {
            name: name.into(),
            addresses: vec![format!("10.0.0.{}", name.len())],
            agent: agent.map(str::to_owned),
            tags: [("env".to_owned(), env.to_owned())].into(),
            host_keys: if keys { vec![public_line(&ed25519_key())] } else { Vec::new() },
            ..Default::default()
        };
        ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    let mut tokens = Vec::new();
    for name in ["b1", "b2"] {
        let key = public_line(&ed25519_key());
        tokens.push(
            ca.services()
                .register_service(ServiceKind::Bastion, name, &key, None)
                .await
                .unwrap()
                .api_token
                .expose()
                .to_owned(),
        );
    }
    let b2 = tokens.pop().unwrap();
    let b1 = tokens.pop().unwrap();
    Fx { api, ca, clock, admin, b1, b2, _dir: dir }
}

async fn open_ca(url: &str, policy_dir: &Path, clock: &ManualClock, enabled: bool) -> Arc<Ca> {
    let mut config = CaConfig::new(url.to_owned(), policy_dir.to_owned(), SecretString::from(TEST_PASSPHRASE));
    config.default_agent = Some("local".to_owned());
    config.discovery = DiscoverySettings { enabled, interval_secs: 600, concurrency: 2 };
    Arc::new(Ca::open(config, Arc::new(clock.clone())).await.unwrap())
}

async fn claim(fx: &Fx, bastion: &str, agents: &[&str]) -> DiscoveryClaimResponse {
    let body = json!({"agents": agents, "public_key": public_line(&ed25519_key()), "max_jobs": 100});
    let (status, v) = fx.api.post_json(Some(bastion), "/v1/bastion/discovery/claim", &body).await;
    assert_eq!(status, StatusCode::OK, "claim: {v}");
    serde_json::from_value(v).unwrap()
}

async fn report(fx: &Fx, bastion: &str, run_id: &str, device: &str, outcome: Value) -> (StatusCode, Value) {
    let body = json!({"run_id": run_id, "device": device, "outcome": outcome});
    fx.api.post_json(Some(bastion), "/v1/bastion/discovery/report", &body).await
}

async fn audit(ca: &Ca, event: &str) -> Vec<Value> {
    portcullis_tests::audit_payloads(ca, event).await
}

async fn inventory(fx: &Fx, node: &str) -> Value {
    let (status, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/inventory/{node}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_hands_out_nothing() {
    let fx = fixture(None, false).await;
    let answer = claim(&fx, &fx.b1, &["local", "edge1"]).await;
    assert!(!answer.enabled);
    assert!(answer.jobs.is_empty());
    assert_eq!(answer.next_claim_secs, 600);
    assert!(audit(&fx.ca, "discovery_started").await.is_empty());
    // Positive control: the same world with discovery on hands out work.
    let on = fixture(None, true).await;
    assert_eq!(claim(&on, &on.b1, &["local"]).await.jobs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_certificates_reports_and_drift_on_sqlite() {
    contract(&fixture(None, true).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_certificates_reports_and_drift_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    contract(&fixture(Some(&pg.url()), true).await).await;
}

async fn contract(fx: &Fx) {
    // Only pve01: pve02's agent is not b1's, prod01 has no rule, bare01 no pinned key.
    let answer = claim(fx, &fx.b1, &["local"]).await;
    assert!(answer.enabled);
    assert_eq!(answer.concurrency, 2);
    let devices: Vec<&str> = answer.jobs.iter().map(|j| j.device.as_str()).collect();
    assert_eq!(devices, ["pve01"]);
    let job = &answer.jobs[0];
    assert_eq!((job.agent.as_str(), job.target_port, job.login.as_str()), ("local", 22, DISCOVERY_LOGIN));
    assert!(valid_run_id(&job.run_id));
    assert_eq!(job.known_host_keys.len(), 1);

    // The certificate: one node principal, force-command, no extensions, 3 minutes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d-cert.pub");
    std::fs::write(&path, format!("{}\n", job.certificate.trim())).unwrap();
    let text = ssh_keygen_ok(&["-L", "-f", path.to_str().unwrap()]);
    assert!(text.contains(&format!("Key ID: \"discovery:{}:pve01\"", job.run_id)), "{text}");
    let principal = node_principal("pve01", DISCOVERY_LOGIN);
    let after_principals = text.split("Principals:").nth(1).unwrap();
    let principals: Vec<&str> =
        after_principals.split("Critical Options:").next().unwrap().split_whitespace().collect();
    assert_eq!(principals, [principal.as_str()], "{text}");
    let options = text.split("Critical Options:").nth(1).unwrap().split("Extensions:").next().unwrap();
    assert_eq!(options.split_whitespace().collect::<Vec<_>>(), ["force-command", DISCOVERY_COMMAND], "{text}");
    let extensions = text.split("Extensions:").nth(1).unwrap();
    assert_eq!(extensions.trim(), "(none)", "no pty, no forwarding: {text}");
    let cert = ssh_key::Certificate::from_openssh(job.certificate.trim()).unwrap();
    assert_eq!(cert.valid_before() - 1_800_000_000, DISCOVERY_CERT_TTL_SECS);

    // The node's principals file for the discovery login: that principal only; none for
    // a node without a rule.
    let (_, p) = fx.api.get_json(Some(&fx.admin), "/v1/nodes/pve01/principals").await;
    assert_eq!(p["principals"][DISCOVERY_LOGIN], json!([principal]), "{p}");
    let (_, p) = fx.api.get_json(Some(&fx.admin), "/v1/nodes/prod01/principals").await;
    assert!(p["principals"].get(DISCOVERY_LOGIN).is_none(), "{p}");

    // Once per interval: b2 (holding both agents) gets pve02 only.
    let second = claim(fx, &fx.b2, &["local", "edge1"]).await;
    assert_eq!(second.jobs.iter().map(|j| j.device.as_str()).collect::<Vec<_>>(), ["pve02"]);

    // Reports: only the claiming bastion's open run.
    let output = json!({"status": "output", "stdout": REPORT});
    let (status, _) = report(fx, &fx.b2, &job.run_id, "pve01", output.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another bastion cannot report pve01's run");
    let (status, v) = report(fx, &fx.b1, &job.run_id, "pve01", output.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["result"], "first");
    let (status, _) = report(fx, &fx.b1, &job.run_id, "pve01", output.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a run is reported once");
    let first = inventory(fx, "pve01").await;
    assert_eq!(first["facts"]["system.serial"], "S123456X9", "{first}");
    assert_eq!(first["history"].as_array().unwrap().len(), 1);
    assert_eq!(audit(&fx.ca, "inventory_drift").await.len(), 1);

    // A second run with nothing changed: zero changes.
    let audit_len = fx.ca.core().store().audit_records(0, 100_000).await.unwrap().len();
    fx.clock.set(1_800_000_000 + 600);
    let again = claim(fx, &fx.b1, &["local"]).await;
    assert_eq!(again.jobs.len(), 1);
    let (_, v) = report(fx, &fx.b1, &again.jobs[0].run_id, "pve01", output.clone()).await;
    assert_eq!(v["result"], "unchanged", "{v}");
    let same = inventory(fx, "pve01").await;
    assert_eq!(same["history"], first["history"]);
    assert_eq!(same["changed_at"], first["changed_at"]);
    let records = fx.ca.core().store().audit_records(0, 100_000).await.unwrap();
    let new: Vec<&str> = records.iter().skip(audit_len).map(|r| r.event.as_str()).collect();
    assert_eq!(new, ["discovery_started"], "only the run's own record");

    // Drift: the serial changed (a mainboard swap).
    fx.clock.set(1_800_000_000 + 1200);
    let third = claim(fx, &fx.b1, &["local"]).await;
    let changed = json!({"status": "output", "stdout": REPORT.replace("S123456X9", "S999999X9")});
    let (_, v) = report(fx, &fx.b1, &third.jobs[0].run_id, "pve01", changed).await;
    assert_eq!((v["result"].as_str(), &v["changed_fields"]), (Some("changed"), &json!(["system.serial"])));
    let drift = audit(&fx.ca, "inventory_drift").await;
    assert_eq!(drift.last().unwrap()["fields"], json!(["system.serial"]));
    assert_eq!(inventory(fx, "pve01").await["history"].as_array().unwrap().len(), 2);

    // Failures are audited with their reason; garbage is output_invalid; facts are kept.
    let (_, v) =
        report(fx, &fx.b2, &second.jobs[0].run_id, "pve02", json!({"status": "failed", "reason": "host_key_mismatch"}))
            .await;
    assert_eq!(v["result"], "host_key_mismatch");
    fx.clock.set(1_800_000_000 + 1800);
    let fourth = claim(fx, &fx.b1, &["local"]).await;
    let (_, v) =
        report(fx, &fx.b1, &fourth.jobs[0].run_id, "pve01", json!({"status": "output", "stdout": "rm -rf /\n"})).await;
    assert_eq!(v["result"], "output_invalid");
    let failed = audit(&fx.ca, "discovery_failed").await;
    let reasons: Vec<(&str, &str)> =
        failed.iter().map(|f| (f["device"].as_str().unwrap(), f["reason"].as_str().unwrap())).collect();
    assert_eq!(reasons, [("pve02", "host_key_mismatch"), ("pve01", "output_invalid")]);
    assert_eq!(inventory(fx, "pve01").await["facts"]["system.serial"], "S999999X9");
    assert_eq!(inventory(fx, "pve01").await["last_result"], "output_invalid");

    // The console's device list carries the facts for the web UI; undiscovered nodes
    // have none.
    let (status, devices) = fx.api.get_json(Some(&fx.admin), "/v1/console/devices").await;
    assert_eq!(status, StatusCode::OK, "{devices}");
    let by_name = |n: &str| devices.as_array().unwrap().iter().find(|d| d["name"] == n).cloned().unwrap();
    assert_eq!(by_name("pve01")["hardware"]["system.serial"], "S999999X9", "{devices}");
    assert_eq!(by_name("pve01")["hardware"]["nic.eno1.driver"], "igb", "{devices}");
    assert!(by_name("pve02").get("hardware").is_none(), "{devices}");

    // Removed, and another machine registered under the name: it starts with none of the
    // old machine's facts or history (before, its details page showed them, and its
    // first discovery read as a change to them).
    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let nodes = fx.ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    fx.ca.nodes().remove_node(&nodes, "pve01").await.unwrap();
    let node = NodeRecord {
        name: "pve01".into(),
        addresses: vec!["10.0.0.77".into()],
        tags: [("env".to_owned(), "lab".to_owned())].into(),
        host_keys: vec![public_line(&ed25519_key())],
        ..Default::default()
    };
    fx.ca.nodes().add_node(&nodes, &node).await.unwrap();
    let fresh = inventory(fx, "pve01").await;
    assert_eq!((fresh["facts"].clone(), fresh["history"].clone()), (json!({}), json!([])), "{fresh}");
    assert_eq!(fresh["last_result"], Value::Null, "{fresh}");
    let claimed = claim(fx, &fx.b1, &["local"]).await;
    assert_eq!(claimed.jobs.len(), 1, "the new machine is due at once");
    let (_, v) = report(fx, &fx.b1, &claimed.jobs[0].run_id, "pve01", output).await;
    assert_eq!(v["result"], "first", "{v}");
}
