//! Extractors whose rejections are [`ApiError`]s, so malformed input gets the
//! same JSON error shape as everything else.

use axum::extract::FromRequest;
use axum::extract::FromRequestParts;

use super::error::ApiError;

/// `axum::Json`, rejecting with an [`ApiError`] (400, 413 or 415).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query`, rejecting with an [`ApiError`] (400).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The request's id (the edge set or checked it), for what the request
/// leaves behind: an outbox row carries it into its task's log lines.
pub struct RequestId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<tower_http::request_id::RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .map(str::to_owned);
        Ok(Self(id))
    }
}
