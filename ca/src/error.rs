//! The crate's one error type, and what a peer may see of it.

use crate::store::StoreError;
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
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("identity directory unavailable")]
    Unavailable,
    /// Single sign-on did not produce a session; the text is ours, never the IdP's.
    #[error("sign-in failed: {0}")]
    SignInFailed(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
            CaError::UnsupportedConsoleMode => "unsupported_console_mode",
            CaError::BadRequest(_) => "bad_request",
            CaError::NotFound(_) => "not_found",
            CaError::Conflict(_) => "conflict",
            CaError::Unavailable => "unavailable",
            CaError::SignInFailed(_) => "sign_in_failed",
            CaError::Config(_) => "config",
            CaError::Internal(_) | CaError::Store(_) => "internal",
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
