//! One russh handler per connection: the authentication decision and, after it, the
//! refusal of everything not implemented yet.

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_sshcert::{CheckContext, check_user_certificate};
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelOpenFailure};
use ssh_key::Certificate;
use tokio::sync::oneshot;

use crate::events::{BastionEvent, RefusalReason, sanitize_user};
use crate::login::{RequestedLogin, acceptable_principals};
use crate::server::{NOT_IMPLEMENTED_MESSAGE, Shared};

/// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (RFC 4254 §5.1), with our own text.
const ADMINISTRATIVELY_PROHIBITED: u32 = 1;

pub(crate) struct Connection {
    peer: SocketAddr,
    shared: Arc<Shared>,
    authed: Option<oneshot::Sender<()>>,
    /// The sanitized user name, once authenticated.
    user: String,
}

impl Connection {
    pub(crate) fn new(peer: SocketAddr, shared: Arc<Shared>, authed: oneshot::Sender<()>) -> Self {
        Self { peer, shared, authed: Some(authed), user: String::new() }
    }

    fn refuse(&self, user: &str, reason: RefusalReason) -> Auth {
        self.shared.events.record(BastionEvent::AuthRefused { peer: self.peer, user: sanitize_user(user), reason });
        Auth::reject()
    }

    fn decide(&mut self, user: &str, certificate: &Certificate) -> Auth {
        let Some(requested) = RequestedLogin::parse(user) else {
            return self.refuse(user, RefusalReason::BadUserName);
        };
        let Some(trust) = self.shared.trust.current() else {
            return self.refuse(user, RefusalReason::TrustUnavailable);
        };
        let acceptable = acceptable_principals(&requested, certificate.valid_principals());
        let ctx = CheckContext {
            trusted_cas: &trust.user_ca_keys,
            now_unix: self.shared.clock.now_unix(),
            max_clock_skew_secs: self.shared.max_clock_skew_secs,
            acceptable_principals: &acceptable,
            client_ip: self.peer.ip(),
            krl: Some(&trust.krl),
        };
        match check_user_certificate(certificate, &ctx) {
            Ok(accepted) => {
                self.user = sanitize_user(user);
                self.shared.events.record(BastionEvent::AuthAccepted {
                    peer: self.peer,
                    user: self.user.clone(),
                    login: requested.login().to_owned(),
                    device: requested.device().map(str::to_owned),
                    key_id: sanitize_user(accepted.key_id()),
                    serial: accepted.serial(),
                    matched_principal: accepted.matched_principal().to_owned(),
                    ca_fingerprint: accepted.ca_fingerprint().to_owned(),
                });
                Auth::Accept
            }
            Err(rejection) => self.refuse(user, RefusalReason::Certificate(rejection)),
        }
    }

    async fn refuse_channel(&self, kind: &'static str, reply: russh::server::ChannelOpenHandle) {
        self.shared.events.record(BastionEvent::ChannelRefused { peer: self.peer, user: self.user.clone(), kind });
        reply
            .reject(ChannelOpenFailure::Other {
                code: ADMINISTRATIVELY_PROHIBITED,
                reason: NOT_IMPLEMENTED_MESSAGE.to_owned(),
            })
            .await;
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.refuse(user, RefusalReason::MethodNotAllowed))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse(user, RefusalReason::MethodNotAllowed))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse(user, RefusalReason::PlainPublicKey))
    }

    async fn auth_openssh_certificate(&mut self, user: &str, certificate: &Certificate) -> Result<Auth, Self::Error> {
        Ok(self.decide(user, certificate))
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("session", reply).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("direct-tcpip", reply).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("direct-streamlocal", reply).await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("x11", reply).await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("forwarded-tcpip", reply).await;
        Ok(())
    }

    // Global requests (tcpip-forward, streamlocal-forward and their cancels) keep
    // russh's default answer: refused.
}
