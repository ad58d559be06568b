//! One russh handler per user connection: the authentication decision, then one
//! spawned task per session channel (terminated mode for `LOGIN%DEVICE` shells, exec
//! and sftp; jump mode for `direct-tcpip`). Everything else is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portcullis_sshcert::{
    CheckContext, Rejection, certificate_digest, check_authenticator, check_user_certificate, signature_fits_key,
};
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelOpenFailure};
use ssh_key::encoding::Decode;
use ssh_key::{Certificate, Signature};
use tokio::sync::oneshot;

use crate::broker::Presented;
use crate::events::{BastionEvent, RefusalReason, escape_for_log, sanitize_user};
use crate::jump::{ADMINISTRATIVELY_PROHIBITED, JumpRequest};
use crate::login::{RequestedLogin, acceptable_principals};
use crate::shared::Shared;
use crate::terminated::TerminatedRequest;
use portcullis_proto::bastion::{ConnectionProof, SessionMode};

/// Shown when a session channel arrives for a user name without a device.
const NEEDS_DEVICE: &str = "name the device: ssh LOGIN%DEVICE@bastion (or ssh -J for jump mode)";
/// Shown for forwarding kinds the bastion never serves.
const NOT_SERVED: &str = "not served by this bastion";
/// Shown for a jump target that cannot name a device.
const ACCESS_DENIED: &str = "access denied";
/// Session and `direct-tcpip` channels one connection may have open at once (OpenSSH's
/// `MaxSessions` default): each is a session at the CA, so one connection cannot hold
/// a user's whole cap or make the bastion open hundreds of onward connections.
pub(crate) const MAX_CHANNELS_PER_CONNECTION: usize = 10;
/// Shown when a connection asks for one channel more.
const TOO_MANY_CHANNELS: &str = "too many channels on this connection (at most 10); open another connection";

/// One of a connection's channel slots, given back when its session task ends.
struct ChannelSlot(Arc<AtomicUsize>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A device name, DNS name or IP address could be this: printable ASCII without spaces,
/// at most 253 characters (a DNS name's limit).
fn plausible_host(host: &str) -> bool {
    (1..=253).contains(&host.len()) && host.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) struct Connection {
    peer: SocketAddr,
    shared: Arc<Shared>,
    authed: Option<oneshot::Sender<()>>,
    /// The sanitized user name, once authenticated.
    user: String,
    /// What was authenticated.
    accepted: Option<Accepted>,
    /// Channels of this connection whose session task still runs.
    channels: Arc<AtomicUsize>,
    /// This connection's place among its user's logged-in connections.
    login_slot: Option<crate::logged_in::LoginSlot>,
    /// Junk jump targets refused on this connection: the first is logged at info, the
    /// rest at debug — they cost the client one packet each and no CA call, so logging
    /// every one would let a logged-in client flood the journal.
    junk_targets: u64,
}

/// The login request and the certificate that proved it.
struct Accepted {
    requested: RequestedLogin,
    certificate: Presented,
    /// The user's signature over this connection (for terminated-mode requests, which
    /// need it for every onward certificate; jump mode never asks for one).
    proof: Option<Arc<ConnectionProof>>,
    /// The certificate forces a command: only the node can enforce that (the
    /// per-session certificate cannot carry it), so it serves jump mode only (the CA's
    /// admission decides the same).
    forces_command: bool,
}

/// Shown when a certificate that forces a command asks for a terminated-mode session.
/// (`source-address` the bastion checks itself at authentication, and `verify-required`
/// too, with a security key's touch — [`check_authenticator`] — and the CA again on the
/// connection's proof, at open and at every heartbeat: those serve terminated mode.)
const JUMP_ONLY: &str = "this certificate forces a command, which only the node enforces: use jump mode (ssh -J)";

impl Connection {
    pub(crate) fn new(peer: SocketAddr, shared: Arc<Shared>, authed: oneshot::Sender<()>) -> Self {
        Self {
            peer,
            shared,
            authed: Some(authed),
            user: String::new(),
            accepted: None,
            channels: Arc::new(AtomicUsize::new(0)),
            login_slot: None,
            junk_targets: 0,
        }
    }

    fn refuse(&self, user: &str, reason: RefusalReason) -> Auth {
        self.shared.events.record(BastionEvent::AuthRefused { peer: self.peer, user: sanitize_user(user), reason });
        Auth::reject()
    }

    /// Whether `certificate`, whose key made `signature` over this connection (russh
    /// verified it), lets `user` in.
    fn decide(&mut self, user: &str, certificate: &Certificate, signature: &[u8]) -> Auth {
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
                // As sshd: a signature named for another key type than the certificate's
                // is refused (russh ties the name only to the request's), and a security
                // key's must confirm what the certificate asks — a touch, user
                // verification (russh checks only that it verifies; it decoded it too).
                let signature = Signature::decode(&mut &*signature).ok();
                let Some(signature) = signature.filter(|s| signature_fits_key(s, certificate.public_key())) else {
                    return self.refuse(user, RefusalReason::Certificate(Rejection::BadSignature));
                };
                if let Err(unconfirmed) = check_authenticator(certificate, &signature) {
                    return self.refuse(user, RefusalReason::Unconfirmed(unconfirmed));
                }
                if self.login_slot.is_none() {
                    match self.shared.logged_in.take(accepted.key_id()) {
                        Some(slot) => self.login_slot = Some(slot),
                        None => return self.refuse(user, RefusalReason::TooManyConnections),
                    }
                }
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
                let forces_command = certificate.critical_options().contains_key("force-command");
                let certificate = Presented { serial: accepted.serial(), digest: certificate_digest(certificate) };
                self.accepted = Some(Accepted { requested, certificate, forces_command, proof: None });
                Auth::Accept
            }
            Err(rejection) => self.refuse(user, RefusalReason::Certificate(rejection)),
        }
    }

    /// A slot for one more channel, or `None` when the connection has all it may have.
    fn channel_slot(&self) -> Option<ChannelSlot> {
        let taken = self
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_CHANNELS_PER_CONNECTION).then_some(n + 1));
        taken.is_ok().then(|| ChannelSlot(Arc::clone(&self.channels)))
    }

    async fn refuse_channel(&self, kind: &'static str, reply: russh::server::ChannelOpenHandle, why: &str) {
        self.shared.events.record(BastionEvent::ChannelRefused { peer: self.peer, user: self.user.clone(), kind });
        let code = match kind {
            "session" => "channel_refused_session",
            "direct-tcpip" => "channel_refused_direct_tcpip",
            "direct-streamlocal" => "channel_refused_streamlocal",
            "x11" => "channel_refused_x11",
            _ => "channel_refused",
        };
        self.shared.events.count_refusal(self.peer.ip(), code);
        reply.reject(ChannelOpenFailure::Other { code: ADMINISTRATIVELY_PROHIBITED, reason: why.to_owned() }).await;
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

    /// The decision, keeping the user's proof of this connection for the CA.
    async fn auth_openssh_certificate_with_proof(
        &mut self,
        user: &str,
        certificate: &Certificate,
        proof: russh::server::AuthProof<'_>,
    ) -> Result<Auth, Self::Error> {
        let auth = self.decide(user, certificate, proof.signature);
        if let Some(accepted) = self.accepted.as_mut().filter(|a| a.requested.device().is_some()) {
            accepted.proof = Some(Arc::new(ConnectionProof::new(proof.session_id, proof.request, proof.signature)));
        }
        Ok(auth)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(accepted) = &self.accepted else {
            self.refuse_channel("session", reply, NOT_SERVED).await;
            return Ok(());
        };
        let requested = &accepted.requested;
        let Some(device) = requested.device() else {
            self.refuse_channel("session", reply, NEEDS_DEVICE).await;
            return Ok(());
        };
        if accepted.forces_command {
            self.refuse_channel("session", reply, JUMP_ONLY).await;
            return Ok(());
        }
        let Some(slot) = self.channel_slot() else {
            self.refuse_channel("session", reply, TOO_MANY_CHANNELS).await;
            return Ok(());
        };
        let request = TerminatedRequest {
            peer: self.peer,
            certificate: accepted.certificate.clone(),
            proof: accepted.proof.clone(),
            login: requested.login().to_owned(),
            device: device.to_owned(),
            mode: SessionMode::Terminated,
        };
        // The session runs in its own task so this connection keeps serving its others.
        let shared = Arc::clone(&self.shared);
        let handle = session.handle();
        tokio::spawn(async move {
            let _slot = slot;
            crate::terminated::run(shared, request, channel, reply, handle).await;
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(accepted), Ok(port)) = (&self.accepted, u16::try_from(port_to_connect)) else {
            self.refuse_channel("direct-tcpip", reply, NOT_SERVED).await;
            return Ok(());
        };
        // Junk is refused here, without asking the CA (and logged escaped).
        if !plausible_host(host_to_connect) {
            self.junk_targets += 1;
            let target_host = escape_for_log(host_to_connect);
            let refused = self.junk_targets;
            if refused == 1 {
                tracing::info!(%target_host, "jump target is not a host name or address");
            } else {
                tracing::debug!(%target_host, refused, "jump target is not a host name or address");
            }
            self.refuse_channel("direct-tcpip", reply, ACCESS_DENIED).await;
            return Ok(());
        }
        let Some(slot) = self.channel_slot() else {
            self.refuse_channel("direct-tcpip", reply, TOO_MANY_CHANNELS).await;
            return Ok(());
        };
        let request = JumpRequest {
            peer: self.peer,
            certificate: accepted.certificate.clone(),
            host: host_to_connect.to_owned(),
            port,
            farewell: crate::jump::Farewell { outer: session.handle(), channels: Arc::clone(&self.channels) },
        };
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let _slot = slot;
            crate::jump::run(shared, request, channel, reply).await;
        });
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("direct-streamlocal", reply, NOT_SERVED).await;
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
        self.refuse_channel("x11", reply, NOT_SERVED).await;
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
        self.refuse_channel("forwarded-tcpip", reply, NOT_SERVED).await;
        Ok(())
    }

    // Global requests (tcpip-forward, streamlocal-forward and their cancels) keep
    // russh's default answer: refused.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_targets_must_look_like_hosts() {
        for ok in ["pve01", "10.0.0.7", "fe80::1%eth0", "node-3.dc1.example.org"] {
            assert!(plausible_host(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in ["", "pve01\n2026-12-02T00:00:00Z INFO forged", "a b", "\u{1b}[2J", "pvé", long.as_str()] {
            assert!(!plausible_host(bad), "{bad:?}");
        }
    }
}
