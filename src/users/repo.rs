//! Persistence of users. The user row is inserted in the transaction that
//! carries its task (see [`super::signup`]): both commit or neither does.

use sqlx::{PgConnection, PgPool};

use super::{User, validation::SignUp};

/// Which unique value a sign-up collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Username,
    Email,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("{0:?} already exists")]
    Taken(Taken),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Inserts the user of `signup` with its password hash on `conn`, a
/// connection in the caller's transaction (the one that carries its task).
pub async fn insert(
    conn: &mut PgConnection,
    signup: &SignUp,
    hashed_password: &str,
) -> Result<User, CreateUserError> {
    sqlx::query_file_as!(
        User,
        "sql/users/insert.sql",
        signup.username(),
        hashed_password,
        signup.full_name(),
        signup.email()
    )
    .fetch_one(conn)
    .await
    .map_err(|e| match unique_violation(&e) {
        Some("users_pkey") => CreateUserError::Taken(Taken::Username),
        Some("users_email_key" | "users_email_lower_key") => CreateUserError::Taken(Taken::Email),
        _ => CreateUserError::Db(e),
    })
}

/// Which of `username` and `email` (in any case) an account has already;
/// `None` when neither. Cheap, so sign-up asks before hashing the password.
pub async fn taken(
    pool: &PgPool,
    username: &str,
    email: &str,
) -> Result<Option<Taken>, sqlx::Error> {
    let row = sqlx::query_file!("sql/users/taken.sql", username, email)
        .fetch_one(pool)
        .await?;
    Ok(if row.username {
        Some(Taken::Username)
    } else if row.email {
        Some(Taken::Email)
    } else {
        None
    })
}

pub async fn get(pool: &PgPool, username: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_file_as!(User, "sql/users/get.sql", username)
        .fetch_optional(pool)
        .await
}

/// The constraint a unique violation names, if `e` is one.
fn unique_violation(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}
