//! Email verification: a secret code per send of a verify-email task, kept
//! only as its hash, and its use.

use std::time::Duration;

use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{
    idempotency::{IdempotencyKey, Prior},
    mailbox,
};
use crate::{
    config::ResendLimits,
    outbox::{NewTask, Outbox},
    queue::TaskId,
};

/// A verification link about to be sent: the row's id and address, and the
/// secret code, which exists only here and in the email (the row keeps its
/// SHA-256).
#[derive(Debug, Clone)]
pub struct VerifyEmail {
    pub id: i64,
    pub email: String,
    pub secret_code: String,
}

fn hash_code(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// Equal in time that does not depend on where they differ.
fn same_hash(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// The verification row of task `task_id`, about to be sent, with a new code:
/// the row is created by the task's first attempt and reused by later ones
/// (one row per task); each send adds its code's hash, valid for `ttl` from
/// that send, so an attempt after a long mail outage sends a link that
/// works, and a link sent before keeps working until its own expiry.
pub async fn get_or_create_for_task(
    pool: &PgPool,
    task_id: TaskId,
    username: &str,
    email: &str,
    ttl: Duration,
) -> Result<VerifyEmail, sqlx::Error> {
    let code = secret_code();
    let mut tx = pool.begin().await?;
    let row = sqlx::query_file!(
        "sql/verify_emails/get_or_create_for_task.sql",
        task_id.get(),
        username,
        email
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query_file!(
        "sql/verify_emails/add_code.sql",
        row.id,
        &hash_code(&code)[..],
        ttl.as_secs_f64()
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(VerifyEmail {
        id: row.id,
        email: row.email,
        secret_code: code,
    })
}

/// What became of a request for a new verification link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resend {
    /// A new link is on its way (task `task_id`).
    Queued { task_id: TaskId },
    /// No unverified account has this address: nothing to send.
    NothingToSend,
    /// The mailbox is over its limits (see [`ResendLimits`]); it may ask
    /// again after `retry_after`.
    TooSoon { retry_after: Duration },
    /// A retry of a request with its Idempotency-Key, answered before:
    /// nothing done again.
    Replayed,
    /// The Idempotency-Key was used for another request.
    KeyReused,
    /// A request with the Idempotency-Key is in its transaction now.
    KeyInProgress,
}

/// Counts one email to `email`'s mailbox ([`mailbox::key`]: spellings of
/// one mailbox share it) against `limits`, in `conn`'s transaction; or,
/// when the mailbox is over them, how long until it may have one.
pub async fn claim_send(
    conn: &mut sqlx::PgConnection,
    email: &str,
    limits: ResendLimits,
) -> Result<Option<Duration>, sqlx::Error> {
    let (interval, window) = (limits.interval.as_secs_f64(), limits.window.as_secs_f64());
    let max = i32::try_from(limits.max).unwrap_or(i32::MAX);
    let mailbox = mailbox::key(email);
    let claimed = sqlx::query_file_scalar!(
        "sql/verify_emails/claim_resend.sql",
        mailbox,
        interval,
        max,
        window
    )
    .fetch_optional(&mut *conn)
    .await?;
    if claimed.is_some() {
        // After the claim, which may wait on its own row: a prune first
        // would lock other rows, and two requests each holding the row the
        // other waits for would deadlock.
        sqlx::query_file!("sql/verify_emails/prune_resends.sql", interval, window)
            .execute(&mut *conn)
            .await?;
        return Ok(None);
    }
    let wait = sqlx::query_file_scalar!(
        "sql/verify_emails/resend_wait.sql",
        mailbox,
        interval,
        max,
        window
    )
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(interval);
    // At least a second: a wait that ran out since the claim still gets a
    // Retry-After a client can use.
    Ok(Some(Duration::from_secs_f64(wait.clamp(1.0, window))))
}

/// Asks for a new verification email to `email`, within `limits` per
/// mailbox ([`mailbox::key`]: spellings of one mailbox share them), whether
/// or not the address belongs to anyone. The task, built by `task` from the
/// username, commits with the request.
pub async fn request_resend(
    outbox: &Outbox,
    email: &str,
    limits: ResendLimits,
    task: impl FnOnce(&str) -> NewTask,
    key: Option<(&IdempotencyKey, Duration)>,
) -> Result<Resend, sqlx::Error> {
    let mut tx = outbox.begin().await?;
    if let Some((key, ttl)) = key {
        if !key.lock(&mut tx).await? {
            return Ok(Resend::KeyInProgress);
        }
        match key.prior(&mut tx, ttl).await? {
            Prior::New => {}
            Prior::Answered { .. } => return Ok(Resend::Replayed),
            Prior::Mismatch => return Ok(Resend::KeyReused),
        }
    }
    if let Some(retry_after) = claim_send(&mut tx, email, limits).await? {
        return Ok(Resend::TooSoon { retry_after });
    }
    let username = sqlx::query_file_scalar!("sql/users/unverified_by_email.sql", email)
        .fetch_optional(&mut *tx)
        .await?;
    let outcome = match username {
        Some(username) => Resend::Queued {
            task_id: tx.insert(&task(&username)).await?,
        },
        None => Resend::NothingToSend,
    };
    // Only an accepted request is answered again; one refused as too soon
    // is not recorded, so its retry is judged afresh.
    if let Some((key, _)) = key {
        key.record(&mut tx, None, &serde_json::json!({})).await?;
    }
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

/// Marks the code used and its user verified, in one transaction. The code
/// is compared by its hash, in constant time.
pub async fn verify(pool: &PgPool, id: i64, code: &str) -> Result<(), VerifyError> {
    let mut tx = pool.begin().await?;
    let is_used = sqlx::query_file_scalar!("sql/verify_emails/lookup.sql", id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(VerifyError::NotFound)?;
    let codes = sqlx::query_file!("sql/verify_emails/codes.sql", id)
        .fetch_all(&mut *tx)
        .await?;
    let hash = hash_code(code);
    // Every code is compared, matched or not: the time taken says nothing.
    let matched = codes
        .iter()
        .fold(None, |found, c| match same_hash(&c.code_hash, &hash) {
            true => Some(c.is_live),
            false => found,
        });
    match matched {
        None => return Err(VerifyError::WrongCode),
        Some(_) if is_used => return Err(VerifyError::Used),
        Some(false) => return Err(VerifyError::Expired),
        Some(true) => {}
    }
    let username = sqlx::query_file_scalar!("sql/verify_emails/use_code.sql", id)
        .fetch_optional(&mut *tx)
        .await?
        // The row is locked since the look-up: it cannot have been used.
        .ok_or(VerifyError::Used)?;
    sqlx::query_file_scalar!("sql/users/mark_email_verified.sql", username)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_compare_by_hash() {
        let code = secret_code();
        assert_eq!(code.len(), SECRET_CODE_LEN);
        assert!(same_hash(&hash_code(&code), &hash_code(&code)));
        assert!(!same_hash(&hash_code(&code), &hash_code("other")));
        assert!(!same_hash(&hash_code(&code)[..31], &hash_code(&code)));
    }
}
