//! The HTTP JSON API: one file per resource, errors mapped in `error.rs`.
//!
//! Every request gets an `x-request-id` (kept if the client sent one), a span
//! carrying it, and one log line when it completes.

pub mod error;
pub mod extract;
pub mod health;
pub mod users;
pub mod verify_email;

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, Response},
    middleware::{self, Next},
    routing::get,
};
use sqlx::PgPool;
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::Span;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use std::sync::Arc;

use axum::{extract::State, response::IntoResponse};
use tokio::sync::Semaphore;

use crate::{
    config::{HttpConfig, SignupConfig},
    outbox::wake::RelayWaker,
    queue::Broker,
    users::password::PasswordHasher,
};
use error::{ApiError, REQUEST_ID};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub queue: Broker,
    pub hasher: PasswordHasher,
    pub signup: SignupConfig,
    pub waker: RelayWaker,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "simplebank",
    description = "Sign-up with an asynchronous, never-lost verification email (transactional outbox)."
))]
struct ApiDoc;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The routes and their OpenAPI document, built from the same declarations so
/// they cannot drift apart.
pub fn router(state: AppState, http: &HttpConfig) -> Router {
    let in_flight = Arc::new(Semaphore::new(http.max_in_flight));
    let (api, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::create_user))
        .routes(routes!(verify_email::verify_email))
        .routes(routes!(verify_email::resend_verify_email))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .split_for_parts();
    api.route("/openapi.json", get(move || async move { Json(openapi) }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(http.body_limit))
        .layer(middleware::from_fn_with_state(in_flight, limit_in_flight))
        .layer(middleware::from_fn(scope_request_id))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_request(())
                .on_response(|res: &Response<_>, took: Duration, _span: &Span| {
                    tracing::info!(
                        status_code = res.status().as_u16(),
                        duration_ms = took.as_secs_f64() * 1000.0,
                        "received an HTTP request"
                    );
                })
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, RandomRequestId))
        .with_state(state)
}

/// A random (v4) UUID per request, from the thread's CSPRNG: `Uuid::new_v4`
/// would make a getrandom system call for every request.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::Rng::random(&mut rand::rng())).into_uuid();
        Some(RequestId::new(id.to_string().parse().ok()?))
    }
}

/// At most `HTTP_MAX_IN_FLIGHT` requests are worked on at once; one more is
/// refused at once (503 with Retry-After) instead of waiting, so a crowd
/// costs a fast answer each, not memory and time for all of them.
async fn limit_in_flight(
    State(in_flight): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> axum::response::Response {
    match in_flight.try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::Busy {
            message: "too many requests at once; try again shortly".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response(),
    }
}

/// Makes the request id available to [`ApiError`]'s response body.
async fn scope_request_id(req: Request, next: Next) -> axum::response::Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    REQUEST_ID.scope(id, next.run(req)).await
}
