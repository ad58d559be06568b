//! The crate's one error type (for the operator; peers never see it).

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum BastionError {
    #[error("the bastion host key must be Ed25519, not {0}")]
    HostKeyAlgorithm(String),
    #[error("malformed TLS pin for the CA")]
    BadPin,
    #[error("cannot build the HTTPS client for the CA: {0}")]
    HttpClient(String),
    #[error("cannot accept connections: {0}")]
    Accept(std::io::Error),
    #[error("SSH session with {peer} failed: {detail}")]
    Session { peer: SocketAddr, detail: String },
}
