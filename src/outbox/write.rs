//! The write side: [`Outbox`] owns the whole protocol of writing a task. Rows
//! are inserted in the caller's transaction ([`OutboxTx::insert`]), so they
//! commit if and only if the caller's own rows do, and [`OutboxTx::commit`]
//! wakes the relays once they are committed. The service has no other way to
//! write an outbox row, so no writer can forget the wake-up.

use std::{
    ops::{Deref, DerefMut},
    time::Duration,
};

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use tracing::Instrument;

use super::wake::RelayWaker;
use crate::{queue::TaskId, telemetry};

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

/// The outbox of one database; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    pool: PgPool,
    waker: RelayWaker,
}

impl Outbox {
    pub fn new(pool: PgPool, waker: RelayWaker) -> Self {
        Self { pool, waker }
    }

    /// The database the outbox lives in, for the caller's reads outside a
    /// transaction.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begins a transaction in which the caller writes its own rows and the
    /// outbox rows that go with them. Dropped without [`OutboxTx::commit`],
    /// it rolls back, tasks and all.
    pub async fn begin(&self) -> Result<OutboxTx<'_>, sqlx::Error> {
        Ok(OutboxTx {
            tx: self.pool.begin().await?,
            waker: &self.waker,
            inserted: false,
        })
    }
}

/// A transaction that may carry outbox rows. It derefs to its connection for
/// the caller's own statements.
pub struct OutboxTx<'a> {
    tx: Transaction<'static, Postgres>,
    waker: &'a RelayWaker,
    inserted: bool,
}

impl OutboxTx<'_> {
    /// Inserts `task` and returns its id, which is the task id for the task's
    /// whole life. It runs only if the transaction commits.
    ///
    /// The insert is the task's "create" span (OpenTelemetry's messaging
    /// conventions), whose context the row keeps: the task's first run is
    /// its child.
    pub async fn insert(&mut self, task: &NewTask) -> Result<TaskId, sqlx::Error> {
        let span = telemetry::span_if_traced(|| {
            tracing::info_span!(
                "create",
                otel.name = format!("create {}", task.queue),
                otel.kind = "producer",
                messaging.system = telemetry::MESSAGING_SYSTEM,
                messaging.operation.type = "create",
                messaging.destination.name = %task.queue,
                messaging.message.id = tracing::field::Empty,
            )
        });
        let trace_context = telemetry::context::capture(&span);
        let id = sqlx::query_file_scalar!(
            "sql/outbox/insert.sql",
            task.kind,
            task.queue,
            task.payload,
            task.max_retry as i32,
            task.timeout.as_millis() as i64,
            task.process_in.as_millis() as f64,
            task.request_id,
            trace_context,
        )
        .fetch_one(&mut *self.tx)
        .instrument(span.clone())
        .await?;
        span.record("messaging.message.id", tracing::field::display(id));
        self.inserted = true;
        Ok(TaskId::from(id))
    }

    /// Commits, then wakes the relays if a task was inserted. The wake-up
    /// comes after the commit, never inside it: a NOTIFY in the transaction
    /// would serialize every commit on Postgres's notify lock (see
    /// [`super::wake`]).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await?;
        if self.inserted {
            self.waker.wake();
        }
        Ok(())
    }
}

impl Deref for OutboxTx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for OutboxTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
