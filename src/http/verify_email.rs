//! GET /v1/verify_email: the link from the verification email.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, error::ApiError, error::ErrorBody, extract::ApiQuery};
use crate::users::{validation, validation::Violations, verify_email};

/// Both are read as text so that a malformed value is reported as a field
/// violation, like every other invalid input.
#[derive(Deserialize, IntoParams)]
pub struct VerifyEmailParams {
    /// The id from the link: a positive integer.
    #[param(value_type = i64)]
    pub email_id: Option<String>,
    /// The secret code from the link: 32-128 characters.
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
