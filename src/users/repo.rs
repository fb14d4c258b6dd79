//! Persistence of users. Sign-up writes the user and its outbox row in one
//! transaction: both commit or neither does.

use sqlx::PgPool;

use super::User;
use crate::{
    outbox::write::{self, NewTask},
    queue::TaskId,
};

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

/// What sign-up stores.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub full_name: &'a str,
    pub email: &'a str,
    pub hashed_password: &'a str,
}

/// Inserts the user and the task's outbox row in one transaction; returns the
/// user and the task id.
pub async fn create_with_task(
    pool: &PgPool,
    user: &NewUser<'_>,
    task: &NewTask,
) -> Result<(User, TaskId), CreateUserError> {
    let mut tx = pool.begin().await?;
    let created = sqlx::query_file_as!(
        User,
        "sql/users/insert.sql",
        user.username,
        user.hashed_password,
        user.full_name,
        user.email
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match unique_violation(&e) {
        Some("users_pkey") => CreateUserError::Taken(Taken::Username),
        Some("users_email_key" | "users_email_lower_key") => CreateUserError::Taken(Taken::Email),
        _ => CreateUserError::Db(e),
    })?;
    let task_id = write::insert(&mut tx, task).await?;
    tx.commit().await?;
    Ok((created, task_id))
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
