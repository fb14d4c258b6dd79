//! The processed-task ledger: one Postgres row per task whose run completed.
//!
//! Redis delivers at least once (an expired lease, a relay redelivery), so a
//! task may arrive again after it ran. The worker looks each task up first and
//! acknowledges a completed one without running it; after a successful run it
//! records "task <id> done", trying again until the record commits rather than
//! running the task again (see [`crate::queue::Ledger`]). Handlers whose only
//! effects are database writes may call [`mark_done`] in their own transaction,
//! which makes the run and its record one atomic step.
//!
//! The duplicate that remains: the worker process dies (or is cut off from
//! Postgres until its shutdown) after an external side effect, such as the SMTP
//! server accepting an email, and before the ledger commit. The task then runs
//! again and repeats the side effect. Handlers key their rows by task id, so
//! the repeat is the same email to the same address; its link carries a new
//! code (codes are kept only as hashes), and both links work, each until its
//! own expiry.

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use crate::queue::{Broker, Ledger, QueueError, Repair, Task, TaskId};

/// Whether task `task_id` already completed.
pub async fn is_done(pool: &PgPool, task_id: TaskId) -> Result<bool, sqlx::Error> {
    sqlx::query_file_scalar!("sql/ledger/is_done.sql", task_id.get())
        .fetch_one(pool)
        .await
}

/// Records task `task_id` as done, on `conn` (a pool connection or a transaction).
pub async fn mark_done(
    conn: &mut PgConnection,
    task_id: TaskId,
    kind: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query_file!("sql/ledger/mark_done.sql", task_id.get(), kind)
        .execute(conn)
        .await?;
    Ok(())
}

/// Why a delete did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Deletes task `id` of `queue` for `actor`, for good: Redis drops it (with
/// a tombstone for `tombstone`), and the ledger records the delete in the
/// same step, so a redelivery from the outbox, a relay's retry or a Redis
/// that lost its tombstone never runs it: the worker finds the row and
/// acknowledges it unrun. The row is written in a transaction committed
/// only once Redis deleted the task; one Redis refuses (the task is running
/// or completed) leaves no row. A commit lost after Redis's delete leaves
/// the task deleted in Redis only, as before this record existed.
pub async fn delete_task(
    pool: &PgPool,
    broker: &Broker,
    queue: &str,
    id: TaskId,
    tombstone: std::time::Duration,
    actor: &str,
) -> Result<Repair, DeleteError> {
    let mut tx = pool.begin().await?;
    sqlx::query_file!("sql/ledger/mark_deleted.sql", id.get(), actor)
        .execute(&mut *tx)
        .await?;
    let repair = broker.delete(queue, id, tombstone, actor).await?;
    match repair {
        Repair::Done { .. } => tx.commit().await?,
        _ => tx.rollback().await?,
    }
    Ok(repair)
}

/// The ledger in Postgres, for the worker (see [`Ledger`]).
#[derive(Clone)]
pub struct PgLedger {
    pool: PgPool,
}

impl PgLedger {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Ledger for PgLedger {
    fn is_done<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { Ok(is_done(&self.pool, task.id).await?) })
    }

    fn mark_done<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            Ok(mark_done(&mut conn, task.id, &task.kind).await?)
        })
    }
}
