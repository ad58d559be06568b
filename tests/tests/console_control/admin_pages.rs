//! The audit filters the admin pages use.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_for_the_admin_pages() {
    audit_filters(&fixture().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_for_the_admin_pages_on_postgres() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    audit_filters(&fixture_on(Some(&pg.url()), 1).await).await;
}

async fn audit_filters(fx: &Fx) {
    let alice = bearer(&fx.ca, "alice").await;
    let dave = bearer(&fx.ca, "dave").await;
    ticket(fx, &alice, "pve01", "root").await;
    let start = fx.ca.core().now();
    fx.clock.set(start + 10);
    ticket(fx, &alice, "pve02", "root").await;
    ticket(fx, &dave, "pve02", "root").await;

    let get = |q: &'static str| async move {
        let (status, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/audit?{q}")).await;
        assert_eq!(status, StatusCode::OK, "{q}: {v}");
        v.as_array().unwrap().clone()
    };
    let granted = get("event=console_ticket_granted").await;
    assert_eq!(granted.len(), 3);
    assert!(granted.iter().all(|r| r["event"] == "console_ticket_granted"));
    assert_eq!(get("event=console_ticket_granted&user=alice").await.len(), 2);
    assert_eq!(get("event=console_ticket_granted&device=pve02").await.len(), 2);
    assert_eq!(get("event=console_ticket_granted&user=alice&device=pve02").await.len(), 1);
    // `since` by time; `limit`; newest first.
    let q = format!("event=console_ticket_granted&since={}", start + 10);
    let (_, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/audit?{q}")).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    // A time range: `until` excludes its own second.
    let q = format!("event=console_ticket_granted&since={start}&until={}", start + 10);
    let (_, v) = fx.api.get_json(Some(&fx.admin), &format!("/v1/admin/audit?{q}")).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let newest = get("event=console_ticket_granted&order=desc&limit=1").await;
    assert_eq!((newest.len(), newest[0]["payload"]["user"].as_str()), (1, Some("dave")));
    // The user filter also finds actors (admin's changes) and usernames (logins).
    assert!(get("user=admin&event=user_changed").await.len() >= 4);
    assert!(!get("user=alice&event=login_succeeded").await.is_empty());
    // The old paging still works.
    let all = get("after=0&limit=5").await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[0]["seq"], 1);
    let (status, _) = fx.api.get_json(Some(&fx.admin), "/v1/admin/audit?order=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = fx.api.get_json(Some(&alice), "/v1/admin/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
