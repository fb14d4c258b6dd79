//! The user domain: sign-up input and its validation, password hashing,
//! persistence, the sign-up use cases (the user row and its outbox row in one
//! transaction), and email verification.

pub mod idempotency;
pub mod mailbox;
pub mod password;
pub mod repo;
pub mod signup;
pub mod validation;
pub mod verify_email;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use validation::FieldViolation;

/// A user as the API shows it: never the password or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub username: String,
    pub full_name: String,
    pub email: String,
    pub password_changed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub is_email_verified: bool,
}
