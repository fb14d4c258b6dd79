//! The HTTP JSON API: one file per resource, errors mapped in `error.rs`, the
//! layers every request passes (ids, logging, limits, timeouts, panics) in
//! `edge.rs`.

pub mod edge;
pub mod error;
pub mod extract;
pub mod health;
pub mod ops;
pub mod serve;
pub mod users;
pub mod verify_email;

use axum::{Json, Router, routing::get};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    admin::{self, Dashboard},
    config::HttpConfig,
    metrics::Scrape,
    queue::Broker,
    users::signup::SignUps,
};
use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub broker: Broker,
    pub signups: SignUps,
    /// What /metrics reads; `None`: no /metrics here (it is on ADMIN_ADDR).
    pub scrape: Option<Scrape>,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "simplebank",
    description = "Sign-up with an asynchronous, never-lost verification email (transactional outbox)."
))]
struct ApiDoc;

/// The routes and their OpenAPI document, built from the same declarations so
/// they cannot drift apart, and the dashboard when given, behind the edge's
/// layers ([`edge`]).
pub fn router(state: AppState, http: &HttpConfig, dashboard: Option<Dashboard>) -> Router {
    // The routes that send an email to an address the client names.
    let signups = edge::signup_rate(
        OpenApiRouter::new()
            .routes(routes!(users::create_user))
            .routes(routes!(verify_email::resend_verify_email)),
        http,
    );
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(signups)
        .routes(routes!(verify_email::verify_email))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .split_for_parts();
    let mut api = api
        .route("/openapi.json", get(move || async move { Json(openapi) }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed });
    if let Some(scrape) = state.scrape.clone() {
        api = api.route(
            "/metrics",
            get(move || async move { ops::metrics_text(&scrape).await }),
        );
    }
    if let Some(dashboard) = dashboard {
        api = api.merge(admin::router(dashboard));
    }
    edge::layers(api, http).with_state(state)
}
