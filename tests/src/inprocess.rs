//! The CA as a library, in the test's own process: for storage conformance (the same
//! calls against SQLite and PostgreSQL) and for signing at a chosen time with an
//! injected [`portcullis_ca::ManualClock`].

use portcullis_ca::{Ca, CaConfig, Clock};
use secrecy::SecretString;
use std::path::Path;
use std::sync::Arc;

/// Encrypts the CA keys of in-process test CAs. Fixed and public: test keys only.
pub const TEST_PASSPHRASE: &str = "portcullis-test-passphrase-not-secret";

/// Opens a CA on `db_url` with the policy files in `policy_dir`, telling time by `clock`.
pub async fn ca_in_process(db_url: &str, policy_dir: &Path, clock: impl Clock) -> anyhow::Result<Ca> {
    let config = CaConfig::new(db_url.to_owned(), policy_dir.to_owned(), SecretString::from(TEST_PASSPHRASE));
    Ok(Ca::open(config, Arc::new(clock)).await?)
}

/// `sqlite://<dir>/portcullis.db`, created on first open.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("portcullis.db").display())
}

/// A running server's own CA, opened in-process on the same database (with the server's
/// passphrase), so a test can choose the clock or reach the CA keys.
pub async fn same_ca(server: &crate::Server, clock: Arc<dyn Clock>) -> Ca {
    let passphrase = std::fs::read_to_string(server.data_dir.join("ca-passphrase")).unwrap();
    let config = CaConfig::new(
        sqlite_url(&server.data_dir),
        server.policy_dir(),
        SecretString::from(passphrase.trim().to_owned()),
    );
    Ca::open(config, clock).await.unwrap()
}

/// An in-process CA served over TLS by the CA's own router and server loop on
/// `127.0.0.1:0`: the HTTP API exactly as `portcullisd` serves it, but with the test's
/// clock (lease expiry, certificate lifetimes) and without building or starting the
/// binary. Several of these on one PostgreSQL database stand for CA replicas.
pub struct ServedCa {
    pub ca: Arc<Ca>,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub pin: String,
    client: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl ServedCa {
    pub async fn start(ca: Arc<Ca>) -> ServedCa {
        let dir = tempfile::Builder::new().prefix("portcullis-served-").tempdir().unwrap();
        let tls =
            portcullis_ca::tls::bootstrap_tls(dir.path(), &["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let app = portcullis_ca::api::router(Arc::clone(&ca));
        tokio::spawn(portcullis_ca::server::serve(listener, tls.config, app, Default::default(), async move {
            let _ = stop.await;
        }));
        ServedCa {
            ca,
            client: crate::server::client_with_pin(&tls.pin),
            url,
            pin: tls.pin,
            _shutdown: shutdown,
            _dir: dir,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("request to {path} failed: {e:?}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"))
        };
        (status, value)
    }

    pub async fn post_json(
        &self,
        token: Option<&str>,
        path: &str,
        body: &serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::POST, token, path, Some(body)).await
    }

    pub async fn get_json(&self, token: Option<&str>, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::GET, token, path, None).await
    }
}

/// What [`first_admin`] chooses as the first administrator's own password.
pub const FIRST_ADMIN_PASSWORD: &str = "first-admin-own-password";

/// Creates the first administrator (`admin` in `group`) and signs in as an operator
/// does the first time: with the one-time password, choosing [`FIRST_ADMIN_PASSWORD`].
/// The API token.
/// Registers bastion `b1` (a fresh key, agents told to dial `127.0.0.1:2223`) with an
/// in-process CA: its API token.
pub async fn bastion_b1(ca: &Ca) -> String {
    let key = crate::ssh::public_line(&crate::ssh::ed25519_key());
    let kind = portcullis_proto::bastion::ServiceKind::Bastion;
    let registered = ca.services().register_service(kind, "b1", &key, Some("127.0.0.1:2223")).await.unwrap();
    registered.api_token.expose().to_owned()
}

pub async fn first_admin(ca: &Ca, group: &str, client_ip: &str) -> String {
    let one_time =
        ca.identity().bootstrap_admin("admin", group).await.unwrap().expect("a first start creates the admin");
    let own = SecretString::from(FIRST_ADMIN_PASSWORD);
    ca.identity()
        .login_replacing_password("admin", None, &one_time, &own, client_ip)
        .await
        .unwrap()
        .token
        .expose()
        .to_owned()
}

/// The payloads of every audit record of `event` in `ca`'s store, oldest first.
pub async fn audit_payloads(ca: &Ca, event: &str) -> Vec<serde_json::Value> {
    ca.core()
        .store()
        .audit_records(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == event)
        .map(|r| serde_json::from_str(&r.payload).unwrap())
        .collect()
}

/// Checks `cert` as a node would, against `ca`'s trusted user keys (and `krl`), at a
/// minute into its validity: how backup, restore and upgrade tests show that a
/// certificate issued before still validates after.
pub fn validates_against(
    ca: &Ca,
    cert: &ssh_key::Certificate,
    krl: Option<&portcullis_sshcert::Krl>,
) -> Result<(), portcullis_sshcert::Rejection> {
    let trusted: Vec<ssh_key::public::KeyData> = ca
        .core()
        .trusted_keys(portcullis_ca::keys::KeyPurpose::User)
        .lines()
        .map(|l| ssh_key::PublicKey::from_openssh(l).unwrap().key_data().clone())
        .collect();
    let principals: Vec<&str> = cert.valid_principals().iter().map(String::as_str).collect();
    let ctx = portcullis_sshcert::CheckContext {
        trusted_cas: &trusted,
        now_unix: cert.valid_after() + 60,
        max_clock_skew_secs: 60,
        acceptable_principals: &principals,
        client_ip: "127.0.0.1".parse().unwrap(),
        krl,
    };
    portcullis_sshcert::check_user_certificate(cert, &ctx).map(drop)
}
