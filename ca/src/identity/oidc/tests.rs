//! ID-token validation against tokens minted here and a JWKS served by an in-process
//! discovery server on 127.0.0.1:0. Each refusal test names the one check it exercises:
//! remove that check and the test fails (a token otherwise valid is then accepted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use axum::Router;
use axum::routing::get;
use openidconnect::core::{CoreEdDsaPrivateSigningKey, CoreHmacKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};

const CLIENT: &str = "portcullis";
const NOW: u64 = 1_750_000_000;

struct Idp {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    jwks_fetches: Arc<AtomicUsize>,
    discovery_body: Arc<Mutex<Option<String>>>,
}

fn ed25519_key(kid: &str) -> CoreEdDsaPrivateSigningKey {
    // PKCS#8 v1 for Ed25519 is a fixed 16-byte prefix and the 32-byte seed.
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(&portcullis_sshcert::random_bytes::<32>());
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, Some(JsonWebKeyId::new(kid.to_owned()))).unwrap()
}

fn jwks_of(keys: &[&CoreEdDsaPrivateSigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| serde_json::to_value(k.as_verification_key()).unwrap()).collect::<Vec<_>>() })
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn mint(key: &CoreEdDsaPrivateSigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({ "alg": "EdDSA", "kid": kid, "typ": "JWT" });
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = key.sign(&CoreJwsSigningAlgorithm::EdDsa, input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&sig))
}

async fn start_idp(jwks: Value) -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks = Arc::new(Mutex::new(jwks));
    let jwks_fetches = Arc::new(AtomicUsize::new(0));
    let discovery_body = Arc::new(Mutex::new(None::<String>));
    let doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "device_authorization_endpoint": format!("{issuer}/device/auth"),
        "jwks_uri": format!("{issuer}/jwks"),
    })
    .to_string();
    let (j, f, d) = (Arc::clone(&jwks), Arc::clone(&jwks_fetches), Arc::clone(&discovery_body));
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let body = d.lock().unwrap().clone().unwrap_or_else(|| doc.clone());
                async move { body }
            }),
        )
        .route(
            "/jwks",
            get(move || {
                f.fetch_add(1, Ordering::SeqCst);
                let body = j.lock().unwrap().to_string();
                async move { body }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Idp { issuer, jwks, jwks_fetches, discovery_body }
}

fn oidc_for(issuer: &str) -> Oidc {
    Oidc::new(OidcConfig::new(issuer.to_owned(), CLIENT.into(), SecretString::from("s3cret"))).unwrap()
}

fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer, "aud": CLIENT, "sub": "u1", "iat": NOW, "exp": NOW + 300,
        "preferred_username": "alice", "email": "alice@example.test", "groups": ["developers", "ops"],
    })
}

struct Fixture {
    idp: Idp,
    oidc: Oidc,
    provider: Arc<Provider>,
    key: CoreEdDsaPrivateSigningKey,
}

async fn fixture() -> Fixture {
    let key = ed25519_key("k1");
    let idp = start_idp(jwks_of(&[&key])).await;
    let oidc = oidc_for(&idp.issuer);
    let provider = oidc.provider().await.unwrap();
    Fixture { idp, oidc, provider, key }
}

impl Fixture {
    async fn verify(&self, token: &str, nonce: Option<&str>) -> Result<OidcIdentity, TokenInvalid> {
        let nonce = nonce.map(|n| Nonce::new(n.to_owned()));
        self.oidc.verify_id_token(&self.provider, token, nonce.as_ref(), NOW).await
    }

    async fn verify_claims(&self, claims: &Value) -> Result<OidcIdentity, TokenInvalid> {
        self.verify(&mint(&self.key, "k1", claims), None).await
    }
}

#[tokio::test]
async fn a_valid_token_gives_username_email_and_groups() {
    let f = fixture().await;
    let who = f.verify_claims(&claims(&f.idp.issuer)).await.unwrap();
    // The account name says where it comes from: never the local `alice`.
    assert_eq!(who.username, "oidc:alice");
    // Held for the IdP's stable subject, not for the name the user may change.
    assert_eq!(who.subject, format!("{} u1", f.idp.issuer));
    assert_eq!(who.email.as_deref(), Some("alice@example.test"));
    assert_eq!(who.groups, vec!["developers", "ops"]);
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    c["iss"] = json!("http://127.0.0.1:1");
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::Issuer);
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    c["aud"] = json!("someone-else");
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::Audience);
    // Our client id among untrusted others is not enough either.
    c["aud"] = json!([CLIENT, "someone-else"]);
    c["azp"] = json!(CLIENT);
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::Audience);
}

#[tokio::test]
async fn another_authorized_party_is_refused() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    c["azp"] = json!("someone-else");
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::AuthorizedParty);
    c["azp"] = json!(CLIENT);
    assert!(f.verify_claims(&c).await.is_ok());
}

#[tokio::test]
async fn expiry_is_checked_with_a_small_skew() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    c["exp"] = json!(NOW - 30); // within the 60 s skew
    assert!(f.verify_claims(&c).await.is_ok());
    c["exp"] = json!(NOW - 61);
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::Expired);
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    c["iat"] = json!(NOW + 30); // within the 60 s skew
    assert!(f.verify_claims(&c).await.is_ok());
    c["iat"] = json!(NOW + 61);
    c["exp"] = json!(NOW + 600);
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::IssuedInFuture);
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let f = fixture().await;
    // Same kid, another key: the signature does not verify against the published key.
    let forger = ed25519_key("k1");
    let token = mint(&forger, "k1", &claims(&f.idp.issuer));
    assert_eq!(f.verify(&token, None).await.unwrap_err(), TokenInvalid::Signature);
    // A flipped payload under a genuine signature.
    let genuine = mint(&f.key, "k1", &claims(&f.idp.issuer));
    let mut parts: Vec<&str> = genuine.split('.').collect();
    let mut evil = claims(&f.idp.issuer);
    evil["groups"] = json!(["portcullis-admins"]);
    let payload = b64(evil.to_string().as_bytes());
    parts[1] = &payload;
    assert_eq!(f.verify(&parts.join("."), None).await.unwrap_err(), TokenInvalid::Signature);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let f = fixture().await;
    let header = b64(json!({ "alg": "none", "typ": "JWT" }).to_string().as_bytes());
    let payload = b64(claims(&f.idp.issuer).to_string().as_bytes());
    for token in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
        assert_eq!(f.verify(&token, None).await.unwrap_err(), TokenInvalid::Algorithm, "{token}");
    }
}

#[tokio::test]
async fn hs256_keyed_with_the_public_key_is_refused() {
    let f = fixture().await;
    // The classic confusion attack: HMAC with the (public) JWK bytes as the secret.
    let public = serde_json::to_vec(&f.key.as_verification_key()).unwrap();
    let hmac = CoreHmacKey::new(public);
    let header = b64(json!({ "alg": "HS256", "kid": "k1" }).to_string().as_bytes());
    let input = format!("{header}.{}", b64(claims(&f.idp.issuer).to_string().as_bytes()));
    let sig = hmac.sign(&CoreJwsSigningAlgorithm::HmacSha256, input.as_bytes()).unwrap();
    let token = format!("{input}.{}", b64(&sig));
    assert_eq!(f.verify(&token, None).await.unwrap_err(), TokenInvalid::Algorithm);
}

#[tokio::test]
async fn a_mismatched_or_missing_nonce_is_refused() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    c["nonce"] = json!("the-nonce-we-sent");
    let token = mint(&f.key, "k1", &c);
    assert!(f.verify(&token, Some("the-nonce-we-sent")).await.is_ok());
    assert_eq!(f.verify(&token, Some("another-nonce")).await.unwrap_err(), TokenInvalid::Nonce);
    let without = mint(&f.key, "k1", &claims(&f.idp.issuer));
    assert_eq!(f.verify(&without, Some("the-nonce-we-sent")).await.unwrap_err(), TokenInvalid::Nonce);
}

#[tokio::test]
async fn unusable_claims_and_oversized_tokens_are_refused() {
    let f = fixture().await;
    let mut c = claims(&f.idp.issuer);
    // One user-name alphabet for every source: refused, not mapped.
    for unusable in ["alice; rm -rf /", "star*", "paren)(", "back\\slash", "zoë", "oidc:alice", ""] {
        c["preferred_username"] = json!(unusable);
        assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::Claims, "{unusable}");
    }
    c["preferred_username"] = json!("alice");
    c["sub"] = json!("");
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::Claims, "no subject, no account");
    c["sub"] = json!("u1");
    // Groups must be a list of names: nothing else is coerced into one.
    for not_a_list in [json!([1, 2]), json!("admins"), json!(5), json!({"a": "b"}), json!(["ok", {"x": 1}])] {
        c["groups"] = not_a_list.clone();
        assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::GroupsClaim, "{not_a_list}");
    }
    c["groups"] = json!(["admins"]);
    assert_eq!(f.verify_claims(&c).await.unwrap().groups, vec!["admins"]);
    c["groups"] = json!(null);
    assert_eq!(f.verify_claims(&c).await.unwrap().groups, Vec::<String>::new());
    // Too many groups to list: the IdP names a source instead (Entra ID's overage).
    c["_claim_names"] = json!({"groups": "src1"});
    c["_claim_sources"] = json!({"src1": {"endpoint": "https://graph.example/v1.0/users/u1/getMemberObjects"}});
    assert_eq!(f.verify_claims(&c).await.unwrap_err(), TokenInvalid::GroupsClaim, "groups elsewhere");
    c["_claim_names"] = json!({"email": "src1"});
    assert_eq!(f.verify_claims(&c).await.unwrap().groups, Vec::<String>::new(), "another claim elsewhere");
    let huge = "a".repeat(MAX_ID_TOKEN_BYTES + 1);
    assert_eq!(f.verify(&huge, None).await.unwrap_err(), TokenInvalid::Malformed);
    assert_eq!(f.verify("not.a.jwt", None).await.unwrap_err(), TokenInvalid::Malformed);
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_jwks_at_once_but_at_most_once_per_minute() {
    let f = fixture().await;
    assert_eq!(f.idp.jwks_fetches.load(Ordering::SeqCst), 1);
    // The IdP rotates to k2; a token signed with k2 arrives.
    let k2 = ed25519_key("k2");
    *f.idp.jwks.lock().unwrap() = jwks_of(&[&f.key, &k2]);
    let c = claims(&f.idp.issuer);
    // Seconds after the discovery fetch: a real rotation is accepted at once.
    let later = NOW + 5;
    let verify_at = |token: String, now: u64| {
        let (oidc, provider) = (&f.oidc, Arc::clone(&f.provider));
        async move { oidc.verify_id_token(&provider, &token, None, now).await }
    };
    assert_eq!(verify_at(mint(&k2, "k2", &c), later).await.unwrap().username, "oidc:alice");
    assert_eq!(f.idp.jwks_fetches.load(Ordering::SeqCst), 2);
    // Another unknown kid within the minute: refused without another fetch.
    let k3 = ed25519_key("k3");
    *f.idp.jwks.lock().unwrap() = jwks_of(&[&f.key, &k2, &k3]);
    assert_eq!(verify_at(mint(&k3, "k3", &c), later + 1).await.unwrap_err(), TokenInvalid::UnknownKey);
    assert_eq!(f.idp.jwks_fetches.load(Ordering::SeqCst), 2);
    // A minute on, the refresh is allowed again.
    assert!(verify_at(mint(&k3, "k3", &c), later + JWKS_REFRESH_INTERVAL).await.is_ok());
    assert_eq!(f.idp.jwks_fetches.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn discovery_that_is_not_json_or_names_another_issuer_is_refused() {
    let key = ed25519_key("k1");
    let idp = start_idp(jwks_of(&[&key])).await;
    *idp.discovery_body.lock().unwrap() = Some("<html>login here</html>".into());
    assert_eq!(oidc_for(&idp.issuer).provider().await.unwrap_err(), TokenError::BadResponse);
    *idp.discovery_body.lock().unwrap() = Some(
        json!({ "issuer": "https://evil.example", "authorization_endpoint": "https://evil.example/a",
                "token_endpoint": "https://evil.example/t", "jwks_uri": "https://evil.example/j" })
        .to_string(),
    );
    assert_eq!(oidc_for(&idp.issuer).provider().await.unwrap_err(), TokenError::BadResponse);
}

#[test]
fn configuration_is_checked() {
    let cfg = |issuer: &str| OidcConfig::new(issuer.into(), CLIENT.into(), SecretString::from("s"));
    assert!(Oidc::new(cfg("https://idp.example.com")).is_ok());
    assert!(Oidc::new(cfg("http://127.0.0.1:8080")).is_ok());
    assert!(Oidc::new(cfg("http://idp.example.com")).is_err(), "plain http only for loopback");
    for bad in ["HS256", "none"] {
        let mut c = cfg("https://idp.example.com");
        c.allowed_algs = vec![bad.into()];
        assert!(Oidc::new(c).is_err(), "{bad} must not be configurable");
    }
    let mut c = cfg("https://idp.example.com");
    c.scopes = vec!["profile".into()];
    assert!(Oidc::new(c).is_err(), "openid scope required");
}

#[test]
fn a_browser_returns_to_the_callback_of_the_origin_it_signed_in_at() {
    let with = |urls: &[&str]| {
        let mut config = OidcConfig::new("https://idp.example".into(), CLIENT.into(), SecretString::from("s3cret"));
        config.redirect_urls = urls.iter().map(|u| (*u).to_owned()).collect();
        Oidc::new(config)
    };
    let none = with(&[]).unwrap();
    assert_eq!(none.redirect_url_for(Some("ca.example")), Err(RedirectMissing::NoBrowserFlow));
    // One URL: it, whatever host a proxy presents.
    let one = with(&["https://ca.example:8443/v1/auth/oidc/callback"]).unwrap();
    assert_eq!(
        one.redirect_url_for(Some("10.0.0.5:8443")).map(Url::as_str),
        Ok("https://ca.example:8443/v1/auth/oidc/callback")
    );
    // Several: the one at the browser's origin, port included (default port left out).
    let doors =
        with(&["https://b1.example:8443/v1/auth/oidc/callback", "https://b2.example/v1/auth/oidc/callback"]).unwrap();
    let pick = |host| doors.redirect_url_for(host).map(|u| u.host_str().unwrap_or_default().to_owned());
    assert_eq!(pick(Some("b1.example:8443")), Ok("b1.example".to_owned()));
    assert_eq!(pick(Some("B2.EXAMPLE")), Ok("b2.example".to_owned()));
    assert_eq!(pick(Some("b1.example")), Err(RedirectMissing::UnknownOrigin), "another port is another origin");
    assert_eq!(pick(Some("evil.example")), Err(RedirectMissing::UnknownOrigin));
    assert_eq!(pick(None), Err(RedirectMissing::UnknownOrigin));
    // Only https:// URLs with a host.
    assert!(with(&["http://b1.example/v1/auth/oidc/callback"]).is_err());
    assert!(with(&["not a url"]).is_err());
}
