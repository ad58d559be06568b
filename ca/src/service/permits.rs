//! Proofs that a certificate may be signed, made only by the decisions in `service` (the
//! fields are visible to `service` alone) and read by `signer`, which builds a
//! certificate from nothing else. A leaf module, so `signer` depends on it without
//! depending on the service that decides.

/// Proof that a claim decided this node may be discovered now. Only [`super::Discovery::claim`]
/// makes one.
#[derive(Debug)]
pub struct DiscoveryPermit {
    pub(in crate::service) principal: String,
    pub(in crate::service) key_id: String,
}

impl DiscoveryPermit {
    pub fn principal(&self) -> &str {
        &self.principal
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// Proof that a per-session certificate with exactly these contents may be signed. Only
/// [`super::Sessions::open_bastion_session`] makes one, after the admission decision.
pub struct SessionPermit {
    pub(in crate::service) principal: String,
    pub(in crate::service) key_id: String,
    pub(in crate::service) extensions: Vec<String>,
}

impl SessionPermit {
    pub fn principal(&self) -> &str {
        &self.principal
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}
