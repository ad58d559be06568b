//! Node proofs: the node authenticates to the CA with its own host key (an SSHSIG over
//! `NodeProof::message`), so refresh needs no stored secret.

use crate::error::{Error, Result};
use portcullis_proto::enroll::NodeProof;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use std::path::Path;

pub fn node_proof(node: &str, action: &str, host_key: &Path, now: u64) -> Result<NodeProof> {
    let key = PrivateKey::read_openssh_file(host_key)
        .map_err(|e| Error::Failed(format!("cannot read the host key {}: {e}", host_key.display())))?;
    if key.is_encrypted() {
        return Err(Error::Failed(format!("the host key {} is encrypted", host_key.display())));
    }
    let msg = NodeProof::message(node, action, now);
    let sig = key
        .sign(NodeProof::NAMESPACE, HashAlg::Sha512, msg.as_bytes())
        .and_then(|s| s.to_pem(LineEnding::LF))
        .map_err(|e| Error::Failed(format!("cannot sign the node proof: {e}")))?;
    let host_public_key =
        key.public_key().to_openssh().map_err(|e| Error::Failed(format!("cannot encode the host key: {e}")))?;
    Ok(NodeProof { node: node.to_owned(), timestamp: now, host_public_key, signature: sig })
}
