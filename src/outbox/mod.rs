//! The transactional outbox.
//!
//! [`Outbox`] ([`write`]) inserts task rows inside the caller's transaction,
//! so they commit if and only if the caller's own rows do, and wakes the
//! relays after the commit. [`relay`] forwards committed rows to their Redis
//! queues, each queue read from its [`position`] (kept by [`positions`]).
//! Rows are never updated or deleted one by one: [`partitions`] retires them
//! a partition at a time. [`wake`] holds both halves of the wake-up, without
//! a NOTIFY inside the writing transaction.

mod held;
mod legacy;
pub mod partitions;
pub mod position;
pub mod positions;
pub mod read;
pub mod relay;
mod session;
pub mod stats;
pub mod wake;
pub mod write;

pub use write::{NewTask, Outbox, OutboxTx};

use chrono::{DateTime, Utc};

use crate::queue::TaskMessage;

/// One outbox row as the relay reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    /// JSON text: read as text, it goes to Redis without being parsed and
    /// printed again.
    pub payload: String,
    pub max_retry: i32,
    pub timeout_ms: i64,
    pub process_at: DateTime<Utc>,
    pub request_id: Option<String>,
    /// When the sign-up's transaction wrote it: the start of the
    /// commit-to-handled latency.
    pub created_at: DateTime<Utc>,
    /// The trace context of the span that wrote it ([`crate::telemetry::context`]).
    pub trace_context: Option<String>,
}

impl From<OutboxRow> for TaskMessage {
    fn from(r: OutboxRow) -> Self {
        TaskMessage {
            id: r.id.into(),
            kind: r.kind,
            queue: r.queue,
            payload: r.payload,
            max_retry: r.max_retry.max(0) as u32,
            timeout: std::time::Duration::from_millis(r.timeout_ms.max(1) as u64),
            process_at: r.process_at,
            request_id: r.request_id,
            created_at: r.created_at,
            trace_context: r.trace_context,
        }
    }
}

/// The channel relays LISTEN on.
pub const NOTIFY_CHANNEL: &str = "simplebank_outbox";
