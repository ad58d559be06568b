//! TLS public-key pins: `SHA256:<base64>` of a certificate's SubjectPublicKeyInfo.
//!
//! Pinning the public key rather than the whole certificate means a renewed bootstrap
//! certificate with the same key keeps working, and the same value is what
//! `curl --pinnedpubkey sha256//<base64>` checks, so the enrollment one-liner and the
//! CLI share one fingerprint.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};

/// `SHA256:<base64 without padding>` of DER-encoded SubjectPublicKeyInfo.
pub fn pin_of_spki(spki_der: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(spki_der)))
}

/// The pin of an X.509 certificate's public key, or `None` if it does not parse.
pub fn pin_of_certificate(cert_der: &[u8]) -> Option<String> {
    let der = rustls_pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(pin_of_spki(cert.subject_public_key_info().as_ref()))
}

/// Accepts `SHA256:<b64>`, `sha256//<b64>` (curl's form) and padded base64; returns the
/// canonical `SHA256:` form.
pub fn normalize_pin(pin: &str) -> Option<String> {
    let b64 = pin.trim().strip_prefix("SHA256:").or_else(|| pin.trim().strip_prefix("sha256//"))?;
    let bytes = STANDARD_NO_PAD.decode(b64.trim_end_matches('=')).ok()?;
    (bytes.len() == 32).then(|| format!("SHA256:{}", STANDARD_NO_PAD.encode(bytes)))
}

/// SHA-256 of a certificate's DER as lowercase hex (PVE's certificate fingerprint).
pub fn hex_sha256(cert_der: &[u8]) -> String {
    Sha256::digest(cert_der).iter().map(|b| format!("{b:02x}")).collect()
}

/// curl's `--pinnedpubkey` argument for the same key.
pub fn curl_pin(pin: &str) -> Option<String> {
    let canonical = normalize_pin(pin)?;
    let b64 = canonical.strip_prefix("SHA256:")?;
    let padded = format!("{b64}{}", "=".repeat((4 - b64.len() % 4) % 4));
    Some(format!("sha256//{padded}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_both_forms() {
        let pin = pin_of_spki(b"example");
        let curl = curl_pin(&pin).unwrap_or_default();
        assert!(curl.starts_with("sha256//") && curl.ends_with('='));
        assert_eq!(normalize_pin(&curl).as_deref(), Some(pin.as_str()));
        assert_eq!(normalize_pin("SHA256:short"), None);
        assert_eq!(normalize_pin("md5:abc"), None);
    }
}

/// A rustls client configuration that accepts exactly the servers whose public key
/// matches `pins` — one pin, or several separated by commas (CA replicas with keys of
/// their own) — whatever the certificate chain or name says (the pin is stronger than
/// either). Handshake signatures are still verified, so a copied certificate without its
/// private key does not pass. `None` when any pin is malformed.
pub fn pinned_client_config(pins: &str) -> Option<rustls::ClientConfig> {
    let pins = pins.split(',').map(normalize_pin).collect::<Option<Vec<String>>>()?;
    if pins.is_empty() {
        return None;
    }
    pinned_by(Accept::PublicKeys(pins))
}

/// A rustls client configuration for a Proxmox VE API under a secret's [`TlsPolicy`]: a CA
/// bundle (chain and name verified as usual), a pinned certificate SHA-256, or — named so
/// — no verification. `Err` says what is wrong with the policy.
pub fn api_client_config(policy: &crate::pve::TlsPolicy) -> Result<rustls::ClientConfig, String> {
    use crate::pve::TlsPolicy;
    match policy {
        TlsPolicy::PinnedSha256 { sha256 } => {
            let want = crate::pve::normalize_sha256(sha256).ok_or("the pinned SHA-256 is not 64 hex digits")?;
            pinned_by(Accept::CertificateSha256(want)).ok_or_else(|| "no TLS client configuration".into())
        }
        TlsPolicy::DangerSkipVerify => pinned_by(Accept::Anything).ok_or_else(|| "no TLS client configuration".into()),
        TlsPolicy::CaBundle { pem } => {
            use rustls_pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|_| "the CA bundle is not PEM certificates")?;
                roots.add(cert).map_err(|_| "a certificate of the CA bundle does not parse")?;
            }
            if roots.is_empty() {
                return Err("the CA bundle holds no certificate".into());
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|_| "no TLS protocol version".to_owned())
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        }
    }
}

/// What a [`PinnedVerifier`] accepts as the server's certificate.
#[derive(Debug)]
enum Accept {
    /// Any of these SPKI pins (`SHA256:<b64>`).
    PublicKeys(Vec<String>),
    /// Exactly this certificate (SHA-256 of its DER, lowercase hex).
    CertificateSha256(String),
    /// Anything (`danger_skip_verify`); the handshake signature is still checked.
    Anything,
}

fn pinned_by(accept: Accept) -> Option<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedVerifier { accept, provider: std::sync::Arc::clone(&provider) };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    Some(config)
}

#[derive(Debug)]
struct PinnedVerifier {
    accept: Accept,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok = rustls::client::danger::ServerCertVerified::assertion;
        // Pins are public values; a plain comparison leaks nothing worth a timing attack.
        match &self.accept {
            Accept::Anything => Ok(ok()),
            Accept::CertificateSha256(want) if hex_sha256(end_entity) == *want => Ok(ok()),
            Accept::CertificateSha256(_) => {
                Err(rustls::Error::General("server certificate does not match the pinned SHA-256".into()))
            }
            Accept::PublicKeys(pins) => match pin_of_certificate(end_entity) {
                Some(pin) if pins.contains(&pin) => Ok(ok()),
                Some(_) => {
                    Err(rustls::Error::General("server public key does not match the pinned fingerprint".into()))
                }
                None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
