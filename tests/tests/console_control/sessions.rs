//! Console sessions after they open: heartbeats re-evaluate them, and the absolute deadline closes them.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reevaluate_console_sessions() {
    heartbeats_reevaluate(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reevaluate_console_sessions_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    heartbeats_reevaluate(&fixture_on(Some(&pg.url()), 1).await).await;
}

/// The bastion enforces the absolute limit; the CA orders the close at the lease's
/// deadline as well, so a bastion that does not still cannot keep the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_orders_a_close_at_the_absolute_deadline() {
    let fx = fixture().await;
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let policy = fx.ca.core().authorize::<proof::PolicyManage>(&admin).unwrap();
    let short = POLICY.replace(r#"absolute = "1h""#, r#"absolute = "20s""#);
    std::fs::write(fx.policy_dir.join("policy.toml"), short).unwrap();
    fx.ca.admin().reload_policy(&policy).await.unwrap();
    let alice = bearer(&fx.ca, "alice").await;
    let id = session_id();
    let (status, v) = redeem(&fx, &ticket(&fx, &alice, "pve01", "root").await, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let opened = fx.ca.core().now();
    // Heartbeats keep the lease; before the deadline nothing is ordered.
    for t in [6, 12, 19] {
        fx.clock.set(opened + t);
        assert!(heartbeat(&fx, &[&id]).await.is_empty(), "closed before the deadline (t = {t})");
    }
    fx.clock.set(opened + 20);
    assert_eq!(heartbeat(&fx, &[&id]).await, vec![(id.clone(), CloseReason::AbsoluteTimeout)]);
}

async fn heartbeats_reevaluate(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;
    let bob = bearer(&fx.ca, "bob").await;
    let (a, b) = (session_id(), session_id());
    let (status, v) = redeem(fx, &ticket(fx, &alice, "pve01", "root").await, &a).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = redeem(fx, &ticket(fx, &bob, "pve01", "root").await, &b).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // A console lease names no certificate, and that is not a revocation.
    assert!(heartbeat(fx, &[&a, &b]).await.is_empty());

    // Disabling a user closes their console session (revoked); the other goes on.
    let admin = fx.ca.identity().caller(&fx.admin).await.unwrap();
    let users = fx.ca.core().authorize::<proof::UsersManage>(&admin).unwrap();
    fx.ca.admin().set_user_disabled(&users, "bob", true).await.unwrap();
    assert_eq!(heartbeat(fx, &[&a, &b]).await, vec![(b.clone(), CloseReason::Revoked)]);

    // The policy stops granting the console: policy_changed.
    let policy = fx.ca.core().authorize::<proof::PolicyManage>(&admin).unwrap();
    let narrowed =
        POLICY.replace(r#"permissions = ["certs.issue", "devices.console.open"]"#, r#"permissions = ["certs.issue"]"#);
    std::fs::write(fx.policy_dir.join("policy.toml"), narrowed).unwrap();
    fx.ca.admin().reload_policy(&policy).await.unwrap();
    assert_eq!(heartbeat(fx, &[&a]).await, vec![(a.clone(), CloseReason::PolicyChanged)]);
    // Restored: the session may go on again (the decision is re-run, not latched).
    std::fs::write(fx.policy_dir.join("policy.toml"), POLICY).unwrap();
    fx.ca.admin().reload_policy(&policy).await.unwrap();
    assert!(heartbeat(fx, &[&a]).await.is_empty());

    // Removing the user's group (RBAC revoked) closes the live console at the next
    // heartbeat, though the ticket recorded the old groups; giving it back lets it go on.
    let groups = fx.ca.admin().users(&users).await.unwrap().into_iter().find(|u| u.username == "alice").unwrap().groups;
    fx.ca.admin().set_user_groups(&users, "alice", &["bystanders".to_owned()]).await.unwrap();
    assert_eq!(heartbeat(fx, &[&a]).await, vec![(a.clone(), CloseReason::PolicyChanged)]);
    fx.ca.admin().set_user_groups(&users, "alice", &groups).await.unwrap();
    assert!(heartbeat(fx, &[&a]).await.is_empty());
    // Who changed the membership, and from what to what (the seed's PaperTrail).
    let changes: Vec<Value> =
        audit(&fx.ca, "user_changed").await.into_iter().filter(|r| r["change"] == "groups_set").collect();
    let [removed, restored] = changes.as_slice() else { panic!("two group changes: {changes:?}") };
    assert_eq!(removed["actor"], "admin");
    assert_eq!((&removed["groups"]["old"], &removed["groups"]["new"]), (&json!(groups), &json!(["bystanders"])));
    assert_eq!((&restored["groups"]["old"], &restored["groups"]["new"]), (&json!(["bystanders"]), &json!(groups)));

    // The policy change history shows both reloads, newest first, with what changed.
    let (status, v) = fx.api.get_json(Some(&fx.admin), "/v1/admin/policy/history").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let history = v.as_array().unwrap();
    assert_eq!(history.len(), 2, "{v}");
    assert_eq!(history[0]["actor"], "admin");
    assert_eq!(history[0]["changed"], json!(["role:ops"]));
    // And what changed in it, with both values.
    assert_eq!(
        history[0]["fields"],
        json!([{"item": "role:ops", "field": "permissions", "old": "certs.issue",
                "new": "certs.issue, devices.console.open"}]),
        "{v}"
    );
    assert_eq!(history[0]["digest_before"], history[1]["digest_after"]);
    assert!(history[0]["seq"].as_u64() > history[1]["seq"].as_u64());
    let (status, _) = fx.api.get_json(Some(&alice), "/v1/admin/policy/history").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A refused reload is in the history too, with how many errors it had; the loaded
    // policy's digest does not move.
    std::fs::write(fx.policy_dir.join("policy.toml"), format!("{POLICY}\n[[role]]\nname = \"ops\"\n")).unwrap();
    assert!(fx.ca.admin().reload_policy(&policy).await.is_err());
    std::fs::write(fx.policy_dir.join("policy.toml"), POLICY).unwrap();
    let (_, v) = fx.api.get_json(Some(&fx.admin), "/v1/admin/policy/history").await;
    let history = v.as_array().unwrap();
    assert_eq!((history.len(), &history[0]["actor"]), (3, &json!("admin")), "{v}");
    assert!(history[0]["rejected_errors"].as_u64().is_some_and(|n| n >= 1), "{v}");
    assert!(history[1].get("rejected_errors").is_none(), "{v}");

    // Signing out of the API session the ticket was asked with ends the console.
    assert!(heartbeat(fx, &[&a]).await.is_empty());
    let (status, v) = fx.api.post_json(Some(&alice), "/v1/auth/logout", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(heartbeat(fx, &[&a]).await, vec![(a.clone(), CloseReason::Revoked)]);
}
