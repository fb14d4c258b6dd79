//! POST /v1/create_user: sign-up.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, RequestId},
};
use crate::users::{User, validation::SignUp};

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

/// Creates a user. The verification email is sent asynchronously: the user and
/// its task commit together, and the task runs after the configured delay.
#[utoipa::path(
    post,
    path = "/v1/create_user",
    request_body = CreateUserRequest,
    responses(
        (status = 200, description = "User created", body = CreateUserResponse),
        (status = 400, description = "Malformed JSON or invalid fields", body = ErrorBody),
        (status = 409, description = "Username or email (in any case) already exists", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "Too many requests from this address (see Retry-After)", body = ErrorBody),
        (status = 503, description = "Database unavailable, or too many sign-ups at once (see Retry-After)", body = ErrorBody),
        (status = 500, description = "Unexpected error", body = ErrorBody),
    ),
    tag = "users"
)]
pub async fn create_user(
    State(state): State<AppState>,
    RequestId(request_id): RequestId,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> Result<Json<CreateUserResponse>, ApiError> {
    let signup = SignUp::parse(req.username, req.full_name, req.email, req.password)
        .map_err(ApiError::invalid)?;
    let user = state.signups.create(signup, request_id).await?;
    Ok(Json(CreateUserResponse { user }))
}
