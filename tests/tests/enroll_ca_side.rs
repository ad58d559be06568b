//! The CA's side of enrollment, from the attacker's side. Refresh and deregistration
//! need an SSHSIG by one of the node's *registered* host keys over this node, this action
//! and a recent time: each forgery below is refused and audited, the genuine proof (the
//! control) is accepted. Enrollment tokens admit exactly their number of uses, even when
//! raced, and a token cannot take over a name enrolled with other host keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaError, ManualClock};
use portcullis_policies::Grant;
use portcullis_policies::proof;
use portcullis_proto::enroll::{EnrollAbortRequest, EnrollRequest, EnrollTokenRequest, NodeFacts, NodeProof};
use portcullis_proto::{NodeRecord, NodeUpdate};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{ca_in_process, first_admin, sqlite_url};
use ssh_key::{HashAlg, PrivateKey};

const NOW: u64 = 1_800_000_000;
/// Two node names whose session principals share their 48 bits (`pn_571581ea481a_…`),
/// found by a birthday search over 2^25 names in a minute of Python.
const COLLIDING_NAMES: (&str, &str) = ("n15e510", "nc6a027");

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

/// A CA with the default policy and the administrator's node-management grant.
async fn ca_and_grant(dir: &std::path::Path) -> (Ca, Grant<proof::NodesManage>) {
    ca_and_grant_on(&sqlite_url(dir), dir).await
}

async fn ca_and_grant_on(db_url: &str, dir: &std::path::Path) -> (Ca, Grant<proof::NodesManage>) {
    let (ca, admin) = ca_and_admin_on(db_url, dir).await;
    let grant = ca.core().authorize::<proof::NodesManage>(&admin).unwrap();
    (ca, grant)
}

/// A CA with the default policy and its first administrator.
async fn ca_and_admin_on(db_url: &str, dir: &std::path::Path) -> (Ca, portcullis_ca::service::Caller) {
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(policy.join("default.toml"), portcullis_ca::policy_files::DEFAULT_POLICY).unwrap();
    let ca = ca_in_process(db_url, &policy, ManualClock::new(NOW)).await.unwrap();
    let token = first_admin(&ca, "portcullis-admins", "127.0.0.1").await;
    let admin = ca.identity().caller(&token).await.unwrap();
    (ca, admin)
}

async fn token(ca: &Ca, grant: &Grant<proof::NodesManage>, request: EnrollTokenRequest) -> String {
    ca.nodes()
        .create_enroll_token(grant, None, &EnrollTokenRequest { ttl_seconds: 600, ..request })
        .await
        .unwrap()
        .token
        .expose()
        .to_owned()
}

/// A CA with the default policy and a fresh enrollment token of `uses` uses.
async fn ca_with_token(dir: &std::path::Path, uses: u32) -> (Ca, String) {
    let (ca, grant) = ca_and_grant(dir).await;
    let token = token(&ca, &grant, EnrollTokenRequest { uses, ..Default::default() }).await;
    (ca, token)
}

fn enroll_request(name: &str, host_key: &PrivateKey) -> EnrollRequest {
    EnrollRequest {
        facts: NodeFacts { name: name.into(), host_keys: vec![public_line(host_key)], ..Default::default() },
        verification_public_key: public_line(&ed25519_key()),
        proof: None,
    }
}

/// `request` with a re-enrollment proof made with `key` for `token`.
fn proven(mut request: EnrollRequest, key: &PrivateKey, token: &str) -> EnrollRequest {
    let action = NodeProof::enroll_action(&request.facts, token);
    request.proof = Some(proof(key, &request.facts.name, &action, &request.facts.name, NOW));
    request
}

/// Every token's remaining uses, sorted (tokens made in the same second list in any order).
async fn uses_left(ca: &Ca, grant: &Grant<proof::NodesManage>) -> Vec<u32> {
    let mut uses: Vec<u32> = ca.nodes().enroll_tokens(grant).await.unwrap().iter().map(|t| t.uses_left).collect();
    uses.sort_unstable();
    uses
}

/// The `reason` of every audit record of `event`, oldest first.
async fn audit_reasons(ca: &Ca, event: &str) -> Vec<String> {
    let payloads = portcullis_tests::audit_payloads(ca, event).await;
    payloads.iter().map(|p| p["reason"].as_str().unwrap().to_owned()).collect()
}

async fn enroll_refusals(ca: &Ca) -> Vec<String> {
    audit_reasons(ca, "enroll_refused").await
}

async fn enrolled_ca(dir: &std::path::Path) -> (Ca, PrivateKey) {
    let (ca, token) = ca_with_token(dir, 1).await;
    let host_key = ed25519_key();
    let request = enroll_request("pve01", &host_key);
    ca.nodes().enroll(&token, &request, "127.0.0.1").await.unwrap();
    // The token had one use: a second enrollment with it is refused, even with a proof.
    let again = proven(request, &host_key, &token);
    assert!(matches!(ca.nodes().enroll(&token, &again, "127.0.0.1").await, Err(CaError::Unauthenticated)));
    (ca, host_key)
}

async fn refusal_reasons(ca: &Ca) -> Vec<String> {
    audit_reasons(ca, "node_proof_refused").await
}

#[tokio::test]
async fn only_a_fresh_signature_by_a_registered_host_key_authenticates_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, host_key) = enrolled_ca(dir.path()).await;

    // Control: the genuine proof works, and the bundle names the node.
    let bundle =
        ca.nodes().node_refresh(&proof(&host_key, "pve01", "refresh", "pve01", NOW), "127.0.0.1").await.unwrap();
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
        let result = ca.nodes().node_refresh(forged, "198.51.100.9").await;
        assert!(matches!(result, Err(CaError::Unauthenticated)), "{what}: {result:?}");
    }
    let mut garbled = proof(&host_key, "pve01", "refresh", "pve01", NOW);
    garbled.signature = garbled.signature.replace('A', "B");
    assert!(matches!(ca.nodes().node_refresh(&garbled, "198.51.100.9").await, Err(CaError::Unauthenticated)));

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
    assert!(ca.nodes().node_deregister(&refresh_proof, "127.0.0.1").await.is_err());
    let leave = proof(&host_key, "pve01", "deregister", "pve01", NOW);
    ca.nodes().node_deregister(&leave, "127.0.0.1").await.unwrap();
    assert!(ca.nodes().node_refresh(&refresh_proof, "127.0.0.1").await.is_err(), "a deregistered node is unknown");
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
                ca.nodes().enroll(&token, &enroll_request(&format!("node{i}"), &ed25519_key()), "127.0.0.1").await
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
    ca.nodes().enroll(&token, &enroll_request("pve01", &genuine), "127.0.0.1").await.unwrap();
    let impostor = ed25519_key();
    let result = ca.nodes().enroll(&token, &enroll_request("pve01", &impostor), "198.51.100.9").await;
    assert!(matches!(result, Err(CaError::Conflict(_))), "{result:?}");
    // Control: the same machine, proving it holds its host key, may enroll again.
    ca.nodes().enroll(&token, &proven(enroll_request("pve01", &genuine), &genuine, &token), "127.0.0.1").await.unwrap();
}

#[tokio::test]
async fn re_enrolling_a_known_name_needs_a_proof_by_its_pinned_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let prod = [("cluster".to_owned(), "prod".to_owned())].into();
    let prod_token = token(&ca, &grant, EnrollTokenRequest { uses: 1, tags: prod, ..Default::default() }).await;
    let genuine = ed25519_key();
    let mut first = enroll_request("pve01", &genuine);
    first.facts.addresses = vec!["10.0.0.1".into()];
    ca.nodes().enroll(&prod_token, &first, "10.0.0.1").await.unwrap();

    // The attacker holds a lab token and the node's *public* host key (ssh-keyscan).
    let lab = [("cluster".to_owned(), "lab".to_owned())].into();
    let lab_token = token(&ca, &grant, EnrollTokenRequest { uses: 3, tags: lab, ..Default::default() }).await;
    let mut takeover = enroll_request("pve01", &genuine);
    takeover.facts.addresses = vec!["203.0.113.66".into()];
    let attacker = ed25519_key();
    let mut with_own_key = takeover.clone();
    with_own_key.facts.host_keys.push(public_line(&attacker));
    let mut replayed = proven(first.clone(), &genuine, &lab_token);
    replayed.facts = takeover.facts.clone(); // a proof made for other facts
    let attempts = [
        ("no proof", takeover.clone()),
        ("proof by the attacker's own key", proven(with_own_key, &attacker, &lab_token)),
        ("proof bound to another request", replayed),
        ("proof bound to another token", proven(takeover.clone(), &genuine, &prod_token)),
    ];
    for (what, request) in &attempts {
        let result = ca.nodes().enroll(&lab_token, request, "203.0.113.66").await;
        assert!(matches!(result, Err(CaError::Conflict(_))), "{what}: {result:?}");
    }
    assert_eq!(enroll_refusals(&ca).await, ["name_taken"; 4]);
    let node = ca.core().store().node("pve01").await.unwrap().unwrap();
    assert_eq!(node.addresses, ["10.0.0.1"], "a refused takeover changed the addresses");
    assert_eq!(node.tags["cluster"], "prod", "a refused takeover changed the tags");
    assert_eq!(node.host_keys, [public_line(&genuine)]);
    assert_eq!(uses_left(&ca, &grant).await, [0, 3], "a refused enrollment spent a token use");

    // Control: the node itself proves it holds the pinned key and may move; the lab
    // token's tags still never relabel it.
    let mut moved = enroll_request("pve01", &genuine);
    moved.facts.addresses = vec!["10.0.0.2".into()];
    ca.nodes().enroll(&lab_token, &proven(moved, &genuine, &lab_token), "10.0.0.2").await.unwrap();
    let node = ca.core().store().node("pve01").await.unwrap().unwrap();
    assert_eq!(node.addresses, ["10.0.0.2"]);
    assert_eq!(node.tags["cluster"], "prod", "a token's tags overrode an existing node's");
    assert_eq!(uses_left(&ca, &grant).await, [0, 2]);
}

#[tokio::test]
async fn a_hand_added_name_is_claimed_only_by_a_token_bound_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let record =
        NodeRecord { name: "pve05".into(), tags: [("env".into(), "prod".into())].into(), ..Default::default() };
    ca.nodes().add_node(&grant, &record).await.unwrap();
    assert!(
        matches!(ca.nodes().add_node(&grant, &record).await, Err(CaError::Conflict(_))),
        "node add refuses a known name"
    );

    let key = ed25519_key();
    let unbound = token(&ca, &grant, EnrollTokenRequest { uses: 1, ..Default::default() }).await;
    let result = ca.nodes().enroll(&unbound, &enroll_request("pve05", &key), "203.0.113.66").await;
    assert!(matches!(result, Err(CaError::Conflict(_))), "{result:?}");
    let elsewhere =
        token(&ca, &grant, EnrollTokenRequest { uses: 1, node: Some("pve06".into()), ..Default::default() });
    let elsewhere = elsewhere.await;
    let result = ca.nodes().enroll(&elsewhere, &enroll_request("pve05", &key), "203.0.113.66").await;
    assert!(matches!(result, Err(CaError::Unauthenticated)), "{result:?}");
    assert_eq!(enroll_refusals(&ca).await, ["name_reserved", "token_invalid"]);
    assert_eq!(uses_left(&ca, &grant).await, [1, 1], "a refused enrollment spent a token use");
    assert!(ca.core().store().node("pve05").await.unwrap().unwrap().host_keys.is_empty());

    // Control: the token bound to the name claims it, and the node keeps its tags.
    let bound = token(&ca, &grant, EnrollTokenRequest { uses: 1, node: Some("pve05".into()), ..Default::default() });
    ca.nodes().enroll(&bound.await, &enroll_request("pve05", &key), "10.0.0.5").await.unwrap();
    let node = ca.core().store().node("pve05").await.unwrap().unwrap();
    assert_eq!(node.host_keys, [public_line(&key)]);
    assert_eq!(node.tags["env"], "prod");
}

#[tokio::test]
async fn node_update_changes_only_what_it_names_and_remove_forgets_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let enroll_token = token(&ca, &grant, EnrollTokenRequest { uses: 1, ..Default::default() }).await;
    let host_key = ed25519_key();
    let mut request = enroll_request("pve01", &host_key);
    request.facts.addresses = vec!["10.0.0.1".into()];
    ca.nodes().enroll(&enroll_token, &request, "10.0.0.1").await.unwrap();

    let update = NodeUpdate { set_tags: [("cluster".into(), "prod".into())].into(), ..Default::default() };
    let node = ca.nodes().update_node(&grant, "pve01", &update).await.unwrap();
    assert_eq!(node.host_keys, [public_line(&host_key)], "a tag update wiped the pinned host keys");
    assert_eq!(node.addresses, ["10.0.0.1"]);
    assert_eq!(node.tags["cluster"], "prod");
    // The node's refresh still authenticates after the update.
    ca.nodes().node_refresh(&proof(&host_key, "pve01", "refresh", "pve01", NOW), "10.0.0.1").await.unwrap();
    let missing = ca.nodes().update_node(&grant, "pve09", &update).await;
    assert!(matches!(missing, Err(CaError::NotFound(_))), "{missing:?}");

    ca.nodes().remove_node(&grant, "pve01").await.unwrap();
    assert!(ca.core().store().node("pve01").await.unwrap().is_none());
    let refresh = ca.nodes().node_refresh(&proof(&host_key, "pve01", "refresh", "pve01", NOW), "10.0.0.1").await;
    assert!(refresh.is_err(), "a removed node still refreshes");
    assert!(matches!(ca.nodes().remove_node(&grant, "pve01").await, Err(CaError::NotFound(_))));

    // Tokens can be listed and revoked; a revoked token enrolls nothing.
    let spare = token(&ca, &grant, EnrollTokenRequest { uses: 5, ..Default::default() }).await;
    let tokens = ca.nodes().enroll_tokens(&grant).await.unwrap();
    let id = tokens.iter().find(|t| t.uses_left == 5).unwrap().id.clone();
    ca.nodes().revoke_enroll_token(&grant, &id).await.unwrap();
    let result = ca.nodes().enroll(&spare, &enroll_request("pve02", &ed25519_key()), "10.0.0.2").await;
    assert!(matches!(result, Err(CaError::Unauthenticated)), "{result:?}");
    assert!(matches!(ca.nodes().revoke_enroll_token(&grant, "nope").await, Err(CaError::NotFound(_))));
}

fn abort_request(key: &PrivateKey, node: &str, verification_principal: &str) -> EnrollAbortRequest {
    let action = NodeProof::abort_action(verification_principal);
    EnrollAbortRequest {
        verification_principal: verification_principal.to_owned(),
        proof: proof(key, node, &action, node, NOW),
    }
}

#[tokio::test]
async fn a_rolled_back_enrollment_is_undone_at_the_ca_and_gives_the_token_use_back() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let enroll_token = token(&ca, &grant, EnrollTokenRequest { uses: 2, ..Default::default() }).await;
    let key = ed25519_key();
    let mut request = enroll_request("pve01", &key);
    request.facts.addresses = vec!["10.0.0.1".into()];
    let first = ca.nodes().enroll(&enroll_token, &request, "10.0.0.1").await.unwrap();
    assert_eq!(uses_left(&ca, &grant).await, [1]);

    // Only the node (its host key) can undo it, and only for this attempt.
    let forged = abort_request(&ed25519_key(), "pve01", &first.verification_principal);
    assert!(matches!(ca.nodes().abort_enrollment(&forged, "203.0.113.66").await, Err(CaError::Unauthenticated)));
    let other_attempt = abort_request(&key, "pve01", "pcv_0000000000000000");
    assert!(matches!(ca.nodes().abort_enrollment(&other_attempt, "10.0.0.1").await, Err(CaError::NotFound(_))));
    assert!(ca.core().store().node("pve01").await.unwrap().is_some(), "a refused abort removed the node");

    // The node rolled back: the new registration is gone and the token use is back.
    ca.nodes()
        .abort_enrollment(&abort_request(&key, "pve01", &first.verification_principal), "10.0.0.1")
        .await
        .unwrap();
    assert!(ca.core().store().node("pve01").await.unwrap().is_none(), "the rolled-back node is still registered");
    assert_eq!(uses_left(&ca, &grant).await, [2]);

    // A re-enrollment rolled back restores the node's earlier record.
    ca.nodes().enroll(&enroll_token, &request, "10.0.0.1").await.unwrap();
    let mut moved = enroll_request("pve01", &key);
    moved.facts.addresses = vec!["10.0.0.9".into()];
    let again = ca.nodes().enroll(&enroll_token, &proven(moved, &key, &enroll_token), "10.0.0.9").await.unwrap();
    assert_eq!(ca.core().store().node("pve01").await.unwrap().unwrap().addresses, ["10.0.0.9"]);
    ca.nodes()
        .abort_enrollment(&abort_request(&key, "pve01", &again.verification_principal), "10.0.0.9")
        .await
        .unwrap();
    let node = ca.core().store().node("pve01").await.unwrap().unwrap();
    assert_eq!(node.addresses, ["10.0.0.1"], "the earlier record was not restored");
    assert_eq!(uses_left(&ca, &grant).await, [1]);
    // An attempt is undone once.
    let twice =
        ca.nodes().abort_enrollment(&abort_request(&key, "pve01", &again.verification_principal), "10.0.0.9").await;
    assert!(matches!(twice, Err(CaError::NotFound(_))), "{twice:?}");
}

#[tokio::test]
async fn the_bundle_installs_the_discovery_principal_the_admin_api_lists() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("discovery.toml"),
        "[[rule]]\nname = \"hardware\"\npurpose = \"inventory_enrichment\"\ntargets = 'in:devices tags.env:lab'\n\
         scope = { agents = [\"edge1\"] }\n",
    )
    .unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let lab = EnrollTokenRequest {
        uses: 2,
        tags: [("env".to_owned(), "lab".to_owned())].into(),
        agent: Some("edge1".into()),
        ..Default::default()
    };
    let lab_token = token(&ca, &grant, lab).await;
    let resp = ca.nodes().enroll(&lab_token, &enroll_request("pve01", &ed25519_key()), "10.0.0.1").await.unwrap();
    let login = portcullis_proto::discovery::DISCOVERY_LOGIN;
    let expected = vec![portcullis_policies::node_principal("pve01", login)];
    assert_eq!(resp.bundle.principals.get(login), Some(&expected), "{:?}", resp.bundle.principals);
    let listed = ca.nodes().node_principals(&grant, "pve01").await.unwrap();
    assert_eq!(listed.principals, resp.bundle.principals, "the bundle and the admin API disagree");
    // Control: a node no inventory_enrichment rule covers gets no discovery login.
    let other = ca.nodes().enroll(&lab_token, &enroll_request("pve02", &ed25519_key()), "10.0.0.2").await.unwrap();
    assert!(other.bundle.principals.contains_key(login), "same rule, same tags: covered too");
    ca.nodes()
        .update_node(
            &grant,
            "pve02",
            &NodeUpdate { set_tags: [("env".into(), "prod".into())].into(), ..Default::default() },
        )
        .await
        .unwrap();
    let refreshed = ca.nodes().node_principals(&grant, "pve02").await.unwrap();
    assert!(!refreshed.principals.contains_key(login), "{:?}", refreshed.principals);
}

/// The verification certificate works from the node's own addresses (a node whose sshd
/// listens only on its management address is verified there), never from anywhere else;
/// the node's sshd port is recorded, and port 0 is refused.
#[tokio::test]
async fn the_verification_certificate_is_bound_to_the_nodes_own_addresses_and_its_port_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, token) = ca_with_token(dir.path(), 2).await;
    let mut request = enroll_request("pve01", &ed25519_key());
    request.facts.addresses = vec!["192.0.2.5".into(), "pve01.example".into(), "2001:db8::5".into()];
    request.facts.ssh_port = Some(0);
    let refused = ca.nodes().enroll(&token, &request, "192.0.2.5").await;
    assert!(matches!(refused, Err(CaError::BadRequest(_))), "{refused:?}");

    request.facts.ssh_port = Some(2222);
    let response = ca.nodes().enroll(&token, &request, "192.0.2.5").await.unwrap();
    let cert = ssh_key::Certificate::from_openssh(response.verification_certificate.trim()).unwrap();
    let sources = cert.critical_options().get("source-address").cloned().unwrap_or_default();
    assert_eq!(sources, "127.0.0.0/8,::1,192.0.2.5,2001:db8::5");
    assert_eq!(cert.critical_options().get("force-command").map(String::as_str), Some("true"));
    assert_eq!(ca.core().store().node("pve01").await.unwrap().unwrap().ssh_port, Some(2222));
}

/// A node reports its own addresses, and users trust the host CA for every host: a node
/// that reports another node's address (or names itself after one) must not get a host
/// certificate for it. An address two nodes report is certified for neither; a name
/// that is another node's address is refused, and the token's use given back.
#[tokio::test]
async fn a_node_is_not_certified_for_another_nodes_name_or_address() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let token = token(&ca, &grant, EnrollTokenRequest { uses: 5, ..Default::default() }).await;
    let principals = |bundle: &portcullis_proto::enroll::NodeBundle| -> Vec<String> {
        let cert = ssh_key::Certificate::from_openssh(bundle.host_certificates[0].trim()).unwrap();
        cert.valid_principals().to_vec()
    };
    let with_addresses = |name: &str, key: &PrivateKey, addresses: &[&str]| {
        let mut request = enroll_request(name, key);
        request.facts.addresses = addresses.iter().map(|a| (*a).to_owned()).collect();
        request
    };
    let prod_key = ed25519_key();
    let prod = ca.nodes().enroll(&token, &with_addresses("pve-prod", &prod_key, &["10.0.0.5"]), "10.0.0.5").await;
    assert_eq!(principals(&prod.unwrap().bundle), ["pve-prod", "10.0.0.5"]);

    // A token holder's node claiming the prod node's name and address as its own.
    let evil = ed25519_key();
    let request = with_addresses("evil", &evil, &["10.0.0.5", "PVE-PROD", "10.9.9.9:22", "evil.example"]);
    let evil_bundle = ca.nodes().enroll(&token, &request, "10.9.9.9").await.unwrap().bundle;
    assert_eq!(principals(&evil_bundle), ["evil", "10.9.9.9:22", "evil.example"]);
    // The shared address is not certified for the prod node either, from its next refresh.
    let refreshed =
        ca.nodes().node_refresh(&proof(&prod_key, "pve-prod", "refresh", "pve-prod", NOW), "10.0.0.5").await.unwrap();
    assert_eq!(principals(&refreshed), ["pve-prod"]);

    // A node named after another node's address is refused (an IP address is no name at
    // all: `an_address_is_not_a_node_name`).
    let before = uses_left(&ca, &grant).await;
    let squat = ca.nodes().enroll(&token, &enroll_request("evil.example", &ed25519_key()), "10.9.9.9").await;
    assert!(matches!(squat, Err(CaError::Conflict(_))), "{squat:?}");
    assert_eq!(uses_left(&ca, &grant).await, before, "the refused enrollment gives the use back");
    assert_eq!(enroll_refusals(&ca).await.last().map(String::as_str), Some("name_taken"));
}

/// A machine is one node: its public host keys (anyone's for the asking with
/// `ssh-keyscan`) under a second name would have that name's sessions accepted by the
/// machine, and a name whose session principal is another node's would be let in where
/// that node's session certificates are. Both refused — to a token holder, audited, the
/// use given back — and to an administrator adding or re-keying a node.
#[tokio::test]
async fn a_machine_is_registered_under_one_name_and_a_principal_under_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let token = token(&ca, &grant, EnrollTokenRequest { uses: 4, ..Default::default() }).await;
    let prod = ed25519_key();
    ca.nodes().enroll(&token, &enroll_request("db-prod-1", &prod), "127.0.0.1").await.unwrap();

    let squat = ca.nodes().enroll(&token, &enroll_request("lab-7", &prod), "198.51.100.9").await;
    assert!(matches!(&squat, Err(CaError::Conflict(m)) if m.contains("host key")), "{squat:?}");
    assert_eq!(enroll_refusals(&ca).await, ["host_key_taken"]);
    assert_eq!(uses_left(&ca, &grant).await, [3], "the refused enrollment gave its use back");
    let copy = NodeRecord { name: "db-copy".into(), host_keys: vec![public_line(&prod)], ..Default::default() };
    assert!(matches!(ca.nodes().add_node(&grant, &copy).await, Err(CaError::Conflict(_))));
    ca.nodes().add_node(&grant, &NodeRecord { name: "spare".into(), ..Default::default() }).await.unwrap();
    let rekey = NodeUpdate { host_keys: Some(vec![public_line(&prod)]), ..Default::default() };
    assert!(matches!(ca.nodes().update_node(&grant, "spare", &rekey).await, Err(CaError::Conflict(_))));

    // Two names found by a birthday search to share the 48-bit digest in `pn_…`.
    let (first, second) = COLLIDING_NAMES;
    let digest = |name: &str| portcullis_policies::node_principal(name, "root");
    assert_eq!(digest(first), digest(second), "the fixture collides");
    ca.nodes().enroll(&token, &enroll_request(first, &ed25519_key()), "127.0.0.1").await.unwrap();
    let taken = ca.nodes().enroll(&token, &enroll_request(second, &ed25519_key()), "198.51.100.9").await;
    assert!(matches!(&taken, Err(CaError::Conflict(m)) if m.contains("session principal")), "{taken:?}");
    assert_eq!(enroll_refusals(&ca).await, ["host_key_taken", "name_taken"]);
    let twin = NodeRecord { name: second.into(), ..Default::default() };
    assert!(matches!(ca.nodes().add_node(&grant, &twin).await, Err(CaError::Conflict(_))));
    assert_eq!(uses_left(&ca, &grant).await, [2]);
}

/// A name that is an address would be certified as that address, which another
/// machine has: refused to a token holder and to an administrator alike, in every form
/// `ssh` reads as an IPv4 address; a name with a letter is a name (the control).
#[tokio::test]
async fn an_address_is_not_a_node_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let token = token(&ca, &grant, EnrollTokenRequest { uses: 5, ..Default::default() }).await;
    for name in ["10.20.0.5", "10.20.5", "169090565"] {
        let squat = ca.nodes().enroll(&token, &enroll_request(name, &ed25519_key()), "198.51.100.9").await;
        assert!(matches!(&squat, Err(CaError::BadRequest(m)) if m.contains("an address is not a name")), "{squat:?}");
        let by_hand = NodeRecord { name: name.into(), ..Default::default() };
        assert!(matches!(ca.nodes().add_node(&grant, &by_hand).await, Err(CaError::BadRequest(_))), "{name}");
    }
    assert_eq!(uses_left(&ca, &grant).await, [5]);
    ca.nodes().enroll(&token, &enroll_request("10-20-0-5.lab", &ed25519_key()), "127.0.0.1").await.unwrap();
}

/// `pve01`, registered with a fresh host key (returned).
async fn pve01_with_a_key(ca: &Ca, grant: &Grant<proof::NodesManage>) -> PrivateKey {
    let key = ed25519_key();
    let node = NodeRecord { name: "pve01".into(), host_keys: vec![public_line(&key)], ..Default::default() };
    ca.nodes().add_node(grant, &node).await.unwrap();
    key
}

/// `pve01` re-keyed in a write transaction the caller holds open (and commits): the new
/// key, and the transaction.
async fn rekey_held_open(ca: &Ca) -> (PrivateKey, portcullis_ca::store::WriteTx<'_>) {
    let new = ed25519_key();
    let mut rekeyed = ca.core().store().node("pve01").await.unwrap().unwrap();
    rekeyed.host_keys = vec![public_line(&new)];
    let mut tx = ca.core().store().begin().await.unwrap();
    portcullis_ca::store::upsert_node(tx.conn(), &rekeyed, NOW).await.unwrap();
    (new, tx)
}

/// A change to a node computed from a read made before another change committed would
/// put the older record back: here an administrator re-tags a node while its
/// re-enrollment (held open by the test) writes new host keys — the node would then fail
/// every refresh with its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_change_never_undoes_one_committed_while_it_waited() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    pve01_with_a_key(&ca, &grant).await;
    let (new, tx) = rekey_held_open(&ca).await;
    let retag = NodeUpdate { set_tags: [("env".to_owned(), "lab".to_owned())].into(), ..Default::default() };
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tx.commit().await.unwrap();
    };
    let (updated, ()) = tokio::join!(ca.nodes().update_node(&grant, "pve01", &retag), commit);
    updated.unwrap();
    let node = ca.core().store().node("pve01").await.unwrap().unwrap();
    assert_eq!(node.host_keys, [public_line(&new)], "the re-tag put the old host keys back");
    assert_eq!(node.tags.get("env").map(String::as_str), Some("lab"));
}

/// A refresh checked against the node record before a re-key committed (the proof's
/// key was current then) must not certify the old key afterwards: re-keying is the
/// answer to a stolen host key, and the thief could otherwise refresh into the window
/// and get a fresh 30-day certificate for it. The refresh decides on the record it
/// reads inside its own transaction (found in review, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_waited_for_a_rekey_does_not_certify_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant(dir.path()).await;
    let old = pve01_with_a_key(&ca, &grant).await;
    // The re-key holds the write lock while the stolen key's refresh arrives.
    let (new, tx) = rekey_held_open(&ca).await;
    let commit = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        tx.commit().await.unwrap();
    };
    let stolen = proof(&old, "pve01", "refresh", "pve01", NOW);
    let (refreshed, ()) = tokio::join!(ca.nodes().node_refresh(&stolen, "127.0.0.1"), commit);
    assert!(matches!(refreshed, Err(CaError::Unauthenticated)), "{refreshed:?}");
    let issued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM certificates WHERE username = 'node:pve01'")
        .fetch_one(ca.core().store().pool())
        .await
        .unwrap();
    assert_eq!(issued, 0, "a host certificate was issued for the old key after the re-key");
    // The node's new key refreshes.
    let current = proof(&new, "pve01", "refresh", "pve01", NOW);
    ca.nodes().node_refresh(&current, "127.0.0.1").await.unwrap();
}

/// A revoked host certificate is not handed out again: the next refresh signs a new
/// one. The reuse check looked only at the certificate's age and names, so a revoked
/// one went on being served until its renewal, three weeks on (found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_host_certificate_is_replaced_at_the_next_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, admin) = ca_and_admin_on(&sqlite_url(dir.path()), dir.path()).await;
    let grant = ca.core().authorize::<proof::NodesManage>(&admin).unwrap();
    let key = pve01_with_a_key(&ca, &grant).await;
    let signed = proof(&key, "pve01", "refresh", "pve01", NOW);
    let refresh = || ca.nodes().node_refresh(&signed, "127.0.0.1");
    let serial_of = |bundle: &portcullis_proto::enroll::NodeBundle| {
        ssh_key::Certificate::from_openssh(bundle.host_certificates[0].trim()).unwrap().serial()
    };
    let first = serial_of(&refresh().await.unwrap());
    assert_eq!(serial_of(&refresh().await.unwrap()), first, "a current certificate is reused");

    let revoke = ca.core().authorize::<proof::CertsRevoke>(&admin).unwrap();
    let by_serial = portcullis_proto::RevokeRequest { serial: Some(first.to_string()), ..Default::default() };
    ca.revocation().revoke(&revoke, &by_serial).await.unwrap();
    assert_ne!(serial_of(&refresh().await.unwrap()), first, "the revoked certificate was handed out again");
}

/// Clones of one image enrolling at the same moment (cloud-init on a batch of VMs) carry
/// the same host key: one is registered, the others refused (`host_key_taken`). On
/// PostgreSQL each enrollment read the other nodes before any had committed, and all of
/// them passed the check (found in review, 2026-12-06): decisions on node identities now
/// take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_enrolling_at_once_on_postgres_register_one_machine() {
    let pg = portcullis_tests::Postgres::start().expect("throwaway PostgreSQL server");
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant_on(&pg.url(), dir.path()).await;
    let ca = std::sync::Arc::new(ca);
    let image = ed25519_key();
    let mut clones = tokio::task::JoinSet::new();
    for i in 0..8 {
        // A token each: one token's uses are counted on its row, which would serialize them.
        let token = token(&ca, &grant, EnrollTokenRequest { uses: 1, ..Default::default() }).await;
        let enrolling = std::sync::Arc::clone(&ca);
        let request = enroll_request(&format!("clone{i}"), &image);
        clones.spawn(async move { enrolling.nodes().enroll(&token, &request, "127.0.0.1").await.is_ok() });
    }
    let registered = clones.join_all().await.into_iter().filter(|ok| *ok).count();
    assert_eq!(registered, 1, "clones of one image were registered as {registered} machines");
}

/// Forty nodes refreshing at once on PostgreSQL (16 connections): a refresh used to hold
/// its transaction's connection while reading its host certificates and the KRL on the
/// pool, so sixteen of them could each hold one and wait for a second until the pool
/// gave up (10 s, then 503 for every one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_refreshes_and_enrollments_on_postgres_never_starves_the_pool() {
    // No skip when PostgreSQL is missing: see `Postgres::start`.
    let pg = portcullis_tests::Postgres::start().expect("throwaway PostgreSQL server");
    let dir = tempfile::tempdir().unwrap();
    let (ca, grant) = ca_and_grant_on(&pg.url(), dir.path()).await;
    let ca = std::sync::Arc::new(ca);
    let token = token(&ca, &grant, EnrollTokenRequest { uses: 80, ..Default::default() }).await;
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = ed25519_key();
        ca.nodes().enroll(&token, &enroll_request(&format!("pve{i:02}"), &key), "127.0.0.1").await.unwrap();
        keys.push(key);
    }
    let mut burst = tokio::task::JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        let name = format!("pve{i:02}");
        let refresh = proof(key, &name, "refresh", &name, NOW);
        let refreshing = std::sync::Arc::clone(&ca);
        burst.spawn(async move { refreshing.nodes().node_refresh(&refresh, "127.0.0.1").await.map(|_| ()) });
        let (enrolling, token) = (std::sync::Arc::clone(&ca), token.clone());
        let request = enroll_request(&format!("new{i:02}"), &ed25519_key());
        burst.spawn(async move { enrolling.nodes().enroll(&token, &request, "127.0.0.1").await.map(|_| ()) });
    }
    let started = std::time::Instant::now();
    let results = burst.join_all().await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of 80 failed after {:?}: {:?}", failed.len(), started.elapsed(), failed.first());
}
