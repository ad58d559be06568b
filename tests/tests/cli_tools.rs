//! What the `portcullis` CLI ships besides its commands: shell completions and a manual
//! page, generated from the same grammar as `--help` (so they never drift from it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_tests::bin;
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
