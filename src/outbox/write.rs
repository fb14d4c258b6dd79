//! The write side: a task row inserted in the caller's transaction.

use std::time::Duration;

use sqlx::PgConnection;

use crate::queue::TaskId;

/// A task to be run once the surrounding transaction commits.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub kind: &'static str,
    pub queue: String,
    pub payload: serde_json::Value,
    pub max_retry: u32,
    pub timeout: Duration,
    pub process_in: Duration,
    /// The HTTP request that wrote it, carried into the task's log lines.
    pub request_id: Option<String>,
}

impl NewTask {
    /// The task, carrying the id of the request that caused it.
    pub fn caused_by(self, request_id: Option<String>) -> Self {
        Self { request_id, ..self }
    }
}

/// Inserts `task` on `conn` (a connection inside the caller's transaction) and
/// returns its id, which is the task id for the task's whole life.
pub async fn insert(conn: &mut PgConnection, task: &NewTask) -> Result<TaskId, sqlx::Error> {
    let id = sqlx::query_file_scalar!(
        "sql/outbox/insert.sql",
        task.kind,
        task.queue,
        task.payload,
        task.max_retry as i32,
        task.timeout.as_millis() as i64,
        task.process_in.as_millis() as f64,
        task.request_id,
    )
    .fetch_one(conn)
    .await?;
    Ok(TaskId::from(id))
}
