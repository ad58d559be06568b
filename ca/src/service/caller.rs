//! Who is calling the API: an authenticated [`Caller`] and the tokens that name API
//! sessions (random, stored only as hashes) and protect browser requests (CSRF). A leaf:
//! every service may name a caller without depending on how one signs in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_policies::Identity;
use portcullis_sshcert::random_bytes;
use sha2::{Digest, Sha256};

/// An authenticated API caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub expires_at: u64,
    /// When the user proved who they are for this API session (step-up checks it).
    pub authenticated_at: u64,
    /// The identity provider stated no groups for this session (see
    /// `SessionRow::groups_unknown`); certificates issued under it carry that on.
    pub groups_unknown: bool,
    pub(super) token_hash: String,
    /// Set when the caller came with the session cookie (a browser): the token its
    /// state-changing requests must carry.
    pub(super) csrf_token: Option<String>,
}

/// A name for an API session that audit records may carry (the seed's "user session
/// ID"): derived from the token's hash, so it links a sign-in, its console tickets and
/// their sessions, yet neither is nor leads back to anything that authenticates.
pub(crate) fn session_ref(token_hash: &str) -> String {
    let digest = Sha256::digest(format!("portcullis-session-ref\0{token_hash}"));
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Caller {
    /// This caller's API session, as audit records name it ([`session_ref`]).
    pub(crate) fn session_ref(&self) -> String {
        session_ref(&self.token_hash)
    }

    /// The CSRF token of a cookie-authenticated caller (for server-rendered pages).
    pub fn csrf_token(&self) -> Option<&str> {
        self.csrf_token.as_deref()
    }

    /// The hash of the caller's API session token (what the store keys sessions by).
    pub(crate) fn token_hash(&self) -> &str {
        &self.token_hash
    }

    pub(crate) fn with_csrf_token(mut self, token: String) -> Caller {
        self.csrf_token = Some(token);
        self
    }
}

/// The CSRF token of a browser session: base64url(SHA-256("portcullis-csrf-v1\0" ||
/// session token)). Derived rather than stored, so every replica computes the same one
/// without a write; knowing it without the (HttpOnly) cookie is worth nothing, and it
/// cannot be turned back into the session token.
pub fn csrf_token_for(session_token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis-csrf-v1\0");
    h.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Whether `presented` is the CSRF token of `session_token`, compared in constant time.
pub fn csrf_token_matches(session_token: &str, presented: &str) -> bool {
    let expected = csrf_token_for(session_token);
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 256 random bits, URL-safe, with a prefix that makes leaked tokens easy to grep for.
pub(crate) fn random_token(prefix: &str) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens() {
        let t = csrf_token_for("pcs_a");
        assert_eq!(t.len(), 43);
        assert_ne!(t, csrf_token_for("pcs_b"));
        assert!(csrf_token_matches("pcs_a", &t));
        assert!(!csrf_token_matches("pcs_b", &t));
        assert!(!csrf_token_matches("pcs_a", ""));
        assert!(!csrf_token_matches("pcs_a", &t[..42]));
    }
}
