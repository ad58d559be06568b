//! Wire types of single sign-on: which login methods the CA offers, and the device
//! authorization flow the CA runs with the IdP on the CLI's behalf.

use crate::LoginResponse;
use serde::{Deserialize, Serialize};

/// `GET /v1/auth/methods`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthMethods {
    /// `POST /v1/auth/login` with a username and password.
    pub password: bool,
    /// OpenID Connect, when configured.
    #[serde(default)]
    pub oidc: Option<OidcMethods>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OidcMethods {
    pub issuer: String,
    /// `POST /v1/auth/oidc/device` (headless CLI).
    pub device: bool,
    /// `GET /v1/auth/oidc/login` (browser).
    pub browser: bool,
}

/// `POST /v1/auth/oidc/device`: show these to the user, then poll with `handle`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceStart {
    /// Opaque to the client; identifies this sign-in at the CA and carries the IdP's
    /// device code for it (so the CA stores none). A secret of the sign-in: never log it.
    pub handle: crate::WireSecret,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// Seconds to wait between polls.
    pub interval: u64,
    pub expires_in: u64,
}

/// `POST /v1/auth/oidc/device`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceStartRequest {
    /// Sign in at the IdP afresh (`max_age=0`: it asks for the password even while it
    /// remembers the user), to step up for a rule with `fresh_auth_within`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
}

/// `POST /v1/auth/oidc/device/poll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DevicePollRequest {
    pub handle: crate::WireSecret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DevicePoll {
    /// The user has not finished yet; poll again after `interval` seconds.
    Pending {
        interval: u64,
    },
    /// Polling too fast: wait `interval` seconds (now longer) between polls.
    SlowDown {
        interval: u64,
    },
    /// The user refused at the identity provider.
    AccessDenied,
    /// The code expired before the user finished; start again.
    ExpiredToken,
    Success(LoginResponse),
}
