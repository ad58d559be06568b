//! The `portcullis` CLI as a user runs it: a home directory of its own, no ssh-agent,
//! what the user types on stdin.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `portcullis ARGS` with `HOME=home`, feeding `stdin`; its output, whatever the
/// exit status.
pub fn portcullis(home: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(crate::bin("portcullis"))
        .args(args)
        .env("HOME", home)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start portcullis");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
