//! The crate's one error type, and what a peer may see of it.

use crate::store::{StoreError, Unavailable};
use portcullis_policies::Deny;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many attempts; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    Denied(Deny),
    /// Authenticated, but this kind of caller may not use this endpoint (e.g. an agent's
    /// credential on a bastion endpoint).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The bastion may not open this session: `reason` is one of
    /// `portcullis_proto::bastion::deny_reason`, `message` sanitized text for the user.
    #[error("{reason}: {message}")]
    SessionDenied { reason: &'static str, message: String },
    /// A state-changing request authenticated by the session cookie came without the
    /// session's CSRF token (or with another one).
    #[error("missing or invalid CSRF token")]
    Csrf,
    /// No console ticket: `reason` is the audited code, `message` fixed text.
    #[error("{reason}: {message}")]
    TicketDenied { reason: &'static str, message: &'static str },
    /// A console mode (`termproxy`, `vncwebsocket`) this server does not serve.
    #[error("this console mode is not supported; only ssh is")]
    UnsupportedConsoleMode,
    /// A Proxmox VE guest: its consoles (`termproxy`, `vncwebsocket`) are not served.
    #[error(
        "{device} is a Proxmox VE guest on node {node}: guest consoles (termproxy, vncwebsocket) are not \
         supported; open a console on the node"
    )]
    GuestConsoleUnsupported { device: String, node: String },
    #[error("{0}")]
    BadRequest(String),
    /// The path exists, but not for this method.
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    /// The request body is over the endpoint's limit.
    #[error("request body too large")]
    TooLarge,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("identity directory unavailable")]
    Unavailable,
    /// The identity provider could not be reached (`unreachable`) or sent something that
    /// is not a valid answer; the cause is in the operator log.
    #[error("{}", if *unreachable { "the identity provider cannot be reached" } else { "the identity provider sent an invalid answer" })]
    IdentityProvider { unreachable: bool },
    /// The password was right but is a one-time password: only a sign-in that also
    /// chooses a new one opens a session.
    #[error("this password is for one sign-in only: sign in again choosing a new password")]
    PasswordChangeRequired,
    /// Single sign-on did not produce a session; the text is ours, never the IdP's.
    #[error("sign-in failed: {0}")]
    SignInFailed(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The database cannot take the request now (disk full, locked, unreachable). Nothing
    /// the request would have changed was acknowledged; the client may retry.
    #[error("{}", store_unavailable_message(*.0))]
    StoreUnavailable(Unavailable),
    /// Too many unauthenticated requests are already being worked on (password hashing,
    /// directory binds, identity-provider calls); retry after the given seconds.
    #[error("the CA is busy; retry in {retry_after} s")]
    Busy { retry_after: u64 },
    #[error(transparent)]
    Store(StoreError),
}

fn store_unavailable_message(why: Unavailable) -> &'static str {
    match why {
        Unavailable::DiskFull => "the CA cannot store records: disk full",
        Unavailable::Database => "the CA cannot store records right now; try again",
    }
}

impl From<StoreError> for CaError {
    /// A failure of the database's state becomes a 503 the client may retry; the detail
    /// goes to the operator log only.
    fn from(e: StoreError) -> CaError {
        if matches!(e, StoreError::SignerWithdrawn) {
            // The next housekeeping tick (5 s) reads the keyring; the retry is signed
            // with the key in force.
            tracing::warn!("a certificate signed with a CA key withdrawn meanwhile was not handed out");
            return CaError::Busy { retry_after: 5 };
        }
        match e.unavailable() {
            Some(why) => {
                tracing::error!(error = %e, "database unavailable");
                CaError::StoreUnavailable(why)
            }
            None => CaError::Store(e),
        }
    }
}

impl CaError {
    /// Stable code for API bodies and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            CaError::Unauthenticated => "unauthenticated",
            CaError::InvalidCredentials => "invalid_credentials",
            CaError::RateLimited { .. } => "rate_limited",
            CaError::Denied(_) => "denied",
            CaError::Forbidden(_) => "forbidden",
            CaError::SessionDenied { .. } => "session_denied",
            CaError::Csrf => "csrf",
            CaError::TicketDenied { .. } => "ticket_denied",
            CaError::UnsupportedConsoleMode | CaError::GuestConsoleUnsupported { .. } => "unsupported_console_mode",
            CaError::BadRequest(_) => "bad_request",
            CaError::TooLarge => "too_large",
            CaError::MethodNotAllowed => "method_not_allowed",
            CaError::NotFound(_) => "not_found",
            CaError::Conflict(_) => "conflict",
            CaError::Unavailable => "unavailable",
            CaError::SignInFailed(_) => "sign_in_failed",
            CaError::PasswordChangeRequired => "password_change_required",
            CaError::IdentityProvider { unreachable: true } => "idp_unavailable",
            CaError::IdentityProvider { unreachable: false } => "idp_invalid_answer",
            CaError::Config(_) => "config",
            CaError::Internal(_) | CaError::Store(_) => "internal",
            CaError::StoreUnavailable(_) => "store_unavailable",
            CaError::Busy { .. } => "busy",
        }
    }

    /// What the peer is told. Internal details stay in the operator log.
    pub fn public_message(&self) -> String {
        match self {
            CaError::Internal(_) | CaError::Store(_) | CaError::Config(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}
