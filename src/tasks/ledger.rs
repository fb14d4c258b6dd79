//! The processed-task ledger: one Postgres row per task whose run completed.
//!
//! Redis delivers at least once (an expired lease, a relay redelivery), so a
//! task may arrive again after it ran. [`Ledgered`] looks the task up first and
//! acknowledges a completed one without running it; after a successful run it
//! records "task <id> done" in its own commit. Handlers whose only effects are
//! database writes should call [`mark_done`] in their own transaction instead,
//! which makes the run and its record one atomic step.
//!
//! The duplicate that remains: a crash (or a lost connection) after an external
//! side effect, such as the SMTP server accepting an email, and before the
//! ledger commit. The task then runs again and repeats the side effect. Handlers
//! key their rows by task id, so the repeat is identical (same email, same link).

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use crate::queue::{Handler, Processed, Task, TaskError};

/// Whether task `task_id` already completed.
pub async fn is_done(pool: &PgPool, task_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_file_scalar!("sql/ledger/is_done.sql", task_id)
        .fetch_one(pool)
        .await
}

/// Records task `task_id` as done, on `conn` (a pool connection or a transaction).
pub async fn mark_done(
    conn: &mut PgConnection,
    task_id: i64,
    kind: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query_file!("sql/ledger/mark_done.sql", task_id, kind)
        .execute(conn)
        .await?;
    Ok(())
}

/// Wraps a handler with the ledger check before and the ledger record after.
pub struct Ledgered<H> {
    pool: PgPool,
    inner: H,
}

impl<H> Ledgered<H> {
    pub fn new(pool: PgPool, inner: H) -> Self {
        Self { pool, inner }
    }
}

impl<H: Handler> Handler for Ledgered<H> {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Processed, TaskError>> {
        Box::pin(async move {
            if is_done(&self.pool, task.id).await? {
                tracing::info!("task already completed: acknowledged without running it again");
                return Ok(Processed::default().with("skipped", "already in the ledger"));
            }
            let processed = self.inner.handle(task).await?;
            let mut conn = self.pool.acquire().await?;
            mark_done(&mut conn, task.id, &task.kind).await?;
            Ok(processed)
        })
    }
}
