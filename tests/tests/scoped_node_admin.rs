//! A role's targets scope `nodes.manage`, from a lab administrator's side: with a role
//! whose targets are the lab, every way to reach a prod node — seeing it, changing it,
//! re-tagging it into the lab roles' reach, retiring it, reading its principals, enrolling
//! one with a token, seeing or ending the prod team's tokens — is refused, and so is
//! setting where any node is reached (adding one, changing an address or port, enrolling
//! one that reports another address); tags, retirement and re-enrollment of lab nodes
//! work, and an administrator whose role has no targets keeps every node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::{Ca, CaError, Caller, ManualClock};
use portcullis_policies::{Grant, proof};
use portcullis_proto::enroll::{EnrollRequest, EnrollTokenRequest, NodeFacts};
use portcullis_proto::{NodeRecord, NodeUpdate};
use portcullis_tests::ssh::{ed25519_key, public_line};
use portcullis_tests::{ca_in_process, first_admin, sqlite_url};
use secrecy::SecretString;
use std::collections::BTreeMap;

const NOW: u64 = 1_800_000_000;
const POLICY: &str = r#"
[[role]]
name = "admin"
permissions = ["users.manage", "nodes.manage"]

[[role]]
name = "lab-admin"
targets = 'in:devices tags.env:lab'
permissions = ["nodes.manage"]

[[binding]]
group = "portcullis-admins"
roles = ["admin"]

[[binding]]
group = "lab-admins"
roles = ["lab-admin"]

[[role]]
name = "user-admin"
permissions = ["users.manage"]

[[binding]]
group = "user-admins"
roles = ["user-admin"]

[[binding]]
user = "ldap:boss"
roles = ["admin"]
"#;
const CAROL_PASSWORD: &str = "carol-password-0123456789";

fn env(value: &str) -> BTreeMap<String, String> {
    [("env".to_owned(), value.to_owned())].into()
}

fn node(name: &str, environment: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        addresses: vec![format!("{name}.example.com")],
        tags: env(environment),
        ..NodeRecord::default()
    }
}

async fn grant_of(ca: &Ca, caller: &Caller) -> Grant<proof::NodesManage> {
    ca.core().authorize::<proof::NodesManage>(caller).unwrap()
}

/// The administrator and carol, a user in `groups`.
async fn admin_and_carol(ca: &Ca, groups: &[&str]) -> (Caller, Caller) {
    let admin = ca.identity().caller(&first_admin(ca, "portcullis-admins", "127.0.0.1").await).await.unwrap();
    let users = ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    let password = SecretString::from(CAROL_PASSWORD);
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    ca.admin().add_user(&users, "carol", &groups, Some(&password)).await.unwrap();
    let carol = ca.identity().login_password("carol", None, &password, "127.0.0.1").await.unwrap();
    (admin, ca.identity().caller(carol.token.expose()).await.unwrap())
}

/// The administrator's and the lab administrator's `nodes.manage` grants.
async fn admins(ca: &Ca) -> (Grant<proof::NodesManage>, Grant<proof::NodesManage>) {
    let (admin, carol) = admin_and_carol(ca, &["lab-admins"]).await;
    (grant_of(ca, &admin).await, grant_of(ca, &carol).await)
}

async fn ca_with_policy(dir: &std::path::Path) -> Ca {
    let policy = dir.join("policy");
    std::fs::create_dir(&policy).unwrap();
    std::fs::write(policy.join("policy.toml"), POLICY).unwrap();
    ca_in_process(&sqlite_url(dir), &policy, ManualClock::new(NOW)).await.unwrap()
}

async fn token(ca: &Ca, grant: &Grant<proof::NodesManage>, request: EnrollTokenRequest) -> Result<String, CaError> {
    let request = EnrollTokenRequest { ttl_seconds: 600, uses: 1, ..request };
    Ok(ca.nodes().create_enroll_token(grant, None, &request).await?.token.expose().to_owned())
}

async fn enroll(ca: &Ca, token: &str, name: &str, addresses: &[&str]) -> Result<(), CaError> {
    let facts = NodeFacts {
        name: name.into(),
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        host_keys: vec![public_line(&ed25519_key())],
        ..Default::default()
    };
    let request = EnrollRequest { facts, verification_public_key: public_line(&ed25519_key()), proof: None };
    ca.nodes().enroll(token, &request, "127.0.0.1").await.map(|_| ())
}

async fn names(ca: &Ca, grant: &Grant<proof::NodesManage>) -> Vec<String> {
    ca.nodes().list(grant).await.unwrap().into_iter().map(|n| n.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_administrator_manages_lab_nodes_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_policy(dir.path()).await;
    let (admin, lab) = admins(&ca).await;
    let nodes = ca.nodes();
    nodes.add_node(&admin, &node("prod1", "prod")).await.unwrap();
    nodes.add_node(&admin, &node("lab1", "lab")).await.unwrap();
    let prod_token = token(&ca, &admin, EnrollTokenRequest::default()).await.unwrap();

    // Seeing: the prod node is not there for the lab administrator.
    assert_eq!(names(&ca, &lab).await, ["lab1"]);
    assert!(matches!(nodes.node_principals(&lab, "prod1").await, Err(CaError::NotFound(_))));

    // Changing: a prod node cannot be touched, nor re-tagged into the lab's reach, and a
    // lab node cannot be moved out of it (into another role's).
    let retag = |to: &str| NodeUpdate { set_tags: env(to), ..NodeUpdate::default() };
    assert!(matches!(nodes.update_node(&lab, "prod1", &retag("lab")).await, Err(CaError::NotFound(_))));
    assert!(matches!(nodes.update_node(&lab, "lab1", &retag("prod")).await, Err(CaError::Forbidden(_))));
    let owner = NodeUpdate { set_tags: [("owner".to_owned(), "carol".to_owned())].into(), ..NodeUpdate::default() };
    nodes.update_node(&lab, "lab1", &owner).await.unwrap();

    // Where a node is reached is not the lab administrator's to set: not through a new
    // node, nor by changing a lab node's address (the agents' allow-lists are made of
    // them: pointing lab1 at a prod database would hand the lab's users a way there).
    assert!(matches!(nodes.add_node(&lab, &node("lab2", "lab")).await, Err(CaError::Forbidden(_))));
    let elsewhere = NodeUpdate { addresses: Some(vec!["10.9.9.9".into()]), ..NodeUpdate::default() };
    assert!(matches!(nodes.update_node(&lab, "lab1", &elsewhere).await, Err(CaError::Forbidden(_))));
    let port = NodeUpdate { ssh_port: Some(5432), ..NodeUpdate::default() };
    assert!(matches!(nodes.update_node(&lab, "lab1", &port).await, Err(CaError::Forbidden(_))));
    // Retiring.
    assert!(matches!(nodes.remove_node(&lab, "prod1").await, Err(CaError::NotFound(_))));
    nodes.add_node(&admin, &node("lab2", "lab")).await.unwrap();
    nodes.remove_node(&lab, "lab2").await.unwrap();

    // Enrolling: only a registered lab node, with a token bound to its name, and only
    // where it was registered — a node reporting another address is refused (audited,
    // the token's use given back).
    let unbound = token(&ca, &lab, EnrollTokenRequest { tags: env("lab"), ..EnrollTokenRequest::default() });
    assert!(matches!(unbound.await, Err(CaError::Forbidden(_))));
    let bound = |name: &str| EnrollTokenRequest { node: Some(name.into()), ..EnrollTokenRequest::default() };
    assert!(matches!(token(&ca, &lab, bound("prod1")).await, Err(CaError::NotFound(_))));
    let routed = EnrollTokenRequest { agent: Some("edge9".into()), ..bound("lab1") };
    assert!(matches!(token(&ca, &lab, routed).await, Err(CaError::Forbidden(_))));
    let lab_token = token(&ca, &lab, bound("lab1")).await.unwrap();
    let moved = enroll(&ca, &lab_token, "lab1", &["10.9.9.9"]).await;
    assert!(matches!(moved, Err(CaError::Forbidden(_))), "{moved:?}");
    let refusals = portcullis_tests::audit_payloads(&ca, "enroll_refused").await;
    assert_eq!(refusals.last().unwrap()["reason"], "outside_token_reach");
    enroll(&ca, &lab_token, "lab1", &["lab1.example.com"]).await.unwrap();

    // The prod team's token: neither listed for the lab administrator nor ended by it.
    let listed = nodes.enroll_tokens(&lab).await.unwrap();
    assert_eq!(listed.len(), 1, "the lab administrator's own token: {listed:?}");
    assert_eq!(listed[0].uses_left, 0, "its refused use was given back, then used");
    let all = nodes.enroll_tokens(&admin).await.unwrap();
    let prod_id = all.iter().find(|t| t.created_by == "admin").unwrap().id.clone();
    assert!(matches!(nodes.revoke_enroll_token(&lab, &prod_id).await, Err(CaError::NotFound(_))));
    enroll(&ca, &prod_token, "prod3", &[]).await.unwrap();

    // The administrator keeps every node, as before.
    assert_eq!(names(&ca, &admin).await, ["lab1", "prod1", "prod3"]);
    nodes.update_node(&admin, "prod1", &retag("staging")).await.unwrap();
    nodes.update_node(&admin, "lab1", &port).await.unwrap();
    nodes.remove_node(&admin, "prod1").await.unwrap();
    assert_eq!(names(&ca, &lab).await, ["lab1"]);
}

/// Managing users is no way to more reach: a user manager who administers the lab's
/// nodes cannot put anyone — itself included — in a group that administers every node,
/// and cannot release an account that does (ending its holder's sessions and handing its
/// name, with the bindings by name, to whoever signs in with it next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_user_manager_gives_no_one_more_than_the_lab() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_with_policy(dir.path()).await;
    let (root, carol) = admin_and_carol(&ca, &["lab-admins", "user-admins"]).await;
    let users = ca.core().authorize::<proof::UsersManage>(&carol).unwrap();
    let admin = ca.admin();

    let everywhere = ["lab-admins".to_owned(), "portcullis-admins".to_owned()];
    let refused = admin.set_user_groups(&users, "carol", &everywhere).await;
    assert!(matches!(refused, Err(CaError::Forbidden(_))), "{refused:?}");
    let refused = admin.add_user(&users, "dave", &["portcullis-admins".to_owned()], None).await;
    assert!(matches!(refused, Err(CaError::Forbidden(_))), "{refused:?}");
    // Within the lab, as before.
    admin.add_user(&users, "erin", &["lab-admins".to_owned()], None).await.unwrap();

    // A directory administrator, known by name and signed in once.
    let store = ca.core().store();
    let mut tx = store.begin().await.unwrap();
    portcullis_ca::store::claim_account(tx.conn(), "ldap:boss", "ldap", "uid=boss,ou=people", NOW).await.unwrap();
    let session = portcullis_ca::store::SessionRow {
        username: "ldap:boss".into(),
        source: "ldap".into(),
        groups: vec!["staff".into()],
        expires_at: NOW + 3600,
        authenticated_at: NOW,
        groups_unknown: false,
    };
    portcullis_ca::store::insert_session(tx.conn(), "boss-session", &session, NOW).await.unwrap();
    tx.commit().await.unwrap();
    let refused = admin.release_account(&users, "ldap:boss").await;
    assert!(matches!(refused, Err(CaError::Forbidden(_))), "{refused:?}");
    // The control: an administrator of everything may.
    let everything = ca.core().authorize::<proof::UsersManage>(&root).unwrap();
    admin.release_account(&everything, "ldap:boss").await.unwrap();
}
