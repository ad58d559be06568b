//! A stand-in CA speaking the enrollment wire contract (`proto::enroll`) over pinned TLS,
//! with knobs the real CA does not have: tokens that are expired or used up, a refresh
//! endpoint that fails on demand, principals that change between calls. It lets the
//! enrollment fault matrix run independently of the CA's own implementation; the
//! real-CA test in `tests/tests/enroll.rs` covers the contract end to end.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use portcullis_proto::ApiError;
use portcullis_proto::enroll::{EnrollRequest, EnrollResponse, NodeBundle, NodeFacts, NodeProof};
use portcullis_sshcert::KrlBuilder;
use serde_json::{Value, json};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey, SshSig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub const GOOD_TOKEN: &str = "pce_good_token_for_tests";
pub const EXPIRED_TOKEN: &str = "pce_expired_token";
pub const VERIFY_LOGIN: &str = "root";

pub struct FakeCaState {
    pub user_ca: PrivateKey,
    pub host_ca: PrivateKey,
    /// Uses left of GOOD_TOKEN.
    pub uses_left: u32,
    /// Principals per login handed to every node.
    pub principals: BTreeMap<String, Vec<String>>,
    /// Registered nodes → host public keys.
    pub nodes: BTreeMap<String, Vec<String>>,
    /// When set, refresh answers 503.
    pub fail_refresh: bool,
    /// When set, deregistration answers 503.
    pub fail_deregister: bool,
    /// When set, the verification certificate is signed by a key nodes do not trust.
    pub bad_verification_cert: bool,
    pub krl: Vec<u8>,
    pub deregistered: Vec<String>,
    /// The facts each node sent with its enrollment, as received.
    pub facts: BTreeMap<String, NodeFacts>,
}

pub struct FakeCa {
    pub url: String,
    pub pin: String,
    pub state: Arc<Mutex<FakeCaState>>,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

fn rng() -> ssh_key::rand_core::UnwrapErr<ssh_key::getrandom::SysRng> {
    ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng)
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn empty_krl() -> Vec<u8> {
    KrlBuilder::new(1, now(), "").encode()
}

fn err(status: StatusCode, code: &str, msg: &str) -> (StatusCode, Json<Value>) {
    (status, Json(serde_json::to_value(ApiError { error: code.into(), message: msg.into() }).unwrap()))
}

fn sign_user(ca: &PrivateKey, key: &PublicKey, principal: &str) -> String {
    let n = now();
    let mut b = Builder::new([7u8; 32], key.key_data().clone(), n - 60, n + 120).unwrap();
    b.serial(1).unwrap();
    b.key_id("verification").unwrap();
    b.cert_type(CertType::User).unwrap();
    b.valid_principal(principal).unwrap();
    b.critical_option("force-command", "true").unwrap();
    b.critical_option("source-address", "127.0.0.0/8,::1").unwrap();
    b.sign(ca).unwrap().to_openssh().unwrap()
}

/// A user certificate for `key` with `principals`, signed by the fake user CA.
pub fn user_cert(ca: &PrivateKey, key: &PublicKey, principals: &[&str]) -> String {
    let n = now();
    let mut b = Builder::new([9u8; 32], key.key_data().clone(), n - 60, n + 3600).unwrap();
    b.serial(2).unwrap();
    b.key_id("user").unwrap();
    b.cert_type(CertType::User).unwrap();
    for p in principals {
        b.valid_principal(*p).unwrap();
    }
    b.extension("permit-pty", "").unwrap();
    b.sign(ca).unwrap().to_openssh().unwrap()
}

fn host_cert(ca: &PrivateKey, key_line: &str, node: &str) -> String {
    let key = PublicKey::from_openssh(key_line).unwrap();
    let n = now();
    let mut b = Builder::new([8u8; 32], key.key_data().clone(), n - 60, n + 30 * 86400).unwrap();
    b.serial(3).unwrap();
    b.key_id(format!("host:{node}")).unwrap();
    b.cert_type(CertType::Host).unwrap();
    for p in [node, "127.0.0.1", "localhost"] {
        b.valid_principal(p).unwrap();
    }
    b.sign(ca).unwrap().to_openssh().unwrap()
}

fn bundle(s: &FakeCaState, node: &str, host_keys: &[String]) -> NodeBundle {
    use base64::Engine;
    NodeBundle {
        node: node.into(),
        trusted_user_ca_keys: format!("{}\n", s.user_ca.public_key().to_openssh().unwrap()),
        principals: s.principals.clone(),
        // Lines without options: how a CA from before `principal_lines` answers.
        principal_lines: Default::default(),
        krl_base64: base64::engine::general_purpose::STANDARD.encode(&s.krl),
        host_certificates: host_keys.iter().map(|k| host_cert(&s.host_ca, k, node)).collect(),
        trusted_host_ca_keys: format!("{}\n", s.host_ca.public_key().to_openssh().unwrap()),
    }
}

type Shared = Arc<Mutex<FakeCaState>>;

async fn enroll(
    State(s): State<Shared>,
    headers: HeaderMap,
    Json(req): Json<EnrollRequest>,
) -> (StatusCode, Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").unwrap_or_default();
    let mut st = s.lock().unwrap();
    if token == EXPIRED_TOKEN {
        return err(StatusCode::UNAUTHORIZED, "token_expired", "the enrollment token has expired");
    }
    if token != GOOD_TOKEN {
        return err(StatusCode::UNAUTHORIZED, "bad_token", "unknown enrollment token");
    }
    if st.uses_left == 0 {
        return err(StatusCode::UNAUTHORIZED, "token_used_up", "the enrollment token has no uses left");
    }
    st.uses_left -= 1;
    let key = PublicKey::from_openssh(&req.verification_public_key).unwrap();
    let principal = "pcv_0123456789ab".to_owned();
    let signer = if st.bad_verification_cert {
        PrivateKey::random(&mut rng(), Algorithm::Ed25519).unwrap()
    } else {
        st.user_ca.clone()
    };
    let cert = sign_user(&signer, &key, &principal);
    st.nodes.insert(req.facts.name.clone(), req.facts.host_keys.clone());
    st.facts.insert(req.facts.name.clone(), req.facts.clone());
    let resp = EnrollResponse {
        bundle: bundle(&st, &req.facts.name, &req.facts.host_keys),
        verification_certificate: cert,
        verification_principal: principal,
        verification_login: VERIFY_LOGIN.into(),
    };
    (StatusCode::OK, Json(serde_json::to_value(resp).unwrap()))
}

fn check_proof(st: &FakeCaState, p: &NodeProof, action: &str) -> Result<Vec<String>, (StatusCode, Json<Value>)> {
    let Some(keys) = st.nodes.get(&p.node) else {
        return Err(err(StatusCode::UNAUTHORIZED, "unknown_node", "unknown node"));
    };
    let key = PublicKey::from_openssh(&p.host_public_key).unwrap();
    if !keys.iter().any(|k| PublicKey::from_openssh(k).map(|k| k.key_data() == key.key_data()).unwrap_or(false)) {
        return Err(err(StatusCode::UNAUTHORIZED, "bad_proof", "not a registered host key"));
    }
    let sig = SshSig::from_pem(&p.signature).unwrap();
    let msg = NodeProof::message(&p.node, action, p.timestamp);
    if key.verify(NodeProof::NAMESPACE, msg.as_bytes(), &sig).is_err() || now().abs_diff(p.timestamp) > 300 {
        return Err(err(StatusCode::UNAUTHORIZED, "bad_proof", "bad node proof"));
    }
    Ok(keys.clone())
}

async fn refresh(State(s): State<Shared>, Json(p): Json<NodeProof>) -> (StatusCode, Json<Value>) {
    let st = s.lock().unwrap();
    if st.fail_refresh {
        return err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try later");
    }
    match check_proof(&st, &p, "refresh") {
        Ok(keys) => (StatusCode::OK, Json(serde_json::to_value(bundle(&st, &p.node, &keys)).unwrap())),
        Err(e) => e,
    }
}

async fn deregister(State(s): State<Shared>, Json(p): Json<NodeProof>) -> (StatusCode, Json<Value>) {
    let mut st = s.lock().unwrap();
    if st.fail_deregister {
        return err(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "try later");
    }
    match check_proof(&st, &p, "deregister") {
        Ok(_) => {
            st.nodes.remove(&p.node);
            st.deregistered.push(p.node.clone());
            (StatusCode::OK, Json(json!({})))
        }
        Err(e) => e,
    }
}

impl FakeCa {
    pub async fn start() -> FakeCa {
        let dir = tempfile::tempdir().unwrap();
        let tls = portcullis_ca::tls::bootstrap_tls(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let mut principals = BTreeMap::new();
        principals.insert("root".to_owned(), vec!["pc_admins_root".to_owned()]);
        let state = Arc::new(Mutex::new(FakeCaState {
            user_ca: PrivateKey::random(&mut rng(), Algorithm::Ed25519).unwrap(),
            host_ca: PrivateKey::random(&mut rng(), Algorithm::Ed25519).unwrap(),
            uses_left: 100,
            principals,
            nodes: BTreeMap::new(),
            fail_refresh: false,
            fail_deregister: false,
            bad_verification_cert: false,
            krl: empty_krl(),
            deregistered: Vec::new(),
            facts: BTreeMap::new(),
        }));
        let app = Router::new()
            .route("/v1/enroll", post(enroll))
            .route("/v1/nodes/refresh", post(refresh))
            .route("/v1/nodes/deregister", post(deregister))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(portcullis_ca::server::serve(listener, tls.config, app, Default::default(), async move {
            let _ = rx.await;
        }));
        FakeCa { url, pin: tls.pin, state, _dir: dir, _shutdown: tx }
    }

    pub fn user_ca(&self) -> PrivateKey {
        self.state.lock().unwrap().user_ca.clone()
    }
}

/// Writes a private key (0600).
pub fn write_key(path: &std::path::Path, key: &PrivateKey) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, key.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
