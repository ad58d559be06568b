//! What the `portcullis` CLI ships besides its commands: shell completions and a manual
//! page, generated from the same grammar as `--help` (so they never drift from it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bin;
use portcullis_tests::cli::{portcullis, text};
use std::process::Command;

#[test]
fn completions_and_the_manual_come_from_the_grammar() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("portcullis")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["ssh-config", "login", "admin"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = Command::new(bin("portcullis")).arg("man").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH portcullis 1"), "{page}");
    assert!(page.contains("ssh\\-config"), "subcommands are listed: {page}");
}

/// Every admin list prints the CA's answer as JSON with `--json` (for scripts), and a
/// table without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_print_json_for_scripts() {
    let server = portcullis_tests::Server::start().await;
    let home = tempfile::tempdir().unwrap();
    let password = format!("{}\n", server.admin_password().await);
    server.admin_token().await; // the first sign-in (chooses admin's own password)
    let login = ["login", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--user", "admin", "--password-stdin"];
    let out = portcullis(home.path(), &login, &password);
    assert!(out.status.success(), "{}", text(&out));
    let lists: [&[&str]; 7] = [
        &["admin", "user", "list"],
        &["admin", "ca", "list"],
        &["admin", "sessions", "list"],
        &["admin", "enroll-token", "list"],
        &["admin", "agents", "list"],
        &["admin", "bastions", "list"],
        &["admin", "audit", "list"],
    ];
    for list in lists {
        let out = portcullis(home.path(), &[list, &["--json"]].concat(), "");
        assert!(out.status.success(), "{list:?}: {}", text(&out));
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{list:?}: {e}"));
        assert!(parsed.is_array(), "{list:?}: {parsed}");
    }
    let users: serde_json::Value =
        serde_json::from_slice(&portcullis(home.path(), &["admin", "user", "list", "--json"], "").stdout).unwrap();
    assert_eq!(users[0]["username"], "admin", "{users}");
    let table = portcullis(home.path(), &["admin", "user", "list"], "");
    assert!(String::from_utf8_lossy(&table.stdout).starts_with("admin "), "{}", text(&table));
}
