//! The CA's side of enrollment, from the attacker's side. Refresh and deregistration
//! need an SSHSIG by one of the node's *registered* host keys over this node, this action
//! and a recent time: each forgery below is refused and audited, the genuine proof (the
//! control) is accepted. Enrollment tokens admit exactly their number of uses, even when
//! raced, and a token cannot take over a name enrolled with other host keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaError, ManualClock};
use portcullis_policies::Permission;
use portcullis_proto::enroll::{EnrollRequest, EnrollTokenRequest, NodeFacts, NodeProof};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{ca_in_process, sqlite_url};
use ssh_key::{HashAlg, PrivateKey};

const NOW: u64 = 1_800_000_000;

fn proof(key: &PrivateKey, node: &str, action: &str, signed_node: &str, timestamp: u64) -> NodeProof {
    let message = NodeProof::message(signed_node, action, timestamp);
    let signature = key.sign(NodeProof::NAMESPACE, HashAlg::Sha512, message.as_bytes()).unwrap();
    NodeProof {
        node: node.to_owned(),
        timestamp,
        host_public_key: public_line(key),
        signature: signature.to_pem(ssh_key::LineEnding::LF).unwrap(),
    }
}

/// A CA with the default policy and a fresh enrollment token of `uses` uses.
async fn ca_with_token(dir: &std::path::Path, uses: u32) -> (Ca, String) {
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    let ca = ca_in_process(&sqlite_url(dir), &policy, ManualClock::new(NOW)).await.unwrap();
    let password = ca.bootstrap_admin("admin", "portcullis-admins").await.unwrap().unwrap();
    let login = ca.login_password("admin", &password, "127.0.0.1").await.unwrap();
    let admin = ca.caller(&login.token).await.unwrap();
    let grant = ca.authorize(&admin, Permission::NodesManage).unwrap();
    let token = ca
        .create_enroll_token(&grant, &EnrollTokenRequest { ttl_seconds: 600, uses, ..Default::default() })
        .await
        .unwrap()
        .token;
    (ca, token)
}

fn enroll_request(name: &str, host_key: &PrivateKey) -> EnrollRequest {
    EnrollRequest {
        facts: NodeFacts { name: name.into(), host_keys: vec![public_line(host_key)], ..Default::default() },
        verification_public_key: public_line(&ed25519_key()),
    }
}

async fn enrolled_ca(dir: &std::path::Path) -> (Ca, PrivateKey) {
    let (ca, token) = ca_with_token(dir, 1).await;
    let host_key = ed25519_key();
    let request = enroll_request("pve01", &host_key);
    ca.enroll(&token, &request, "127.0.0.1").await.unwrap();
    // The token had one use: a second enrollment with it is refused.
    assert!(matches!(ca.enroll(&token, &request, "127.0.0.1").await, Err(CaError::Unauthenticated)));
    (ca, host_key)
}

async fn refusal_reasons(ca: &Ca) -> Vec<String> {
    ca.store()
        .audit_records(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == "node_proof_refused")
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.payload).unwrap()["reason"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn only_a_fresh_signature_by_a_registered_host_key_authenticates_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, host_key) = enrolled_ca(dir.path()).await;

    // Control: the genuine proof works, and the bundle names the node.
    let bundle = ca.node_refresh(&proof(&host_key, "pve01", "refresh", "pve01", NOW), "127.0.0.1").await.unwrap();
    assert_eq!(bundle.node, "pve01");
    assert_eq!(bundle.host_certificates.len(), 1);

    let forgeries = [
        ("another key", proof(&ed25519_key(), "pve01", "refresh", "pve01", NOW)),
        ("stale", proof(&host_key, "pve01", "refresh", "pve01", NOW - 301)),
        ("from the future", proof(&host_key, "pve01", "refresh", "pve01", NOW + 301)),
        ("signed for another action", proof(&host_key, "pve01", "deregister", "pve01", NOW)),
        ("signed for another node", proof(&host_key, "pve01", "refresh", "pve02", NOW)),
        ("unknown node", proof(&host_key, "pve02", "refresh", "pve02", NOW)),
    ];
    for (what, forged) in &forgeries {
        let result = ca.node_refresh(forged, "198.51.100.9").await;
        assert!(matches!(result, Err(CaError::Unauthenticated)), "{what}: {result:?}");
    }
    let mut garbled = proof(&host_key, "pve01", "refresh", "pve01", NOW);
    garbled.signature = garbled.signature.replace('A', "B");
    assert!(matches!(ca.node_refresh(&garbled, "198.51.100.9").await, Err(CaError::Unauthenticated)));

    assert_eq!(
        refusal_reasons(&ca).await,
        [
            "unregistered_host_key",
            "stale_proof",
            "stale_proof",
            "bad_signature",
            "bad_signature",
            "unknown_node",
            "bad_signature"
        ]
    );

    // A refresh proof cannot deregister; the deregistration proof can, once.
    let refresh_proof = proof(&host_key, "pve01", "refresh", "pve01", NOW);
    assert!(ca.node_deregister(&refresh_proof, "127.0.0.1").await.is_err());
    let leave = proof(&host_key, "pve01", "deregister", "pve01", NOW);
    ca.node_deregister(&leave, "127.0.0.1").await.unwrap();
    assert!(ca.node_refresh(&refresh_proof, "127.0.0.1").await.is_err(), "a deregistered node is unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limited_token_admits_exactly_its_uses_even_when_raced() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, token) = ca_with_token(dir.path(), 2).await;
    let ca = std::sync::Arc::new(ca);
    let attempts: Vec<_> = (0..6)
        .map(|i| {
            let (ca, token) = (std::sync::Arc::clone(&ca), token.clone());
            tokio::spawn(async move {
                ca.enroll(&token, &enroll_request(&format!("node{i}"), &ed25519_key()), "127.0.0.1").await
            })
        })
        .collect();
    let mut admitted = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(CaError::Unauthenticated) => {}
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(admitted, 2, "a 2-use token must admit exactly two nodes");
}

#[tokio::test]
async fn a_token_cannot_take_over_a_name_enrolled_with_other_host_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, token) = ca_with_token(dir.path(), 3).await;
    let genuine = ed25519_key();
    ca.enroll(&token, &enroll_request("pve01", &genuine), "127.0.0.1").await.unwrap();
    let impostor = ed25519_key();
    let result = ca.enroll(&token, &enroll_request("pve01", &impostor), "198.51.100.9").await;
    assert!(matches!(result, Err(CaError::Conflict(_))), "{result:?}");
    // Control: the same machine (same host key) may enroll again.
    ca.enroll(&token, &enroll_request("pve01", &genuine), "127.0.0.1").await.unwrap();
}
