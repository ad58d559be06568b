//! Single sign-ons in progress under a flood: the table of sign-ins started and not yet
//! finished (`oidc_pending`) is bounded, and a few sources filling it must not lock
//! everyone else out of signing in. Checked against the store on embedded SQLite and a
//! real PostgreSQL server, with small caps so the table fills in a few rows.

// Test code: a failed expectation must fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_ca::store::{NewPending, PendingAdmission, PendingCaps, Store};
use portcullis_tests::{Postgres, sqlite_url};

const NOW: u64 = 1_900_000_000;
const CAPS: PendingCaps = PendingCaps { per_source: 3, total: 6 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_flood_from_a_few_sources_does_not_lock_others_out_of_signing_in() {
    let dir = tempfile::tempdir().unwrap();
    a_flood_from_a_few_sources_does_not_lock_others_out(&Store::open(&sqlite_url(dir.path())).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_flood_from_a_few_sources_does_not_lock_others_out_of_signing_in() {
    let pg = Postgres::start().expect("throwaway PostgreSQL server");
    a_flood_from_a_few_sources_does_not_lock_others_out(&Store::open(&pg.url()).await.unwrap()).await;
}

/// Starts a browser sign-in `key` from `source`, `age` seconds ago (older ones expire
/// sooner).
async fn start(store: &Store, key: &str, source: &str, age: u64) -> PendingAdmission {
    let pending =
        NewPending { key_hash: key, device_interval: None, binding_hash: "b", source, expires_at: NOW + 600 - age };
    store.insert_oidc_pending(&pending, NOW, CAPS).await.unwrap()
}

/// Whether sign-in `key` is still in progress (taking it out, as its callback would).
async fn in_progress(store: &Store, key: &str) -> bool {
    store.take_oidc_login(key, NOW).await.unwrap().is_some()
}

async fn a_flood_from_a_few_sources_does_not_lock_others_out(store: &Store) {
    // An expired sign-in takes no room.
    let expired =
        NewPending { key_hash: "old", device_interval: None, binding_hash: "b", source: "a", expires_at: NOW };
    assert_eq!(store.insert_oidc_pending(&expired, NOW - 600, CAPS).await.unwrap(), PendingAdmission::Stored);

    // One source gets its share and no more.
    for n in 0..3 {
        assert_eq!(start(store, &format!("a{n}"), "198.51.100.1", 100 - n).await, PendingAdmission::Stored);
    }
    assert_eq!(start(store, "a3", "198.51.100.1", 0).await, PendingAdmission::SourceFull);
    // A second source fills the table.
    for n in 0..3 {
        assert_eq!(start(store, &format!("b{n}"), "2001:db8:1:2::/64", 50 - n).await, PendingAdmission::Stored);
    }

    // Someone else still gets in: the oldest sign-in of the heaviest source makes room.
    assert_eq!(start(store, "alice", "203.0.113.7", 10).await, PendingAdmission::Stored);
    assert!(!in_progress(store, "a0").await, "the flood's oldest sign-in made room");
    // And again, from the other flooding source this time (now the heaviest).
    assert_eq!(start(store, "bob", "203.0.113.8", 5).await, PendingAdmission::Stored);
    assert!(!in_progress(store, "b0").await, "the other flood's oldest sign-in made room");
    // The flood cannot push out the people it displaced into the table: no source holds
    // more than the asking one would.
    assert_eq!(start(store, "a4", "198.51.100.1", 0).await, PendingAdmission::Full);
    assert_eq!(start(store, "b4", "2001:db8:1:2::/64", 0).await, PendingAdmission::Full);

    for key in ["alice", "bob", "a1", "a2", "b1", "b2"] {
        assert!(in_progress(store, key).await, "{key} is still in progress");
    }
}
