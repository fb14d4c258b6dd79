//! GET /v1/verify_email: the link from the verification email; and
//! POST /v1/resend_verify_email: a new link, for one that expired or got lost.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiQuery, RequestId},
};
use crate::users::{
    validation::{self, Violations},
    verify_email::{self, Resend},
};

/// Both are read as text so that a malformed value is reported as a field
/// violation, like every other invalid input.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyEmailParams {
    /// The id from the link: a positive integer.
    #[param(value_type = i64, required = true, minimum = 1)]
    pub email_id: Option<String>,
    /// The secret code from the link: 32-128 characters.
    #[param(value_type = String, required = true, min_length = 32, max_length = 128)]
    pub secret_code: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VerifyEmailResponse {
    pub is_verified: bool,
}

/// Verifies the email address the link was sent to, and marks the link used.
#[utoipa::path(
    get,
    path = "/v1/verify_email",
    params(VerifyEmailParams),
    responses(
        (status = 200, description = "Address verified", body = VerifyEmailResponse),
        (status = 400, description = "Invalid parameters, or the link was used or has expired", body = ErrorBody),
        (status = 404, description = "No such link", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    tag = "users"
)]
pub async fn verify_email(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<VerifyEmailParams>,
) -> Result<Json<VerifyEmailResponse>, ApiError> {
    let email_id = params.email_id.as_deref().unwrap_or("");
    let code = params.secret_code.as_deref().unwrap_or("");
    let id = email_id.parse::<i64>();
    let mut v = Violations::default();
    v.check(
        "email_id",
        id.as_ref()
            .map_err(|_| "must be a positive integer".to_owned())
            .and_then(|id| validation::positive_id(*id)),
    )
    .check("secret_code", validation::length(code, 32, 128));
    v.finish().map_err(ApiError::invalid)?;

    verify_email::verify(&state.pool, id.unwrap_or_default(), code).await?;
    Ok(Json(VerifyEmailResponse { is_verified: true }))
}

#[derive(Deserialize, ToSchema)]
pub struct ResendVerifyEmailRequest {
    /// The address the account signed up with (any case).
    #[schema(format = "email", min_length = 3, max_length = 200)]
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct ResendVerifyEmailResponse {
    pub message: &'static str,
}

/// Sends a new verification link to `email`, if an account that is not
/// verified yet has that address. The answer is the same either way, so it
/// tells nobody which addresses have accounts. One mailbox (its address in
/// any case, with or without a `+tag`, and at Gmail with or without dots)
/// is sent at most VERIFY_EMAIL_RESEND_MAX (5) new links per
/// VERIFY_EMAIL_RESEND_WINDOW (24 h), the first VERIFY_EMAIL_RESEND_INTERVAL
/// (60 s) after the last and each later one twice as long after the one
/// before, whoever asks; and one client address may make at most
/// HTTP_SIGNUP_RATE_LIMIT of these requests and sign-ups an hour.
#[utoipa::path(
    post,
    path = "/v1/resend_verify_email",
    request_body = ResendVerifyEmailRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters (spaces inside), unique per request, optionally in double quotes; a retry with the same key and body within IDEMPOTENCY_TTL gets the same 202 and sends nothing again", pattern = "^[!-~]([ -~]{0,253}[!-~])?$"),
    ),
    responses(
        (status = 202, description = "Accepted: a link is sent if the address has an unverified account (or, for a retry with its Idempotency-Key, accepted before)", body = ResendVerifyEmailResponse),
        (status = 400, description = "Malformed JSON, an invalid address, or an invalid Idempotency-Key", body = ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is in progress", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used for another request", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "This mailbox was sent new links too often, or this client made too many of these requests and sign-ups; see Retry-After", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    tag = "users"
)]
pub async fn resend_verify_email(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ResendVerifyEmailRequest>,
) -> Result<(StatusCode, Json<ResendVerifyEmailResponse>), ApiError> {
    let key = super::users::idempotency_key(&headers, "resend_verify_email", &[&req.email])?;
    let mut v = Violations::default();
    v.check("email", validation::email(&req.email));
    v.finish().map_err(ApiError::invalid)?;
    let outcome = state
        .signups
        .resend_link(&req.email, request_id, key.as_ref())
        .await?;
    match outcome {
        Resend::TooSoon { retry_after } => Err(ApiError::TooManyRequests {
            message: "new links were asked for this address too often; try again later".into(),
            retry_after,
        }),
        Resend::KeyReused => Err(ApiError::Unprocessable(
            "this Idempotency-Key was used for another request".into(),
        )),
        Resend::KeyInProgress => Err(ApiError::Conflict(
            "a request with this Idempotency-Key is in progress; retry shortly".into(),
        )),
        Resend::Queued { .. } | Resend::NothingToSend | Resend::Replayed => Ok(accepted()),
    }
}

fn accepted() -> (StatusCode, Json<ResendVerifyEmailResponse>) {
    (
        StatusCode::ACCEPTED,
        Json(ResendVerifyEmailResponse {
            message: "if an account that is not verified yet has this address, a new verification link is on its way",
        }),
    )
}
