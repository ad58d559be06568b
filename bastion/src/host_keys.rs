//! The one host-key decision for every SSH connection the bastion makes to a node
//! (terminated mode's onward login, the browser console, hardware discovery).

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

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
    /// Trust on first use with nothing pinned: the key accepted, for the CA to pin.
    first_used: Arc<OnceLock<KeyData>>,
}

impl HostKeys {
    /// `known_lines` are OpenSSH public key lines; one that does not parse pins nothing.
    pub(crate) fn new(policy: HostKeyCheck, known_lines: &[String]) -> Self {
        let known = known_lines
            .iter()
            .filter_map(|l| PublicKey::from_openssh(l.trim()).ok())
            .map(|k| k.key_data().clone())
            .collect();
        Self { policy, known, first_used: Arc::default() }
    }

    /// Where the key accepted on first use will be (see [`HostKeyCheck::TrustOnFirstUse`]),
    /// to read after the login.
    pub(crate) fn first_used(&self) -> Arc<OnceLock<KeyData>> {
        Arc::clone(&self.first_used)
    }

    /// Exactly the pinned keys: nothing pinned means nothing is accepted.
    pub(crate) fn pinned(known_lines: &[String]) -> Self {
        Self::new(HostKeyCheck::KnownHosts, known_lines)
    }

    fn accepts(&self, key: &KeyData) -> bool {
        match self.policy {
            HostKeyCheck::DangerSkipVerify => true,
            // Trust on first use: with nothing pinned, the key is accepted and kept for
            // the caller to report, and the CA pins it (enrolled nodes have their keys
            // pinned already; this is for devices added by hand). From then on the
            // grant carries the pin and this is known_hosts.
            HostKeyCheck::TrustOnFirstUse if self.known.is_empty() => {
                self.first_used.get_or_init(|| key.clone()) == key
            }
            HostKeyCheck::TrustOnFirstUse | HostKeyCheck::KnownHosts => self.known.contains(key),
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

    // A node never opens a channel to the bastion: the bastion asks for no forwarding,
    // no agent and no X11 on its logins. russh's client accepts every kind by default,
    // and an accepted channel is kept (a queue and its state) until closed, so a hostile
    // node could open them until the bastion ran out of memory. Each is refused; a
    // refusal keeps nothing.

    async fn server_channel_open_session(
        &mut self,
        _: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }

    async fn server_channel_open_x11(
        &mut self,
        _: russh::Channel<client::Msg>,
        _: &str,
        _: u32,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        _: russh::Channel<client::Msg>,
        _: &str,
        _: u32,
        _: &str,
        _: u32,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _: russh::Channel<client::Msg>,
        _: &str,
        _: u32,
        _: &str,
        _: u32,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _: russh::Channel<client::Msg>,
        _: &str,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _: russh::Channel<client::Msg>,
        _: &str,
        reply: client::ChannelOpenHandle,
        _: &mut client::Session,
    ) -> Result<(), Self::Error> {
        refuse(reply).await
    }
}

async fn refuse<E>(reply: client::ChannelOpenHandle) -> Result<(), E> {
    reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
    Ok(())
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
        let first_use = HostKeys::new(HostKeyCheck::TrustOnFirstUse, &[]);
        assert!(first_use.accepts(&b), "nothing pinned: the first key is taken");
        assert_eq!(first_use.first_used().get(), Some(&b), "and kept for the CA to pin");
        assert!(!first_use.accepts(&a), "a second key in the same check is not");
        assert!(!HostKeys::new(HostKeyCheck::TrustOnFirstUse, &[A.to_owned()]).accepts(&b));
        assert!(HostKeys::new(HostKeyCheck::TrustOnFirstUse, &[A.to_owned()]).accepts(&a));
        assert!(HostKeys::new(HostKeyCheck::DangerSkipVerify, &[A.to_owned()]).accepts(&b));
    }

    /// A node that opens channels back to the bastion after its login, of every kind.
    struct OpensChannelsBack {
        answers: tokio::sync::mpsc::UnboundedSender<(&'static str, bool)>,
    }

    impl russh::server::Handler for OpensChannelsBack {
        type Error = russh::Error;

        async fn auth_none(&mut self, _: &str) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn auth_succeeded(&mut self, session: &mut russh::server::Session) -> Result<(), Self::Error> {
            let (handle, answers) = (session.handle(), self.answers.clone());
            tokio::spawn(async move {
                for kind in ["session", "x11", "agent", "forwarded-tcpip", "direct-tcpip"] {
                    let opened = match kind {
                        "session" => handle.channel_open_session().await,
                        "x11" => handle.channel_open_x11("127.0.0.1", 6010).await,
                        "agent" => handle.channel_open_agent().await,
                        "forwarded-tcpip" => handle.channel_open_forwarded_tcpip("127.0.0.1", 22, "127.0.0.1", 5).await,
                        _ => handle.channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 5).await,
                    };
                    let _ = answers.send((kind, opened.is_ok()));
                }
            });
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_can_open_no_channel_back_to_the_bastion() {
        let rng = &mut ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
        let host_key = ssh_key::PrivateKey::random(rng, ssh_key::Algorithm::Ed25519).unwrap();
        let pinned = HostKeys::pinned(&[host_key.public_key().to_openssh().unwrap()]);
        let config = std::sync::Arc::new(russh::server::Config { keys: vec![host_key], ..Default::default() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let session = russh::server::run_stream(config, tcp, OpensChannelsBack { answers }).await.unwrap();
            let _ = session.await;
        });

        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client = std::sync::Arc::new(client::Config::default());
        let mut login = client::connect_stream(client, tcp, pinned.checker::<russh::Error>()).await.unwrap();
        assert!(login.authenticate_none("root").await.unwrap().success());
        for _ in 0..5 {
            let (kind, opened) = answered.recv().await.unwrap();
            assert!(!opened, "the bastion accepted a {kind} channel from the node");
        }
    }
}
