//! Email verification: a secret code per verify-email task, and its use.

use std::time::Duration;

use rand::{Rng, distr::Alphanumeric};
use sqlx::PgPool;

use crate::outbox::write::{self, NewTask};

/// The code a verification link carries.
#[derive(Debug, Clone)]
pub struct VerifyEmail {
    pub id: i64,
    pub email: String,
    pub secret_code: String,
}

/// Length of the secret code: 32 alphanumerics carry about 190 bits.
pub const SECRET_CODE_LEN: usize = 32;

fn secret_code() -> String {
    // ThreadRng is a CSPRNG (ChaCha, reseeded from the OS).
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(SECRET_CODE_LEN)
        .map(char::from)
        .collect()
}

/// The verification row of task `task_id`, about to be sent: created by its
/// first attempt and returned to any later attempt, so every email of one
/// task carries the same link; valid for `ttl` from this send (an attempt
/// after a long mail outage sends a link that works).
pub async fn get_or_create_for_task(
    pool: &PgPool,
    task_id: i64,
    username: &str,
    email: &str,
    ttl: Duration,
) -> Result<VerifyEmail, sqlx::Error> {
    sqlx::query_file_as!(
        VerifyEmail,
        "sql/verify_emails/get_or_create_for_task.sql",
        task_id,
        username,
        email,
        secret_code(),
        ttl.as_secs_f64()
    )
    .fetch_one(pool)
    .await
}

/// What became of a request for a new verification link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// A new link is on its way (task `task_id`).
    Queued { task_id: i64 },
    /// No unverified account has this address: nothing to send.
    NothingToSend,
    /// The address had a request within the interval.
    TooSoon,
}

/// Asks for a new verification email to `email`, at most once per
/// `interval` per address, whether or not the address belongs to anyone.
/// The task, built by `task` from the username, commits with the request.
pub async fn request_resend(
    pool: &PgPool,
    email: &str,
    interval: Duration,
    task: impl FnOnce(&str) -> NewTask,
) -> Result<Resend, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query_file!(
        "sql/verify_emails/prune_resends.sql",
        interval.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    let claimed = sqlx::query_file_scalar!(
        "sql/verify_emails/claim_resend.sql",
        email,
        interval.as_secs_f64()
    )
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        return Ok(Resend::TooSoon);
    }
    let username = sqlx::query_file_scalar!("sql/users/unverified_by_email.sql", email)
        .fetch_optional(&mut *tx)
        .await?;
    let outcome = match username {
        Some(username) => Resend::Queued {
            task_id: write::insert(&mut tx, &task(&username)).await?,
        },
        None => Resend::NothingToSend,
    };
    tx.commit().await?;
    Ok(outcome)
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verification link not found")]
    NotFound,
    #[error("verification code is wrong")]
    WrongCode,
    #[error("verification link was already used")]
    Used,
    #[error("verification link has expired")]
    Expired,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Marks the code used and its user verified, in one transaction.
pub async fn verify(pool: &PgPool, id: i64, code: &str) -> Result<(), VerifyError> {
    let mut tx = pool.begin().await?;
    let Some(username) = sqlx::query_file_scalar!("sql/verify_emails/use_code.sql", id, code)
        .fetch_optional(&mut *tx)
        .await?
    else {
        // Say why, for the client; the update above changed nothing.
        let row = sqlx::query_file!("sql/verify_emails/lookup.sql", id)
            .fetch_optional(&mut *tx)
            .await?;
        return Err(match row {
            None => VerifyError::NotFound,
            Some(r) if r.secret_code != code => VerifyError::WrongCode,
            Some(r) if r.is_used => VerifyError::Used,
            Some(_) => VerifyError::Expired,
        });
    };
    sqlx::query_file_scalar!("sql/users/mark_email_verified.sql", username)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
