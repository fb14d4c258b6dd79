//! What travels through the queue: the message a producer enqueues, and the
//! task a handler is given.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A task as enqueued. The id is the outbox row id, so enqueuing the same row
/// twice is a no-op.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    /// JSON text, passed to the handler as is.
    pub payload: String,
    pub max_retry: u32,
    pub timeout: Duration,
    /// When the task may run; in the past or now means at once.
    pub process_at: DateTime<Utc>,
}

/// A task handed to a handler.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: i64,
    pub kind: String,
    pub queue: String,
    pub payload: String,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    pub max_retry: u32,
    pub timeout: Duration,
    /// Numbers this hand-out of the task; fences off a worker whose lease expired.
    pub(crate) delivery: String,
}

impl Task {
    /// The payload decoded as `T`; a payload that does not decode cannot succeed
    /// on a retry either, so the error skips retries.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, super::TaskError> {
        serde_json::from_str(&self.payload)
            .map_err(|e| super::TaskError::skip_retry(anyhow::anyhow!("invalid payload: {e}")))
    }
}
