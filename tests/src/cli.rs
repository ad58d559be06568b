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

/// The CLI signed in as the server's `admin`, in a home directory of its own.
pub struct AdminCli {
    home: tempfile::TempDir,
}

impl AdminCli {
    pub async fn login(server: &crate::Server) -> AdminCli {
        let cli = AdminCli { home: tempfile::tempdir().unwrap() };
        let login =
            ["login", "--ca", &server.url, "--ca-fingerprint", &server.pin, "--user", "admin", "--password-stdin"];
        cli.run(&login, &format!("{}\n", server.admin_password().await));
        cli
    }

    /// `portcullis ARGS`, which must succeed; its output.
    pub fn run(&self, args: &[&str], stdin: &str) -> String {
        let out = portcullis(self.home.path(), args, stdin);
        let text = text(&out);
        assert!(out.status.success(), "portcullis {args:?}: {text}");
        text
    }
}
