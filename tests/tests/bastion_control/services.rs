//! Service enrollment: tokens of the right kind, and no secret in the audit trail.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_enroll_only_with_tokens_of_their_kind() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let agent_private = ed25519_key();
    let agent_key = public_line(&agent_private);
    let node_token = create_token(api, &fx.admin, None, 5).await;
    let agent_token = create_token(api, &fx.admin, Some("agent"), 1).await;
    let bastion_token = create_token(api, &fx.admin, Some("bastion"), 5).await;

    // A node token cannot enroll a service; a bastion token cannot enroll an agent.
    for token in [&node_token, &bastion_token] {
        let (status, v) =
            api.post_json(Some(token), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    }
    // A service token cannot enroll a node.
    let node = json!({"facts": {"name": "n1", "host_keys": [public_line(&ed25519_key())]},
                      "verification_public_key": public_line(&ed25519_key())});
    let (status, v) = api.post_json(Some(&agent_token), "/v1/enroll", &node).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    // Control: the node token enrolls a node.
    let (status, v) = api.post_json(Some(&node_token), "/v1/enroll", &node).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // Control: the agent token enrolls the agent; the answer carries an API credential
    // and an internal certificate for the agent's key.
    let (status, v) = api
        .post_json(Some(&agent_token), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let enrolled: ServiceEnrollResponse = serde_json::from_value(v).unwrap();
    assert!(enrolled.api_token.expose().starts_with("pcs_"));
    let (key_id, principals, extensions, signer) = inspect(&enrolled.certificate);
    assert_eq!(key_id, "service:agent:edge1");
    assert_eq!(principals, ["agent:edge1"]);
    assert!(extensions.is_empty() || extensions == ["(none)"], "{extensions:?}");
    let internal = fx.ca.core().trusted_keys(portcullis_ca::keys::KeyPurpose::Internal);
    assert_eq!(enrolled.internal_ca_keys, internal);
    let internal_fp =
        portcullis_sshcert::fingerprint(ssh_key::PublicKey::from_openssh(internal.trim()).unwrap().key_data());
    assert!(signer.contains(&internal_fp), "signed by {signer}, internal key is {internal_fp}");

    // The one-use token is spent.
    let (status, _) = api
        .post_json(Some(&agent_token), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Re-enrolling the same name: with another key → 409 (token not spent); with the
    // same *public* key but no proof of holding the private one (anyone can read a
    // service's public key) → 409; with a proof bound to another token → 409; with the
    // key's proof → a new API credential, and the old one stops working.
    let again = create_token(api, &fx.admin, Some("agent"), 1).await;
    let other_key = public_line(&ed25519_key());
    let (status, v) =
        api.post_json(Some(&again), "/v1/services/enroll", &enroll_body("agent", "edge1", &other_key, None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) =
        api.post_json(Some(&again), "/v1/services/enroll", &enroll_body("agent", "edge1", &agent_key, None)).await;
    assert_eq!(status, StatusCode::CONFLICT, "a public key alone re-enrolled a service: {v}");
    let proven = |token: &str| {
        let mut request: portcullis_proto::bastion::ServiceEnrollRequest =
            serde_json::from_value(enroll_body("agent", "edge1", &agent_key, None)).unwrap();
        let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let message = request.proof_message(token, timestamp);
        let namespace = portcullis_proto::bastion::ServiceProof::NAMESPACE;
        let signature = agent_private.sign(namespace, ssh_key::HashAlg::Sha512, message.as_bytes()).unwrap();
        let signature = signature.to_pem(ssh_key::LineEnding::LF).unwrap();
        request.proof = Some(portcullis_proto::bastion::ServiceProof { timestamp, signature });
        serde_json::to_value(request).unwrap()
    };
    let (status, v) = api.post_json(Some(&again), "/v1/services/enroll", &proven(&agent_token)).await;
    assert_eq!(status, StatusCode::CONFLICT, "a proof for another token was accepted: {v}");
    let (status, v) = api.post_json(Some(&again), "/v1/services/enroll", &proven(&again)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let renewed: ServiceEnrollResponse = serde_json::from_value(v).unwrap();
    let (status, _) = api.get_json(Some(enrolled.api_token.expose()), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old API credential still works");
    let agent = renewed.api_token.expose().to_owned();

    // A bastion with its endpoint; the directory lists it for agents.
    let bastion_key = public_line(&ed25519_key());
    let (status, v) = api
        .post_json(
            Some(&bastion_token),
            "/v1/services/enroll",
            &enroll_body("bastion", "b2", &bastion_key, Some("bastion.example:2223")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let b2: ServiceEnrollResponse = serde_json::from_value(v).unwrap();
    let (status, v) = api.get_json(Some(&agent), "/v1/services/bastions").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let dir: Vec<BastionDirectoryEntry> = serde_json::from_value(v).unwrap();
    let entry = dir.iter().find(|e| e.name == "b2").expect("b2 in the directory");
    assert_eq!(entry.agent_endpoint, "bastion.example:2223");
    assert_eq!(entry.host_key, bastion_key);
    // Invalid requests are refused before any token is spent.
    for body in [
        enroll_body("bastion", "B!", &bastion_key, None),
        enroll_body("bastion", "b3", &bastion_key, Some("no-port")),
        enroll_body("agent", "a3", &agent_key, Some("x:22")),
    ] {
        let (status, v) = api.post_json(Some(&bastion_token), "/v1/services/enroll", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // Credentials of one kind are refused on the other kind's endpoints; unknown → 401.
    let (status, v) =
        api.post_json(Some(&agent), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": []})).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{v}");
    let (status, _) = api
        .post_json(
            Some(&agent),
            "/v1/bastion/sessions/open",
            &jump(&session_id(), &Presented::serial_only("1"), "pve01", None),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.get_json(Some(b2.api_token.expose()), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        api.post_json(Some("pcs_unknown"), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": []})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        api.post_json(Some(&fx.admin), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": []})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a user's API session is not a service credential");
    // Control: the bastion's own credential works there.
    let (status, v) = api
        .post_json(Some(b2.api_token.expose()), "/v1/bastion/heartbeat", &json!({"sessions": [], "agents": ["edge1"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // A bastion with thousands of live sessions heartbeats in one request (far past the
    // API's 64 KiB default body limit, which once cut heartbeats off near 700 sessions);
    // sessions without a lease are answered `lease_lost`.
    let many: Vec<String> = (0..5000).map(|_| session_id()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let orders = heartbeat(api, b2.api_token.expose(), &many, &["edge1"]).await;
    assert_eq!(orders.len(), 5000);
    assert!(orders.iter().all(|(_, reason)| *reason == CloseReason::LeaseLost));

    // Targets: edge1 serves pve02 only; the default agent (`local`) serves the nodes
    // assigned to no agent.
    let (status, v) = api.get_json(Some(&agent), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let targets: Vec<AgentTarget> = serde_json::from_value(v).unwrap();
    assert_eq!(targets.iter().map(|t| t.device.as_str()).collect::<Vec<_>>(), ["pve02"]);
    assert_eq!((targets[0].addresses.clone(), targets[0].port), (vec!["10.1.0.5".to_owned()], 22));
    let local = fx
        .ca
        .services()
        .register_service(ServiceKind::Agent, "local", &public_line(&ed25519_key()), None)
        .await
        .unwrap();
    let (_, v) = api.get_json(Some(local.api_token.expose()), "/v1/services/agent/targets").await;
    let targets: Vec<AgentTarget> = serde_json::from_value(v).unwrap();
    let mut names: Vec<_> = targets.iter().map(|t| t.device.as_str()).collect();
    names.sort();
    assert_eq!(names, ["n1", "prod01", "pve01"]);

    // Certificate renewal.
    let (status, v) = api.post_json(Some(&agent), "/v1/services/certificate", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let renewal: ServiceCertificateResponse = serde_json::from_value(v).unwrap();
    assert_eq!(inspect(&renewal.certificate).1, ["agent:edge1"]);
    assert!(renewal.valid_before > now());

    // Admin view: agents with last contact and the bastions reporting them connected.
    let (status, v) = api.get_json(Some(&fx.admin), "/v1/admin/agents").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let agents: Vec<ServiceInfo> = serde_json::from_value(v).unwrap();
    let edge1 = agents.iter().find(|a| a.name == "edge1").unwrap();
    assert_eq!(edge1.connected_to, ["b2"]);
    assert!(edge1.last_seen.is_some());
    let (_, v) = api.get_json(Some(&fx.admin), "/v1/admin/bastions").await;
    let bastions: Vec<ServiceInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(bastions.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["b1", "b2"]);

    // Audit: enrollments and refusals, and no credential anywhere in the trail.
    let enrolled = audit(&fx.ca, "service_enrolled").await;
    assert!(
        enrolled.iter().any(|e| e["name"] == "edge1"
            && e["kind"] == "agent"
            && e["actor"].as_str().unwrap().starts_with("token:"))
    );
    let refused: Vec<String> = audit(&fx.ca, "service_enroll_refused")
        .await
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    for reason in ["token_invalid", "name_taken", "invalid_request"] {
        assert!(refused.iter().any(|r| r == reason), "{reason} not audited: {refused:?}");
    }
    assert_no_secrets(&fx.ca).await;

    // A revoked service key is no caller at all (until 2026-12-05 only its certificate
    // renewal was refused: a revoked bastion kept heartbeating, claiming Proxmox VE
    // credentials and opening sessions).
    let beat = json!({"sessions": [], "agents": ["edge1"]});
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/revoke", &json!({"public_key": bastion_key})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _) = api.post_json(Some(b2.api_token.expose()), "/v1/bastion/heartbeat", &beat).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked bastion still heartbeats");
    let (status, _) = api.post_json(Some(b2.api_token.expose()), "/v1/bastion/pve/claim", &json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked bastion still claims");
    let (status, _) = api.get_json(Some(&agent), "/v1/services/agent/targets").await;
    assert_eq!(status, StatusCode::OK, "another service is not affected");

    // Enrolling a bastion or an agent takes `ca.manage` besides `nodes.manage`: it is
    // handed the Proxmox VE tokens and discovery keys of its agents.
    let enroller = "[[role]]\nname = \"enroller\"\npermissions = [\"nodes.manage\"]\n\
                    [[binding]]\nuser = \"carol\"\nroles = [\"enroller\"]\n";
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY_BASE}{POLICY_CONTRACT}{enroller}")).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert!(status.is_success(), "{v}");
    let login = fx.ca.identity().login_password("carol", None, &SecretString::from(PASSWORD), IP).await.unwrap();
    let carol = login.token.expose().to_owned();
    for service in ["bastion", "agent"] {
        let body = json!({"ttl_seconds": 600, "uses": 1, "service": service});
        let (status, v) = api.post_json(Some(&carol), "/v1/admin/enroll-tokens", &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{service}: {v}");
    }
    create_token(api, &carol, None, 1).await;
}

/// Proxmox VE claims over a large estate: a claim hands out at most 64 runs, the ones
/// waiting longest first (before, in name order: an interval later the same first 64
/// were due again and the rest never ran), and a full answer asks the bastion back
/// soon. A secret that cannot be opened holds back only its own devices (before, the
/// whole claim failed, and with it every device's collection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_claims_reach_every_device_of_a_large_estate() {
    let fx = fixture(None, 1).await;
    let api = fx.api();
    let rule = |name: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\npurpose = \"inventory_enrichment\"\nprovider = \"proxmox\"\n\
             auth_method = \"proxmox_api_token\"\nsecret = \"{name}\"\ntargets = 'in:devices tags.site:{name}'\n\
             scope = {{ agents = [\"edge-big\"] }}\n"
        )
    };
    let secrets = "[[role]]\nname = \"secrets\"\npermissions = [\"secrets.manage\"]\n\
                   [[binding]]\ngroup = \"admins\"\nroles = [\"secrets\"]\n";
    let policy = format!("{POLICY_BASE}{POLICY_CONTRACT}{secrets}{}{}", rule("big"), rule("broken"));
    std::fs::write(fx.policy_dir.join("policy.toml"), policy).unwrap();
    let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/policy/reload", &json!({})).await;
    assert!(status.is_success(), "{v}");
    for name in ["big", "broken"] {
        let body = json!({ "name": name, "kind": "proxmox_api_token", "identity": "inv@pve!portcullis",
                           "secret": format!("{name}-token-value"), "tls": { "mode": "pinned_sha256", "sha256": "ab".repeat(32) } });
        let (status, v) = api.post_json(Some(&fx.admin), "/v1/admin/secrets", &body).await;
        assert!(status.is_success(), "{v}");
    }
    // Sealed under another passphrase, say, or damaged: it cannot be opened.
    sqlx::query("UPDATE secrets SET sealed = 'not-a-sealed-value' WHERE name = 'broken'")
        .execute(fx.ca.core().store().pool())
        .await
        .unwrap();
    let caller = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let nodes = fx.ca.core().authorize::<proof::NodesManage>(&caller).unwrap();
    let mut estate = vec![("a-broken".to_owned(), "broken")];
    estate.extend((0..70).map(|i| (format!("big-{i:02}"), "big")));
    for (name, site) in &estate {
        let node = NodeRecord {
            name: name.clone(),
            addresses: vec!["10.7.0.1".into()],
            agent: Some("edge-big".into()),
            tags: [("site".to_owned(), (*site).to_owned())].into(),
            ..Default::default()
        };
        fx.ca.nodes().add_node(&nodes, &node).await.unwrap();
    }
    let claim = async || {
        let body = json!({ "agents": ["edge-big"], "max_jobs": 64 });
        let (status, v) = api.post_json(Some(&fx.bastion), "/v1/bastion/pve/claim", &body).await;
        assert_eq!(status, StatusCode::OK, "a secret that cannot be opened failed the claim: {v}");
        let jobs = v["jobs"].as_array().unwrap().clone();
        let devices: Vec<String> = jobs.iter().map(|j| j["device"].as_str().unwrap().to_owned()).collect();
        (devices, v["next_claim_secs"].as_u64().unwrap(), jobs)
    };
    let (first, again, jobs) = claim().await;
    assert_eq!(first.len(), 64);
    assert!(!first.contains(&"a-broken".to_owned()), "{first:?}");
    assert!(again <= 5, "a full answer asks the bastion back soon: {again}");

    // A report the CA refuses (here a cluster without a name) ends its run on record,
    // instead of leaving it "running" with no trace.
    let junk = portcullis_proto::pve::PveInventory { version: "8.2.4".into(), ..Default::default() };
    let body = json!({ "run_id": jobs[0]["run_id"], "device": jobs[0]["device"],
                       "outcome": { "status": "collected", "inventory": junk } });
    let (status, v) = api.post_json(Some(&fx.bastion), "/v1/bastion/pve/report", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let failed = audit(&fx.ca, "pve_collection_failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((&failed[0]["device"], &failed[0]["reason"]), (&jobs[0]["device"], &json!("report_rejected")));
    // An interval (and a run's timeout) later, none reported: the six never run come first.
    fx.clock.set(now() + 3 * 3600);
    let (second, _, _) = claim().await;
    let never_run: Vec<String> = (64..70).map(|i| format!("big-{i:02}")).collect();
    assert!(never_run.iter().all(|d| second.contains(d)), "devices past the first 64 never ran: {second:?}");
}
