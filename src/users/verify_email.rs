//! Email verification: a secret code per verify-email task, and its use.

use rand::{Rng, distr::Alphanumeric};
use sqlx::PgPool;

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

/// The verification row of task `task_id`: created by its first attempt,
/// returned unchanged to any later attempt, so every email of one task carries
/// the same link.
pub async fn get_or_create_for_task(
    pool: &PgPool,
    task_id: i64,
    username: &str,
    email: &str,
) -> Result<VerifyEmail, sqlx::Error> {
    sqlx::query_file_as!(
        VerifyEmail,
        "sql/verify_emails/get_or_create_for_task.sql",
        task_id,
        username,
        email,
        secret_code()
    )
    .fetch_one(pool)
    .await
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
