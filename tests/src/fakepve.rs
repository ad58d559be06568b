//! A Proxmox VE "site" for the inventory tests: the real `fakepve` (PyPI) started by
//! `tests/fixtures/fakepve/site.py` on a loopback port chosen by the OS, with its API
//! tokens, nodes, guests and faults set by the test and changed over its stdin.
//! `./scripts/test.sh` installs fakepve into `tests/pytools/.venv`; without it the test
//! fails (it never skips).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

pub struct Site {
    /// `https://HOST:PORT`.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// SHA-256 of the site's certificate, lowercase hex (what `pvenode cert info` shows).
    pub cert_sha256: String,
    stdin: ChildStdin,
    lines: Receiver<String>,
    child: Child,
    _dir: tempfile::TempDir,
}

fn python() -> PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pytools/.venv/bin/python");
    assert!(python.exists(), "fakepve is missing: ./scripts/test.sh installs it into tests/pytools/.venv");
    python
}

impl Site {
    /// Starts a site; `config` as `site.py` documents it (`host` defaults to 127.0.0.1).
    pub fn start(config: Value) -> Site {
        let dir = tempfile::Builder::new().prefix("fakepve-").tempdir().unwrap();
        let path = dir.path().join("site.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fakepve/site.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start fakepve");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let banner = lines.recv_timeout(Duration::from_secs(30)).expect("fakepve did not start");
        let mut words = banner.split_whitespace();
        assert_eq!(words.next(), Some("listening"), "{banner}");
        let url = words.next().unwrap().to_owned();
        let cert_sha256 = words.next().unwrap().to_owned();
        let (host, port) = url.trim_start_matches("https://").rsplit_once(':').unwrap();
        let (host, port) = (host.to_owned(), port.parse().unwrap());
        Site { url, host, port, cert_sha256, stdin, lines, child, _dir: dir }
    }

    /// One command (see `site.py`), its answer.
    pub fn command(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("fakepve did not answer");
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert!(answer.get("error").is_none(), "{cmd} -> {answer}");
        answer
    }

    /// Every request the site has received, as `(method, path)`.
    pub fn requests(&mut self) -> Vec<(String, String)> {
        let answer = self.command(json!({ "op": "requests" }));
        answer["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_str().unwrap().to_owned()))
            .collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
