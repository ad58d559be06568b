//! The CA's signing keys: three purposes, several trusted keys each, one signing.
//!
//! Key lifecycle per purpose: `pending` (published and trusted, not yet signing — so
//! nodes learn it before any certificate depends on it) → `active` (signs) → `previous`
//! (still trusted, for certificates it signed) → `retired` (no longer trusted).
//! Private keys live in the database only in OpenSSH's encrypted format; decrypted
//! copies exist only in memory for the active keys and are zeroized on drop by ssh-key.

use crate::error::CaError;
use crate::store::{CaKeyRow, Store};
use portcullis_sshcert::fingerprint;
use secrecy::{ExposeSecret, SecretString};
use ssh_key::getrandom::SysRng;
use ssh_key::rand_core::UnwrapErr;
use ssh_key::{Algorithm, EcdsaCurve, LineEnding, PrivateKey, PublicKey};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPurpose {
    User,
    Host,
    Internal,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 3] = [KeyPurpose::User, KeyPurpose::Host, KeyPurpose::Internal];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::User => "user",
            KeyPurpose::Host => "host",
            KeyPurpose::Internal => "internal",
        }
    }
}

impl FromStr for KeyPurpose {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self, CaError> {
        KeyPurpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| CaError::BadRequest("purpose must be user, host or internal".into()))
    }
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    #[default]
    Ed25519,
    EcdsaP256,
}

impl FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            "ecdsa-p256" | "p256" => Ok(KeyAlgorithm::EcdsaP256),
            _ => Err("key algorithm must be ed25519 or ecdsa-p256".into()),
        }
    }
}

pub mod state {
    pub const PENDING: &str = "pending";
    pub const ACTIVE: &str = "active";
    pub const PREVIOUS: &str = "previous";
    pub const RETIRED: &str = "retired";
}

/// The signing key of one purpose, decrypted.
pub struct Signer {
    pub key: PrivateKey,
    pub fingerprint: String,
}

/// A snapshot of all CA keys; replaced whole after a rotation.
pub struct Keyring {
    signers: BTreeMap<KeyPurpose, Arc<Signer>>,
    rows: Vec<CaKeyRow>,
}

impl Keyring {
    /// Decrypts the active key of every purpose. bcrypt-pbkdf is deliberately slow, so
    /// this runs on a blocking thread.
    pub async fn load(store: &Store, passphrase: &SecretString) -> Result<Keyring, CaError> {
        let rows = store.ca_keys().await?;
        let pass = passphrase.clone();
        let active: Vec<CaKeyRow> = rows.iter().filter(|r| r.state == state::ACTIVE).cloned().collect();
        let signers = tokio::task::spawn_blocking(move || -> Result<_, CaError> {
            let mut signers = BTreeMap::new();
            for row in active {
                let purpose = KeyPurpose::from_str(&row.purpose)?;
                let encrypted = PrivateKey::from_openssh(&row.encrypted_key)
                    .map_err(|_| CaError::Config("a stored CA key is unreadable".into()))?;
                let key = encrypted
                    .decrypt(pass.expose_secret().as_bytes())
                    .map_err(|_| CaError::Config("the CA passphrase does not decrypt the stored CA keys".into()))?;
                signers.insert(purpose, Arc::new(Signer { key, fingerprint: row.fingerprint.clone() }));
            }
            Ok(signers)
        })
        .await
        .map_err(|_| CaError::Internal("key loading task failed".into()))??;
        Ok(Keyring { signers, rows: rows.into_iter().map(strip_private).collect() })
    }

    pub fn signer(&self, purpose: KeyPurpose) -> Option<Arc<Signer>> {
        self.signers.get(&purpose).cloned()
    }

    /// Public keys that verifiers must trust now: pending, active and previous.
    pub fn trusted(&self, purpose: KeyPurpose) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.purpose == purpose.as_str() && r.state != state::RETIRED)
            .map(|r| r.public_key.as_str())
            .collect()
    }

    pub fn rows(&self) -> &[CaKeyRow] {
        &self.rows
    }

    pub fn has_active(&self, purpose: KeyPurpose) -> bool {
        self.signers.contains_key(&purpose)
    }
}

fn strip_private(mut row: CaKeyRow) -> CaKeyRow {
    row.encrypted_key.clear();
    row
}

/// Generates a new CA key and returns its row (private part encrypted).
pub async fn generate(
    purpose: KeyPurpose,
    algorithm: KeyAlgorithm,
    passphrase: &SecretString,
    key_state: &str,
    now: u64,
) -> Result<CaKeyRow, CaError> {
    let pass = passphrase.clone();
    let key_state = key_state.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut rng = UnwrapErr(SysRng);
        let alg = match algorithm {
            KeyAlgorithm::Ed25519 => Algorithm::Ed25519,
            KeyAlgorithm::EcdsaP256 => Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
        };
        let mut key = PrivateKey::random(&mut rng, alg.clone())
            .map_err(|_| CaError::Internal("CA key generation failed".into()))?;
        key.set_comment(format!("portcullis {purpose} CA"));
        let public: PublicKey = key.public_key().clone();
        let encrypted = key
            .encrypt(&mut rng, pass.expose_secret().as_bytes())
            .map_err(|_| CaError::Internal("CA key encryption failed".into()))?;
        let encrypted_key = encrypted
            .to_openssh(LineEnding::LF)
            .map_err(|_| CaError::Internal("CA key encoding failed".into()))?
            .to_string();
        Ok(CaKeyRow {
            fingerprint: fingerprint(public.key_data()),
            purpose: purpose.as_str().to_owned(),
            state: key_state,
            algorithm: alg.as_str().to_owned(),
            public_key: public.to_openssh().map_err(|_| CaError::Internal("CA key encoding failed".into()))?,
            encrypted_key,
            created_at: now,
        })
    })
    .await
    .map_err(|_| CaError::Internal("key generation task failed".into()))?
}
