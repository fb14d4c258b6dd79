//! The send log: one `email_sends` row per attempt to send a task's email,
//! and what became of it.
//!
//! It does two jobs. `tasks show` prints it, so an operator sees every
//! attempt, not only the last error. And it keeps a send whose outcome is
//! unknown from being repeated blindly: a row is written once the server
//! waits for the message (DATA's 354) and *before* the message and its final
//! dot go out, so a later run finds "handed over, no reply" (the reply to the
//! dot never came in time, or the worker died or was shut down meanwhile)
//! and waits, instead of sending a second copy at once. A worker that died
//! while writing the body is read the same way: nothing went out, but
//! nothing tells, so the cost is a delay, never a copy. That holds across processes and a lost lease, which is why it is in
//! Postgres and not in the run's memory.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::queue::{Task, TaskId};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server took the message (250 to the final dot).
    Sent,
    /// Refused for good: this recipient or this message.
    Refused,
    /// Failed for a reason of its own; retried with backoff.
    Failed,
    /// The sender, not the message, was refused (or the server was down):
    /// the task waits, uncounted, while the worker's breaker holds back.
    SenderSide,
    /// Handed over and no reply in time: it may or may not have been sent.
    Unknown,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::SenderSide => "sender_side",
            Self::Unknown => "unknown",
        }
    }
}

/// The latest attempt of a task that handed its message over.
#[derive(Debug, Clone)]
pub struct HandedOver {
    pub at: DateTime<Utc>,
    /// How long ago, on the database's clock.
    pub age: std::time::Duration,
    /// `None`: no reply was recorded (still waiting, or its worker died).
    pub outcome: Option<String>,
}

impl HandedOver {
    /// The server took it: sending again would repeat the email.
    pub fn was_sent(&self) -> bool {
        self.outcome.as_deref() == Some(Outcome::Sent.as_str())
    }

    /// No reply is known: the email may have gone out.
    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome.as_deref(), None | Some("unknown"))
    }
}

/// One attempt, for `tasks show`.
#[derive(Debug, serde::Serialize)]
pub struct Attempt {
    pub attempt: i32,
    pub delivery: i64,
    pub message_id: String,
    pub started_at: DateTime<Utc>,
    pub handed_over_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The send log of one task run.
#[derive(Debug, Clone)]
pub struct SendLog {
    pool: PgPool,
}

/// A row written at the hand-over, waiting for its outcome.
#[derive(Debug, Clone, Copy)]
pub struct Pending(i64);

impl SendLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The latest attempt of `task` that handed its message over.
    pub async fn last_handed_over(&self, task: TaskId) -> Result<Option<HandedOver>, sqlx::Error> {
        let row = sqlx::query_file!("sql/email_sends/last_handed_over.sql", task.get())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| HandedOver {
            at: r.handed_over_at,
            age: std::time::Duration::try_from_secs_f64(r.age_secs).unwrap_or_default(),
            outcome: r.outcome,
        }))
    }

    /// `task`'s attempt, begun at `started`, is about to write the message
    /// `message_id` and its final dot.
    pub async fn handing_over(
        &self,
        task: &Task,
        message_id: &str,
        started: DateTime<Utc>,
    ) -> Result<Pending, sqlx::Error> {
        let id = sqlx::query_file_scalar!(
            "sql/email_sends/handing_over.sql",
            task.id.get(),
            attempt(task),
            task.delivery.0 as i64,
            message_id,
            started,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Pending(id))
    }

    /// What became of the handed-over attempt `pending`.
    pub async fn finished(
        &self,
        pending: Pending,
        outcome: Outcome,
        detail: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query_file!(
            "sql/email_sends/finished.sql",
            pending.0,
            outcome.as_str(),
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `task`'s attempt, begun at `started`, ended before the hand-over.
    pub async fn failed_before_handover(
        &self,
        task: &Task,
        message_id: &str,
        started: DateTime<Utc>,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query_file!(
            "sql/email_sends/failed_before_handover.sql",
            task.id.get(),
            attempt(task),
            task.delivery.0 as i64,
            message_id,
            started,
            outcome.as_str(),
            detail,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Every send attempt of task `id`, oldest first.
pub async fn attempts(pool: &PgPool, id: TaskId) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_file_as!(Attempt, "sql/email_sends/by_task.sql", id.get())
        .fetch_all(pool)
        .await
}

fn attempt(task: &Task) -> i32 {
    i32::try_from(task.attempt).unwrap_or(i32::MAX)
}
