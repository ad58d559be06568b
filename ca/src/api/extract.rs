//! Request extractors that fail with sanitized [`CaError`]s instead of axum's default
//! rejections (which can echo parts of the request back).

use crate::error::CaError;
use crate::service::{Ca, Caller};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// A JSON body; any problem becomes one sanitized 400 (or 413 for size).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = CaError;

    async fn from_request(req: Request, state: &S) -> Result<Self, CaError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(CaError::BadRequest("expected Content-Type: application/json".into()))
            }
            Err(JsonRejection::BytesRejection(_)) => {
                Err(CaError::BadRequest(format!("request body too large (limit {} bytes)", super::MAX_BODY_BYTES)))
            }
            Err(_) => Err(CaError::BadRequest("request body is not valid JSON for this endpoint".into())),
        }
    }
}

/// The caller named by `Authorization: Bearer <token>`.
pub struct Authed(pub Caller);

impl FromRequestParts<Arc<Ca>> for Authed {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, ca: &Arc<Ca>) -> Result<Self, CaError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or(CaError::Unauthenticated)?;
        Ok(Authed(ca.caller(token).await?))
    }
}

/// The TCP peer's address, as text for audit records.
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = CaError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, CaError> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        Ok(ClientIp(ip))
    }
}
