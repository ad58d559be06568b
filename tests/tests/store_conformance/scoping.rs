//! A role's targets scope the kills, session listings and recordings it grants.

use super::*;

/// A role's targets scope what it grants on devices: a prod operator kills prod's
/// sessions and reads prod's recordings, while the lab's are "not found" to them — and
/// left alone — and an administrator, whose role has no targets, reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_role_kills_and_reads_only_on_the_devices_it_targets() {
    const SCOPED: &str = r#"
[[role]]
name = "admin"
permissions = ["users.manage", "nodes.manage", "sessions.kill", "recordings.read"]

[[role]]
name = "prod-operator"
logins = ["root"]
targets = 'in:devices tags.env:prod'
permissions = ["certs.issue", "sessions.kill", "recordings.read", "nodes.manage"]

[[binding]]
group = "admins"
roles = ["admin"]

[[binding]]
group = "ops"
roles = ["prod-operator"]
"#;
    const PROD: &str = "00000000000000000000000000000001";
    const LAB: &str = "00000000000000000000000000000002";
    let session_of = |device: &str| if device == "prod1" { PROD } else { LAB };
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("policy.toml"), SCOPED).unwrap();
    let clock = ManualClock::new(now());
    let ca = ca_in_process(&sqlite_url(work.path()), &policy, clock.clone()).await.unwrap();
    let admin = admin_and_alice(&ca, "ops").await;
    let alice = login(&ca, "alice", ALICE_PASSWORD).await;

    let nodes = ca.core().authorize::<proof::NodesManage>(&admin).unwrap();
    let at = now();
    for (device, env) in [("prod1", "prod"), ("lab1", "lab")] {
        let node = portcullis_proto::NodeRecord {
            name: device.into(),
            addresses: vec![format!("{device}.example.com")],
            tags: [("env".to_owned(), env.to_owned())].into(),
            ..Default::default()
        };
        ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    let mut tx = ca.core().store().begin().await.unwrap();
    for device in ["prod1", "lab1"] {
        let lease = store::LeaseRow {
            session_id: session_of(device).into(),
            bastion: "b1".into(),
            username: "bob".into(),
            device: device.into(),
            agent: "local".into(),
            login: Some("root".into()),
            mode: "terminated".into(),
            port: 22,
            rule: "r".into(),
            role: "prod-operator".into(),
            cert_serial: 1,
            client_ip: IP.into(),
            opened_at: at,
            heartbeat_at: at,
            absolute_deadline: at + 3600,
            kill_reason: None,
            bytes_from_client: 0,
            bytes_to_client: 0,
            confirmed: None,
        };
        assert!(store::insert_lease(tx.conn(), &lease, None).await.unwrap());
        let recording = store::RecordingRow {
            session_id: session_of(device).into(),
            bastion: "b1".into(),
            username: "bob".into(),
            device: device.into(),
            login: Some("root".into()),
            mode: "terminated".into(),
            rule: "r".into(),
            started_at: at,
            ended_at: Some(at + 1),
            salt: portcullis_ca::sealed::RecordingSeal::new_salt(),
            input_recorded: false,
            max_bytes: 1 << 20,
            bytes: 0,
            chunks: 0,
            truncated: false,
            size: Some((80, 24)),
            incomplete: false,
        };
        store::insert_recording(tx.conn(), &recording).await.unwrap();
    }
    tx.commit().await.unwrap();

    let kill = ca.core().authorize::<proof::SessionsKill>(&alice).unwrap();
    let answer = ca.sessions().kill_session(&kill, LAB).await;
    assert!(matches!(answer, Err(CaError::NotFound(_))), "{answer:?}");
    let kill_reason = |id: &'static str| {
        let ca = &ca;
        async move {
            sqlx::query("SELECT kill_reason FROM session_leases WHERE session_id = $1")
                .bind(id)
                .fetch_one(ca.core().store().pool())
                .await
                .unwrap()
                .try_get::<Option<String>, _>("kill_reason")
                .unwrap()
        }
    };
    assert_eq!(kill_reason(LAB).await, None, "the lab session was left alone");
    ca.sessions().kill_session(&kill, PROD).await.unwrap();
    assert!(kill_reason(PROD).await.is_some());
    // The live sessions a targeted `sessions.kill` sees are the ones it may kill.
    let watch = ca.core().authorize::<proof::SessionsRead>(&alice).unwrap();
    let live: Vec<String> = ca.sessions().live_sessions(&watch).await.unwrap().into_iter().map(|s| s.device).collect();
    assert_eq!(live, ["prod1"], "the lab's session, its user and address, are not shown");

    let read = ca.core().authorize::<proof::RecordingsRead>(&alice).unwrap();
    let listed: Vec<String> =
        ca.recordings().list(&read, None, None).await.unwrap().into_iter().map(|r| r.device).collect();
    assert_eq!(listed, ["prod1"]);
    assert!(matches!(ca.recordings().cast(&read, LAB).await, Err(CaError::NotFound(_))));
    ca.recordings().cast(&read, PROD).await.unwrap();

    // The lab's machine is retired and another registered under its name, in prod: what
    // happened on the old one stays out of the prod role's reach.
    clock.set(at + 600);
    replace_node(&ca, &nodes, "lab1", "prod").await;
    assert!(matches!(ca.recordings().cast(&read, LAB).await, Err(CaError::NotFound(_))));
    let listed: Vec<String> =
        ca.recordings().list(&read, None, None).await.unwrap().into_iter().map(|r| r.device).collect();
    assert_eq!(listed, ["prod1"], "the old lab1's recording is not listed under the new one");
    // Nor does the new lab1's page show the old one's sessions (who, from where).
    let page = ca.sessions().device_details(&alice, "lab1").await.unwrap();
    assert!(page.sessions_of_everyone, "the new lab1 is prod's: its sessions are the operator's to see");
    let shown: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert!(!shown.contains(&LAB), "the old lab1's session is shown on the new one's page: {shown:?}");

    let everywhere = ca.core().authorize::<proof::RecordingsRead>(&admin).unwrap();
    let mut listed: Vec<String> =
        ca.recordings().list(&everywhere, None, None).await.unwrap().into_iter().map(|r| r.device).collect();
    listed.sort();
    assert_eq!(listed, ["lab1", "prod1"]);
    let admin_kill = ca.core().authorize::<proof::SessionsKill>(&admin).unwrap();
    ca.sessions().kill_session(&admin_kill, LAB).await.unwrap();
    assert!(kill_reason(LAB).await.is_some());
}

/// Retires the node `name` and registers another machine under the name, in `env`.
async fn replace_node(ca: &Ca, nodes: &portcullis_policies::Grant<proof::NodesManage>, name: &str, env: &str) {
    ca.nodes().remove_node(nodes, name).await.unwrap();
    let node = portcullis_proto::NodeRecord {
        name: name.into(),
        addresses: vec![format!("{name}.example.com")],
        tags: [("env".to_owned(), env.to_owned())].into(),
        ..Default::default()
    };
    ca.nodes().add_node(nodes, &node).await.unwrap();
}
