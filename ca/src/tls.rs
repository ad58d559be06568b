//! TLS for the API: an operator's certificate, or a bootstrap certificate generated once
//! with rcgen and kept in the data directory, whose public-key pin clients check.

use crate::error::CaError;
use portcullis_proto::pin::pin_of_certificate;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

pub struct TlsMaterial {
    pub config: Arc<ServerConfig>,
    /// `SHA256:<base64>` of the served certificate's public key.
    pub pin: String,
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, CaError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| CaError::Config(format!("TLS certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads an operator-supplied PEM certificate chain and private key.
pub fn operator_tls(cert: &Path, key: &Path) -> Result<TlsMaterial, CaError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| CaError::Config(format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| CaError::Config(format!("bad PEM in {}: {e}", cert.display())))?;
    let leaf = chain.first().ok_or_else(|| CaError::Config(format!("no certificate in {}", cert.display())))?;
    let pin = pin_of_certificate(leaf).ok_or_else(|| CaError::Config("TLS certificate does not parse".into()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| CaError::Config(format!("cannot read {}: {e}", key.display())))?;
    Ok(TlsMaterial { config: server_config(chain, key)?, pin })
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
