//! The agent listener's side of one edge agent's SSH connection: the agent authenticates
//! with its internal certificate (principal `agent:NAME`, checked like any certificate:
//! trusted internal CA, validity, KRL) and is then registered with the [`AgentHub`].
//!
//! [`AgentHub`]: crate::agent_hub::AgentHub

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_proto::bastion::{ServiceKind, service_principal};
use portcullis_sshcert::{CheckContext, check_user_certificate};
use russh::server::{Auth, Handler, Session};
use ssh_key::Certificate;
use tokio::sync::oneshot;

use crate::events::{BastionEvent, RefusalReason, sanitize_user};
use crate::shared::Shared;

/// One agent's SSH connection to the agent listener.
pub(crate) struct AgentConnection {
    peer: SocketAddr,
    shared: Arc<Shared>,
    authed: Option<oneshot::Sender<()>>,
    /// The agent's name once its certificate was accepted.
    agent: Option<String>,
    /// Set once registered with the hub.
    conn: Option<u64>,
}

impl AgentConnection {
    pub(crate) fn new(peer: SocketAddr, shared: Arc<Shared>, authed: oneshot::Sender<()>) -> Self {
        Self { peer, shared, authed: Some(authed), agent: None, conn: None }
    }

    fn refuse(&self, user: &str, reason: RefusalReason) -> Auth {
        self.shared.events.record(BastionEvent::AgentRefused { peer: self.peer, agent: sanitize_user(user), reason });
        Auth::reject()
    }
}

impl Drop for AgentConnection {
    fn drop(&mut self) {
        if let (Some(agent), Some(conn)) = (&self.agent, self.conn) {
            self.shared.agents.disconnected(agent, conn);
        }
    }
}

impl Handler for AgentConnection {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
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
        if !crate::login::well_formed(user) {
            return Ok(self.refuse(user, RefusalReason::BadUserName));
        }
        let Some(trust) = self.shared.trust.current() else {
            return Ok(self.refuse(user, RefusalReason::TrustUnavailable));
        };
        let principal = service_principal(ServiceKind::Agent, user);
        let ctx = CheckContext {
            trusted_cas: &trust.internal_ca_keys,
            now_unix: self.shared.clock.now_unix(),
            max_clock_skew_secs: self.shared.max_clock_skew_secs,
            acceptable_principals: &[principal.as_str()],
            client_ip: self.peer.ip(),
            krl: Some(&trust.krl),
        };
        match check_user_certificate(certificate, &ctx) {
            Ok(_) => {
                self.agent = Some(user.to_owned());
                Ok(Auth::Accept)
            }
            Err(rejection) => Ok(self.refuse(user, RefusalReason::Certificate(rejection))),
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(agent) = &self.agent {
            self.conn = Some(self.shared.agents.connected(agent, self.peer, session.handle()));
        }
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    // An agent never opens channels towards the bastion: russh's defaults refuse them
    // (dropping the open handle answers "administratively prohibited").
}
