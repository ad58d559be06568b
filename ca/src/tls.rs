//! TLS for the API: an operator's certificate, or a bootstrap certificate generated once
//! with rcgen and kept in the data directory, whose public-key pin clients check. The
//! files are read again on `systemctl reload` (SIGHUP) and when they change on disk (a
//! renewal by certbot or cert-manager needs no hook): a renewed certificate is served
//! from the next handshake without a restart. Bastions and agents pin the key, so renew
//! with the same key (e.g. certbot `--reuse-key`) or give them the new pin first.

use crate::error::CaError;
use portcullis_proto::pin::pin_of_certificate;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    /// `SHA256:<base64>` of the served certificate's public key.
    pub pin: String,
    /// Re-reads the certificate and key files into the running server.
    pub reloader: CertReloader,
}

/// The certificate the server presents, swappable while it runs (a renewed certificate
/// takes effect at the next handshake; connections already open keep theirs).
#[derive(Debug)]
struct Presented(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner())))
    }
}

/// Where the served certificate comes from, to read it again (`systemctl reload`, or a
/// change on disk), and what is served now.
#[derive(Debug, Clone)]
pub struct CertReloader {
    cert: PathBuf,
    key: PathBuf,
    presented: Arc<Presented>,
    /// The pin served, and the files' stamp when last looked at.
    served: Arc<Mutex<(String, Option<FilesStamp>)>>,
}

/// Modification time and length of the certificate and key files: what tells a renewal
/// on disk without reading (or parsing) the files every few seconds.
type FilesStamp = [(std::time::SystemTime, u64); 2];

/// A reload that worked: the pin now served, and whether it changed (a new key, which
/// pinned clients refuse until given the new pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub pin: String,
    pub new_key: bool,
}

impl CertReloader {
    fn new(cert: &Path, key: &Path, presented: Arc<Presented>, pin: String) -> CertReloader {
        let stamp = stamp(cert, key);
        let (cert, key) = (cert.to_owned(), key.to_owned());
        CertReloader { cert, key, presented, served: Arc::new(Mutex::new((pin, stamp))) }
    }

    /// Reads the files again and serves them from the next handshake on. A file that
    /// does not load (half-written, wrong key) changes nothing.
    pub fn reload(&self) -> Result<Reloaded, CaError> {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served.1 = stamp(&self.cert, &self.key);
        let (certified, pin) = load(&self.cert, &self.key)?;
        *self.presented.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        let new_key = pin != served.0;
        served.0 = pin.clone();
        Ok(Reloaded { pin, new_key })
    }

    /// [`CertReloader::reload`] when either file changed since the last look (`None`:
    /// unchanged). A renewal written in two steps fails to load between them (the key
    /// does not match) and loads at the next look, after the second write.
    pub fn reload_if_changed(&self) -> Option<Result<Reloaded, CaError>> {
        let now = stamp(&self.cert, &self.key);
        let unchanged = self.served.lock().unwrap_or_else(|e| e.into_inner()).1 == now;
        (!unchanged).then(|| self.reload())
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<FilesStamp> {
    let one = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.modified()?, m.len()))).ok();
    Some([one(cert)?, one(key)?])
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The chain and key from PEM files, checked to belong together; and the leaf's pin.
fn load(cert: &Path, key: &Path) -> Result<(CertifiedKey, String), CaError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| CaError::Config(format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::Config(format!("bad PEM in {}: {e}", cert.display())))?;
    let leaf = chain.first().ok_or_else(|| CaError::Config(format!("no certificate in {}", cert.display())))?;
    let pin = pin_of_certificate(leaf).ok_or_else(|| CaError::Config("TLS certificate does not parse".into()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| CaError::Config(format!("cannot read {}: {e}", key.display())))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| CaError::Config(format!("TLS certificate/key: {e}")))?;
    Ok((certified, pin))
}

/// Loads an operator-supplied PEM certificate chain and private key.
pub fn operator_tls(cert: &Path, key: &Path) -> Result<TlsMaterial, CaError> {
    let (certified, pin) = load(cert, key)?;
    let presented = Arc::new(Presented(RwLock::new(Arc::new(certified))));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&presented) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let reloader = CertReloader::new(cert, key, presented, pin.clone());
    Ok(TlsMaterial { config: Arc::new(config), pin, reloader })
}

/// Loads the bootstrap certificate from `dir`, generating it on first use.
pub fn bootstrap_tls(dir: &Path, names: &[String]) -> Result<TlsMaterial, CaError> {
    let cert_path = dir.join("bootstrap-cert.pem");
    let key_path = dir.join("bootstrap-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let key = rcgen::KeyPair::generate().map_err(|e| CaError::Internal(format!("TLS key: {e}")))?;
        let mut params =
            rcgen::CertificateParams::new(names.to_vec()).map_err(|e| CaError::Config(format!("TLS names: {e}")))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "Portcullis CA bootstrap");
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let cert = params.self_signed(&key).map_err(|e| CaError::Internal(format!("TLS certificate: {e}")))?;
        crate::fsutil::write_private(&key_path, key.serialize_pem().as_bytes())?;
        crate::fsutil::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    }
    operator_tls(&cert_path, &key_path)
}
