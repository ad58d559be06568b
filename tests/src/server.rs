//! A real `portcullisd all-in-one` on `127.0.0.1:0`, in its own temporary directory,
//! and a pinned HTTPS client to talk to it as a user would.

use crate::bins::bin;
use portcullis_proto::{AuditRecord, LoginResponse, NodeRecord};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take to print its URL and pin (key generation, argon2, on a
/// loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`Server::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServerOpts {
    /// Policy files `(name, contents)` written to `<data-dir>/policy/` before the first
    /// start (replacing the generated default policy when any is given).
    pub policy: Vec<(String, String)>,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `all-in-one`.
    pub args: Vec<String>,
    /// `--listen` address instead of `127.0.0.1:0` (when the URL must be known before the
    /// start, e.g. an OIDC redirect URL registered at the IdP).
    pub listen: Option<String>,
}

pub struct Server {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// `SHA256:…` of the server's TLS public key.
    pub pin: String,
    pub data_dir: PathBuf,
    /// The one-time password the server generated for `admin`: it opens no session.
    pub initial_admin_password: String,
    /// `admin`'s own password, chosen at the first sign-in: by the harness at the first
    /// [`Server::admin_token`], or by a test driving a real client through that sign-in
    /// (which then chooses [`Server::admin_password_to_choose`]).
    admin_password: String,
    /// `GET /v1/ca/user/keys` at start-up: what sshd's `TrustedUserCAKeys` holds.
    pub user_ca_keys: String,
    /// The server's stderr (its log), for failure messages.
    pub log_path: PathBuf,
    /// The all-in-one's bastion SSH listener.
    pub bastion: std::net::SocketAddr,
    /// The bastion's listener for edge agents.
    pub agent_listener: std::net::SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    admin_token: tokio::sync::Mutex<Option<String>>,
    child: Child,
    _dir: TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(ServerOpts::default()).await
    }

    pub async fn start_with(opts: ServerOpts) -> Server {
        let dir = tempfile::Builder::new().prefix("portcullisd-test-").tempdir().expect("temporary directory");
        let data_dir = dir.path().join("data");
        if !opts.policy.is_empty() {
            let policy_dir = data_dir.join("policy");
            std::fs::create_dir_all(&policy_dir).unwrap();
            for (name, text) in &opts.policy {
                std::fs::write(policy_dir.join(name), text).unwrap();
            }
        }
        let log_path = dir.path().join("portcullisd.stderr");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(bin("portcullisd"))
            .arg("all-in-one")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", opts.listen.as_deref().unwrap_or("127.0.0.1:0")])
            .args(["--ssh-listen", "127.0.0.1:0"])
            .args(&opts.args)
            .env("RUST_LOG", "warn")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cannot start portcullisd");

        // A reader thread drains stdout for the server's whole life so the pipe never
        // fills up and blocks it; lines are kept for failure messages.
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let pipe = child.stdout.take().unwrap();
        let kept = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line.clone());
                // The receiver is gone once start-up is over; keep draining anyway.
                let _ = tx.send(line);
            }
        });

        let (url, pin, bastion, agent_listener) = match wait_for_banner(&rx) {
            Ok(found) => found,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "portcullisd did not start: {why}\n--- stdout ---\n{}\n--- stderr ({}) ---\n{}",
                    stdout.lock().unwrap().join("\n"),
                    log_path.display(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let initial_admin_password = std::fs::read_to_string(data_dir.join("initial-admin-password"))
            .expect("initial-admin-password was not written")
            .trim()
            .to_owned();
        let mut server = Server {
            url,
            pin,
            data_dir,
            admin_password: format!("{initial_admin_password}-own"),
            initial_admin_password,
            bastion,
            agent_listener,
            user_ca_keys: String::new(),
            log_path,
            stdout,
            admin_token: tokio::sync::Mutex::new(None),
            child,
            _dir: dir,
        };
        let (status, keys) = server.get_text(None, "/v1/ca/user/keys").await;
        assert_eq!(status, StatusCode::OK, "GET /v1/ca/user/keys: {keys}");
        server.user_ca_keys = keys;
        server
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// The server's log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The server process's id (for `/proc` readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (as systemd stops a service) and waits for the process to exit.
    pub fn terminate(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("cannot run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for portcullisd") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "portcullisd did not exit within {within:?} of SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.data_dir.join("policy")
    }

    /// A client that trusts exactly this server's pinned TLS key.
    pub fn client(&self) -> reqwest::Client {
        client_with_pin(&self.pin)
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Sends a request with an optional bearer token and JSON body; returns the raw
    /// response (for headers and non-JSON bodies).
    pub async fn request(
        &self,
        method: Method,
        token: Option<&str>,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut req = self.client().request(method, self.endpoint(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.unwrap_or_else(|e| panic!("request to {path} failed: {e:?}"))
    }

    pub async fn post_json(&self, token: Option<&str>, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self.request(Method::POST, token, path, Some(body)).await;
        status_and_json(resp).await
    }

    pub async fn put_json(&self, token: Option<&str>, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self.request(Method::PUT, token, path, Some(body)).await;
        status_and_json(resp).await
    }

    pub async fn get_json(&self, token: Option<&str>, path: &str) -> (StatusCode, Value) {
        let resp = self.request(Method::GET, token, path, None).await;
        status_and_json(resp).await
    }

    pub async fn get_text(&self, token: Option<&str>, path: &str) -> (StatusCode, String) {
        let resp = self.request(Method::GET, token, path, None).await;
        let status = resp.status();
        (status, resp.text().await.unwrap())
    }

    pub async fn get_bytes(&self, token: Option<&str>, path: &str) -> (StatusCode, Vec<u8>) {
        let resp = self.request(Method::GET, token, path, None).await;
        let status = resp.status();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// Logs in with a password; the response as the API sent it.
    pub async fn try_login(&self, user: &str, password: &str) -> (StatusCode, Value) {
        self.post_json(None, "/v1/auth/login", &json!({ "username": user, "password": password })).await
    }

    /// `GET /v1/auth/whoami` as the holder of `token`.
    pub async fn whoami(&self, token: &str) -> (StatusCode, Value) {
        self.get_json(Some(token), "/v1/auth/whoami").await
    }

    /// Logs in and returns the bearer token; panics unless the login succeeds.
    pub async fn login(&self, user: &str, password: &str) -> String {
        let (status, body) = self.try_login(user, password).await;
        assert_eq!(status, StatusCode::OK, "login as {user} failed: {body}");
        let login: LoginResponse = serde_json::from_value(body).unwrap();
        login.token.expose().to_owned()
    }

    /// The bootstrap administrator's token (logged in once per server: logins count
    /// against the per-address rate limit). The first call uses the one-time password
    /// and chooses [`Server::admin_password`], as an operator does at first sign-in.
    pub async fn admin_token(&self) -> String {
        let mut cached = self.admin_token.lock().await;
        if let Some(token) = cached.as_ref() {
            return token.clone();
        }
        let (status, body) = self
            .post_json(
                None,
                "/v1/auth/login",
                &json!({
                    "username": "admin",
                    "password": self.initial_admin_password,
                    "new_password": self.admin_password,
                }),
            )
            .await;
        // A test's client made the first sign-in already: the chosen password signs in.
        let (status, body) = match status {
            StatusCode::UNAUTHORIZED => self.try_login("admin", &self.admin_password).await,
            _ => (status, body),
        };
        assert_eq!(status, StatusCode::OK, "the first administrator's sign-in failed: {body}");
        let token = serde_json::from_value::<LoginResponse>(body).unwrap().token.expose().to_owned();
        *cached = Some(token.clone());
        token
    }

    /// `admin`'s own password (chosen at the first sign-in, which this makes happen).
    pub async fn admin_password(&self) -> String {
        self.admin_token().await;
        self.admin_password.clone()
    }

    /// What a test driving a real client through admin's first sign-in chooses.
    pub fn admin_password_to_choose(&self) -> &str {
        &self.admin_password
    }

    /// Creates a local user through the admin API; panics unless it succeeds.
    pub async fn add_user(&self, admin_token: &str, name: &str, groups: &[&str], password: &str) {
        let (status, body) = self
            .post_json(
                Some(admin_token),
                "/v1/admin/users",
                &json!({ "username": name, "groups": groups, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "adding user {name} failed: {body}");
    }

    /// Writes `<data-dir>/policy/<name>` and asks the server to reload; returns the
    /// reload's response (a refused policy is a 400, not a panic).
    pub async fn write_policy(&self, name: &str, toml: &str) -> (StatusCode, Value) {
        std::fs::write(self.policy_dir().join(name), toml).unwrap();
        let token = self.admin_token().await;
        self.post_json(Some(&token), "/v1/admin/policy/reload", &json!({})).await
    }

    /// Registers (or updates) a node in the inventory; panics unless it succeeds.
    pub async fn add_node(&self, admin_token: &str, node: &NodeRecord) {
        let (status, body) =
            self.post_json(Some(admin_token), "/v1/admin/nodes", &serde_json::to_value(node).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "adding node {} failed: {body}", node.name);
    }

    /// Changes what `update` names of an existing node; panics unless it succeeds.
    pub async fn update_node(&self, admin_token: &str, name: &str, update: &portcullis_proto::NodeUpdate) {
        let (status, body) = self
            .put_json(Some(admin_token), &format!("/v1/admin/nodes/{name}"), &serde_json::to_value(update).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK, "updating node {name} failed: {body}");
    }

    /// Requests a user certificate for an OpenSSH public key line.
    pub async fn issue_cert(&self, token: &str, public_key: &str) -> (StatusCode, Value) {
        self.post_json(Some(token), "/v1/certs/user", &json!({ "public_key": public_key })).await
    }

    /// The whole audit log, oldest first, read as the administrator.
    pub async fn audit(&self) -> Vec<AuditRecord> {
        let token = self.admin_token().await;
        let (server, token) = (self, &token);
        read_audit(move |path| async move { server.get_json(Some(token), &path).await }).await
    }

    /// Audit records of one event type.
    /// `GET /metrics` from the metrics listener the server printed at start (started with
    /// `--metrics-listen 127.0.0.1:0`).
    pub async fn metrics(&self) -> String {
        let url = {
            let lines = self.stdout.lock().unwrap();
            let line = lines.iter().find_map(|l| l.strip_prefix("Metrics on ")).expect("no metrics listener");
            line.trim().to_owned()
        };
        let resp = reqwest::get(&url).await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp.text().await.unwrap()
    }

    /// The bastion host key fingerprint the server printed at start (`SHA256:…`).
    pub fn bastion_fingerprint(&self) -> String {
        let lines = self.stdout.lock().unwrap();
        let line = lines.iter().find_map(|l| l.strip_prefix("Bastion host key: ")).expect("no bastion host key line");
        line.trim().to_owned()
    }

    pub async fn audit_events(&self, event: &str) -> Vec<AuditRecord> {
        self.audit().await.into_iter().filter(|r| r.event == event).collect()
    }

    /// The first `event` record that `matches`, waiting up to 10 s for it: a close is
    /// reported to the CA after the client has already seen its connection end, so a
    /// test that reads the trail right after the client exits must wait for it.
    pub async fn await_audit(&self, event: &str, matches: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
        self.await_audit_within(Duration::from_secs(10), event, matches).await
    }

    /// [`Server::await_audit`] with a deadline of its own (periodic work, e.g. collection
    /// runs every few seconds).
    pub async fn await_audit_within(
        &self,
        within: Duration,
        event: &str,
        matches: impl Fn(&AuditRecord) -> bool,
    ) -> AuditRecord {
        let deadline = Instant::now() + within;
        loop {
            let records = self.audit_events(event).await;
            if let Some(found) = records.iter().find(|r| matches(r)) {
                return found.clone();
            }
            assert!(Instant::now() < deadline, "no matching {event} record within {within:?}: {records:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server with SIGTERM (then SIGKILL after a grace period).
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- portcullisd stdout ---\n{}\n--- portcullisd stderr ---\n{}", self.stdout(), self.log());
        }
    }
}

/// The whole audit trail, oldest first, page by page through `GET /v1/admin/audit`;
/// `get(path)` asks one CA (with an administrator's credential) and answers its JSON.
pub async fn read_audit<F, Fut>(get: F) -> Vec<AuditRecord>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    let mut all: Vec<AuditRecord> = Vec::new();
    loop {
        let after = all.last().map_or(0, |r| r.seq);
        let (status, body) = get(format!("/v1/admin/audit?after={after}&limit=1000")).await;
        assert_eq!(status, StatusCode::OK, "reading the audit log: {body}");
        let page: Vec<AuditRecord> = serde_json::from_value(body).unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// A reqwest client that accepts only the server whose TLS public key matches `pin`.
pub fn client_with_pin(pin: &str) -> reqwest::Client {
    let tls = portcullis_proto::pin::pinned_client_config(pin).expect("malformed pin");
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(60)).build().unwrap()
}

/// A pinned client whose connections come from `local` (any 127.0.0.0/8 address reaches
/// a server on 127.0.0.1): a second "machine" for per-address limits.
pub fn client_from(pin: &str, local: std::net::IpAddr) -> reqwest::Client {
    let tls = portcullis_proto::pin::pinned_client_config(pin).expect("malformed pin");
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .local_address(local)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub async fn status_and_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"))
    };
    (status, value)
}

/// Reads start-up lines until the URL, the pin, and the final `Log in:` hint (printed
/// after the initial admin password file is written).
type Banner = (String, String, std::net::SocketAddr, std::net::SocketAddr);

fn wait_for_banner(rx: &Receiver<String>) -> Result<Banner, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let (mut url, mut pin, mut bastion, mut agents) = (None, None, None, None);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("no banner within {START_TIMEOUT:?}"));
            }
            Err(RecvTimeoutError::Disconnected) => return Err("it exited".into()),
        };
        if let Some(rest) = line.strip_prefix("Portcullis CA listening on ") {
            url = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("TLS public-key pin: ") {
            pin = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Bastion listening on ") {
            bastion = rest.split(':').take(2).collect::<Vec<_>>().join(":").parse().ok();
        } else if let Some(rest) = line.strip_prefix("Edge agents connect to ") {
            agents = rest.trim().parse().ok();
        } else if line.starts_with("Log in:") {
            return match (url, pin, bastion, agents) {
                (Some(url), Some(pin), Some(bastion), Some(agents)) => Ok((url, pin, bastion, agents)),
                _ => Err("banner lacks the URL, the pin or the bastion address".into()),
            };
        }
    }
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
