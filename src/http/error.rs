//! The one place errors become HTTP responses.
//!
//! Every error answers JSON of one shape, `{"code", "message", "details",
//! "request_id"}`. Internal details (SQL, stack traces, Redis errors) are logged
//! with the request id and never returned.

use axum::{
    Json,
    extract::rejection::{JsonRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::users::{
    FieldViolation, password::HashError, repo::CreateUserError, repo::Taken, signup::SignUpError,
    verify_email::VerifyError,
};

tokio::task_local! {
    /// The id of the request being served, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidArgument {
        message: String,
        details: Vec<FieldViolation>,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A request that collides with another now (409).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but refused as it stands (422).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Overloaded: try again after `retry_after`.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: invalid_argument, failed_precondition, already_exists,
    /// conflict, unprocessable, not_found, method_not_allowed, payload_too_large, unsupported_media_type,
    /// too_many_requests, unavailable, internal.
    pub code: &'static str,
    pub message: String,
    /// The violated fields, for invalid_argument.
    pub details: Vec<FieldViolation>,
    /// Also in the log line of the failure.
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn invalid(details: Vec<FieldViolation>) -> Self {
        Self::InvalidArgument {
            message: "invalid request".into(),
            details,
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Self::FailedPrecondition(_) => (StatusCode::BAD_REQUEST, "failed_precondition"),
            Self::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Unavailable(_) | Self::Busy { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            Self::Internal(e) => {
                tracing::error!(error = crate::queue::one_line(e.as_ref()), "internal error");
                "internal error".to_owned()
            }
            _ => self.to_string(),
        };
        let retry_after = match &self {
            // Whole seconds, rounded up: the header has no finer unit.
            Self::TooManyRequests { retry_after, .. } | Self::Busy { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => None,
        };
        let details = match self {
            Self::InvalidArgument { details, .. } => details,
            _ => Vec::new(),
        };
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let mut response = (
            status,
            Json(ErrorBody {
                code,
                message,
                details,
                request_id,
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Connection-level failures mean Postgres is unreachable: 503, not 500. So
/// do the errors that pass when tried again (see the list below).
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Class 08 (connection), 53 (out of resources, say too many
        // connections), 57P01-57P03 (shutting down, starting), 57014 (a
        // statement timeout), 25006 (read-only: a replica after a failover),
        // 40001 and 40P01 (serialization failure, deadlock): all pass.
        let server_going = |e: &sqlx::Error| match e {
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("53")
                    || matches!(
                        &*c,
                        "57P01" | "57P02" | "57P03" | "57014" | "25006" | "40001" | "40P01"
                    )
            }),
            _ => false,
        };
        match e {
            e if server_going(&e) => {
                tracing::warn!(error = %e, "postgres unavailable");
                Self::Unavailable("database unavailable".into())
            }
            // Every connection busy: overload, not an outage.
            sqlx::Error::PoolTimedOut => Self::Busy {
                message: "too busy to answer now; try again shortly".into(),
                retry_after: std::time::Duration::from_secs(1),
            },
            // A protocol error is a connection that broke off mid-exchange:
            // a proxy in front of a Postgres that is down accepts and closes,
            // and the client reads a zero where the handshake's answer was.
            sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => {
                tracing::warn!(error = %e, "postgres unavailable");
                Self::Unavailable("database unavailable".into())
            }
            e => Self::Internal(e.into()),
        }
    }
}

impl From<CreateUserError> for ApiError {
    fn from(e: CreateUserError) -> Self {
        match e {
            CreateUserError::Taken(Taken::Username) => {
                Self::AlreadyExists("username already exists".into())
            }
            CreateUserError::Taken(Taken::Email) => {
                Self::AlreadyExists("email already exists".into())
            }
            CreateUserError::Db(e) => e.into(),
        }
    }
}

impl From<SignUpError> for ApiError {
    fn from(e: SignUpError) -> Self {
        match e {
            SignUpError::Create(e) => e.into(),
            SignUpError::Hash(e) => e.into(),
            e @ SignUpError::KeyReused => Self::Unprocessable(e.to_string()),
            e @ SignUpError::KeyInProgress => Self::Conflict(e.to_string()),
            e @ SignUpError::MailboxBusy { retry_after } => Self::TooManyRequests {
                message: e.to_string(),
                retry_after,
            },
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            // A wrong code says no more than an unknown id.
            VerifyError::NotFound | VerifyError::WrongCode => {
                Self::NotFound(VerifyError::NotFound.to_string())
            }
            VerifyError::Used | VerifyError::Expired => Self::FailedPrecondition(e.to_string()),
            VerifyError::Db(e) => e.into(),
        }
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy { retry_after } => Self::Busy {
                message: "too many sign-ups at once; try again shortly".into(),
                retry_after,
            },
            e => Self::Internal(e.into()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge("request body is too large".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(
                "expected request with `Content-Type: application/json`".into(),
            ),
            _ => Self::InvalidArgument {
                message: r.body_text(),
                details: Vec::new(),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::InvalidArgument {
            message: r.body_text(),
            details: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_broke_off_is_503_not_500() {
        let cases = [
            sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into()),
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
            sqlx::Error::PoolClosed,
        ];
        for e in cases {
            let shown = e.to_string();
            assert_eq!(
                ApiError::from(e).parts(),
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                "{shown}"
            );
        }
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).parts().0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
