//! A CA replica as its own `portcullisd ca --config` process on a shared database: the
//! chaos test and the issuance bench start several on one PostgreSQL.

use crate::bins::bin;
use crate::server::{client_with_pin, status_and_json};
use crate::services::free_loopback_addr;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The CA key passphrase every replica of a test shares (test keys only).
pub const PASSPHRASE: &str = "replica test passphrase, not secret";

/// One `portcullisd ca` replica: fixed address, so a restart is the same replica.
pub struct CaReplica {
    pub name: &'static str,
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`, the same across restarts.
    pub url: String,
    /// Read from the first start's banner.
    pub pin: String,
    child: Option<Child>,
}

impl CaReplica {
    pub fn new(name: &'static str, root: &Path, database_url: &str, policy: &Path) -> CaReplica {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let listen = free_loopback_addr();
        std::fs::write(
            dir.join("portcullisd.toml"),
            format!(
                "listen = \"{listen}\"\ndata_dir = \"{}\"\npolicy_dir = \"{}\"\ndatabase_url = \"{database_url}\"\n",
                dir.join("data").display(),
                policy.display()
            ),
        )
        .unwrap();
        CaReplica { name, url: format!("https://{listen}"), pin: String::new(), dir, child: None }
    }

    /// The running replica's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(&mut self) {
        let append = |name: &str| std::fs::File::options().create(true).append(true).open(self.dir.join(name)).unwrap();
        let child = Command::new(bin("portcullisd"))
            .args(["ca", "--config"])
            .arg(self.dir.join("portcullisd.toml"))
            .env("PORTCULLIS_CA_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(append("stdout"))
            .stderr(append("stderr"))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Until `/readyz` answers 200 (the pin read from the first start's banner).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.pin.is_empty() {
                let out = std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default();
                if let Some(pin) = out.lines().find_map(|l| l.strip_prefix("TLS public-key pin: ")) {
                    self.pin = pin.trim().to_owned();
                }
            }
            if !self.pin.is_empty() {
                let ready = client_with_pin(&self.pin).get(format!("{}/readyz", self.url)).send().await;
                if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} never became ready:\n{}", self.name, self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub async fn call(
        &self,
        method: Method,
        token: Option<&str>,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = client_with_pin(&self.pin).request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        status_and_json(request.send().await.unwrap_or_else(|e| panic!("{} {path}: {e}", self.name))).await
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, Some(token), path, None).await
    }

    pub async fn post(&self, token: Option<&str>, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, token, path, Some(body)).await
    }
}

impl Drop for CaReplica {
    fn drop(&mut self) {
        self.kill_9();
    }
}
