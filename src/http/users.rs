//! POST /v1/create_user: sign-up.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, RequestId},
};
use crate::users::{
    User,
    idempotency::{BadKey, IdempotencyKey},
    signup::SignedUp,
    validation::SignUp,
};

/// The header that makes a sign-up (or a request for a new link) safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Deserialize, ToSchema)]
pub struct CreateUserRequest {
    /// 3-100 characters: lowercase letters, digits, underscore.
    #[schema(min_length = 3, max_length = 100, pattern = "^[a-z0-9_]+$")]
    pub username: String,
    /// 3-100 characters: letters (any script) and spaces.
    #[schema(min_length = 3, max_length = 100, pattern = "^([^\\W\\d_]| )+$")]
    pub full_name: String,
    /// A valid address, 3-200 ASCII characters (an internationalised domain in
    /// its xn-- form).
    #[schema(format = "email", min_length = 3, max_length = 200)]
    pub email: String,
    /// 6-100 characters.
    #[schema(min_length = 6, max_length = 100, format = Password)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreateUserResponse {
    pub user: User,
}

/// The request's `Idempotency-Key` for `endpoint`, over `fields`; a bad
/// one is a 400.
pub(super) fn idempotency_key(
    headers: &HeaderMap,
    endpoint: &'static str,
    fields: &[&str],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .map_err(|_| BadKey)
        .and_then(|v| IdempotencyKey::new(endpoint, v, fields))
        .map(Some)
        .map_err(|e| ApiError::FailedPrecondition(e.to_string()))
}

/// Creates a user. The verification email is sent asynchronously: the user and
/// its task commit together, and the task runs after the configured delay.
///
/// With an `Idempotency-Key`, the request is safe to retry after a lost
/// reply: a retry with the same key and the same body within IDEMPOTENCY_TTL
/// (24 h) gets the first answer, with no second account or email.
#[utoipa::path(
    post,
    path = "/v1/create_user",
    request_body = CreateUserRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters (spaces inside), unique per sign-up (e.g. a UUID), optionally in double quotes; a retry with the same key and body within IDEMPOTENCY_TTL gets the first answer", pattern = "^[!-~]([ -~]{0,253}[!-~])?$"),
    ),
    responses(
        (status = 200, description = "User created (or, for a retry with its Idempotency-Key, the first answer again)", body = CreateUserResponse),
        (status = 400, description = "Malformed JSON, invalid fields, or an invalid Idempotency-Key", body = ErrorBody),
        (status = 409, description = "Username or email (in any case) already exists, or a request with this Idempotency-Key is in progress", body = ErrorBody),
        (status = 422, description = "This Idempotency-Key was used for another request", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Too many requests, or too many sign-ups and link requests (HTTP_SIGNUP_RATE_LIMIT), from this client address; or the address is another spelling (a +tag, Gmail's dots) of a mailbox sent as many emails as it may have for now (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Database unavailable, or too many sign-ups at once (see Retry-After)", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    tag = "users"
)]
pub async fn create_user(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<Response, ApiError> {
    let fields = [&*req.username, &*req.full_name, &*req.email];
    let key = idempotency_key(&headers, "create_user", &fields)?;
    let signup = SignUp::parse(req.username, req.full_name, req.email, req.password)
        .map_err(ApiError::invalid)?;
    let (user, replayed) = match state
        .signups
        .create(signup, request_id, key.as_ref())
        .await?
    {
        SignedUp::Created(user) => (user, false),
        SignedUp::Replayed(user) => (user, true),
    };
    let mut response = (StatusCode::OK, Json(CreateUserResponse { user })).into_response();
    if replayed {
        // Not required by the draft; tells a client its retry changed nothing.
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}
