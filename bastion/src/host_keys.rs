//! The one host-key decision for every SSH connection the bastion makes to a node
//! (terminated mode's onward login, the browser console, hardware discovery).

use std::marker::PhantomData;

use portcullis_proto::bastion::HostKeyCheck;
use russh::client;
use russh::keys::PublicKeyOrCertificate;
use ssh_key::PublicKey;
use ssh_key::public::KeyData;

/// A node's pinned host keys and the rule's policy for them.
#[derive(Debug, Clone)]
pub(crate) struct HostKeys {
    policy: HostKeyCheck,
    known: Vec<KeyData>,
}

impl HostKeys {
    /// `known_lines` are OpenSSH public key lines; one that does not parse pins nothing.
    pub(crate) fn new(policy: HostKeyCheck, known_lines: &[String]) -> Self {
        let known = known_lines
            .iter()
            .filter_map(|l| PublicKey::from_openssh(l.trim()).ok())
            .map(|k| k.key_data().clone())
            .collect();
        Self { policy, known }
    }

    /// Exactly the pinned keys: nothing pinned means nothing is accepted.
    pub(crate) fn pinned(known_lines: &[String]) -> Self {
        Self::new(HostKeyCheck::KnownHosts, known_lines)
    }

    fn accepts(&self, key: &KeyData) -> bool {
        match self.policy {
            HostKeyCheck::DangerSkipVerify => true,
            // Trust on first use: with nothing pinned yet the first key is accepted (the
            // CA pins host keys at enrollment, so this only happens for devices added
            // by hand); afterwards exactly like known_hosts.
            HostKeyCheck::TrustOnFirstUse => self.known.is_empty() || self.known.contains(key),
            HostKeyCheck::KnownHosts => self.known.contains(key),
        }
    }

    /// A russh client handler that applies this decision; a refused key ends the
    /// connection with `E::from(russh::Error::UnknownKey)`.
    pub(crate) fn checker<E>(self) -> HostKeyChecker<E> {
        HostKeyChecker { keys: self, error: PhantomData }
    }
}

/// [`HostKeys`] as a russh client handler, with the caller's error type.
pub(crate) struct HostKeyChecker<E> {
    keys: HostKeys,
    error: PhantomData<fn() -> E>,
}

impl<E: From<russh::Error> + Send + std::fmt::Debug> client::Handler for HostKeyChecker<E> {
    type Error = E;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // A host certificate is judged by the key it certifies: enrollment pinned the
        // node's plain host keys.
        let data = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key(),
        };
        if self.keys.accepts(data) { Ok(true) } else { Err(E::from(russh::Error::UnknownKey)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn each_policy_decides_as_documented() {
        let a = PublicKey::from_openssh(A).unwrap().key_data().clone();
        let b = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng),
            ssh_key::Algorithm::Ed25519,
        )
        .unwrap()
        .public_key()
        .key_data()
        .clone();
        let pinned = HostKeys::pinned(&[A.to_owned()]);
        assert!(pinned.accepts(&a));
        assert!(!pinned.accepts(&b), "another key");
        assert!(!HostKeys::pinned(&[]).accepts(&b), "nothing pinned: refuse");
        assert!(!HostKeys::pinned(&["garbage".to_owned()]).accepts(&b), "an unparsable pin pins nothing");
        assert!(HostKeys::new(HostKeyCheck::TrustOnFirstUse, &[]).accepts(&b));
        assert!(!HostKeys::new(HostKeyCheck::TrustOnFirstUse, &[A.to_owned()]).accepts(&b));
        assert!(HostKeys::new(HostKeyCheck::DangerSkipVerify, &[A.to_owned()]).accepts(&b));
    }
}
