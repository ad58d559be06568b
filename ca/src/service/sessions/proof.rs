//! No standing access from a bastion: a terminated-mode session (the one kind that gets
//! an onward certificate) is opened only against the user's proof that they are
//! connected to this bastion now — their SSH client's signature over the connection's
//! session identifier and their authentication request.
//!
//! Guarantees (each refusal a `session_denied` with its reason):
//! - No proof, no onward certificate (`connection_proof_missing`). A bastion holds only
//!   certificates, which are not secrets; a certificate alone opens nothing.
//! - The proof verifies with the key of the very certificate the session is opened
//!   with, and its request asked for exactly `LOGIN%DEVICE` of this open
//!   (`connection_proof_invalid`): a proof for one node is no proof for another.
//! - A security key's proof confirms what the certificate asks, as the node's sshd
//!   would require of the user's own login (`connection_proof_invalid`): a touch unless
//!   the certificate says `no-touch-required`, user verification under
//!   `verify-required`. A bastion taken over cannot pass on a signature the key made
//!   without them. A certificate carries the extensions of all its roles, while a node's
//!   sshd waives the touch only for a role that says so (its principals line): so an
//!   untouched proof opens a session only under a role with `no-touch-required`, and
//!   an unverified one only under a role without `verify-required` (a role may have
//!   gained it since the certificate was issued). What the proof confirmed is kept
//!   with the lease and held against the role again at every heartbeat, so a role that
//!   starts asking for a touch or a PIN ends the sessions whose proof showed none.
//! - A proof serves its own connection only: recorded at first use, accepted again only
//!   from the same bastion, certificate and target while a session it opened is still
//!   live — not ended by an administrator, not past its absolute deadline — and a
//!   session opened again on it ends no later than the earliest of those
//!   (`connection_proof_replayed`): a connection's sessions cannot hand the proof on
//!   from one to the next beyond the first one's lifetime. The session identifier is a
//!   hash of the key exchange, unique per connection, so an old proof is worth nothing.
//!
//! So a bastion taken over can act only for users who connect while it is compromised,
//! only on the node and login they asked for, and only while their connection's first
//! session may last.

use super::admission::denial;
use super::{Denial, Sessions};
use crate::store::CertRow;
use portcullis_proto::bastion::{SessionOpenRequest, deny_reason as deny, terminated_user};
use portcullis_sshcert::{
    Confirmed, ProofError, Unconfirmed, certificate_digest, fingerprint, verify_connection_proof,
};
use sha2::{Digest, Sha256};

/// A connection proven for this open.
pub(super) struct ProvenConnection {
    /// The hash of its session identifier (the CA never keeps the identifier itself).
    pub hash: String,
    /// What the user's key confirmed (a touch and user verification), held against what
    /// the session's role asks at open and at every heartbeat (`admission::unconfirmed`).
    pub confirmed: Confirmed,
}

/// Checks the proof of a terminated-mode open against the certificate it is opened with.
pub(super) fn check(req: &SessionOpenRequest, cert: &CertRow) -> Result<ProvenConnection, Denial> {
    let invalid = |text| Err(denial(deny::CONNECTION_PROOF_INVALID, text));
    let Some(proof) = &req.connection_proof else {
        return Err(denial(deny::CONNECTION_PROOF_MISSING, "the bastion sent no proof of your connection"));
    };
    let Some((session_id, request, signature)) = proof.decode() else {
        return invalid("the proof of connection is malformed");
    };
    let proven = match verify_connection_proof(&session_id, &request, &signature) {
        Ok(p) => p,
        Err(ProofError::Unconfirmed(unconfirmed)) => {
            tracing::info!(reason = unconfirmed.code(), "connection proof refused");
            return invalid(match unconfirmed {
                Unconfirmed::Presence => "your security key signed without the touch your certificate requires",
                Unconfirmed::Verification => "your certificate requires your security key's user verification (PIN)",
            });
        }
        Err(e) => {
            tracing::info!(reason = e.code(), "connection proof refused");
            return invalid("the proof of connection does not verify");
        }
    };
    let asked = terminated_user(req.login.as_deref().unwrap_or_default(), &req.device);
    if proven.user != asked {
        return invalid("the proof of connection is for another login or device");
    }
    // The serial and the certified key, and the whole certificate where the CA kept its
    // digest: a row from before digests were kept is not matched by serial alone (a
    // bastion could certify its own key under a known serial and sign the proof itself).
    let same_certificate = proven.certificate.serial() == cert.serial
        && fingerprint(proven.certificate.public_key()) == cert.key_fingerprint
        && cert
            .digest
            .as_deref()
            .is_none_or(|issued| certificate_digest(&proven.certificate).as_deref() == Some(issued));
    if !same_certificate {
        return invalid("the proof of connection is for another certificate");
    }
    Ok(ProvenConnection { hash: hex::encode(Sha256::digest(&session_id)), confirmed: proven.confirmed })
}

impl Sessions {
    /// Forgets the proofs whose certificates have expired, even by the clock of a
    /// replica running behind (a replay of one is refused on its certificate alone).
    pub(in crate::service) async fn purge_connection_proofs(&self) -> Result<(), crate::error::CaError> {
        let cutoff = self.core.now().saturating_sub(self.core.clock_skew);
        let mut tx = self.core.store.begin().await?;
        crate::store::purge_connection_proofs(tx.conn(), cutoff).await?;
        tx.commit().await?;
        Ok(())
    }
}
