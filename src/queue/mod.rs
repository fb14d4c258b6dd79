//! A reliable task queue on Redis.
//!
//! Producers enqueue [`TaskMessage`]s with [`QueueClient`]; a [`WorkerServer`]
//! takes them under a lease, runs the handler registered for their kind, and
//! acknowledges, retries with backoff, or archives them. All state changes are
//! Lua scripts (see `scripts/`), each touching the keys of one queue
//! ([`keys`]), so each change is atomic.
//!
//! Lifecycle: scheduled -> pending -> active -> completed | retry -> pending ... | archived.

mod ack;
pub mod client;
pub mod connection;
pub mod keys;
mod scripts;
pub mod server;
pub mod task;

pub use client::{QueueClient, QueueStats, TaskInfo};
pub use server::{Handler, HandlerRegistry, Processed, WorkerServer, WorkerSettings, handler_fn};
pub use task::{Task, TaskMessage};

/// A failure talking to Redis.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct QueueError(#[from] pub fred::error::Error);

/// Why a handler run failed, and whether to try again.
///
/// Not a `std::error::Error` on purpose: that keeps the blanket `From` below
/// coherent, so handlers can use `?` on any error and get a retry.
#[derive(Debug)]
pub enum TaskError {
    /// Retried with backoff until max_retry, then archived.
    Retry(anyhow::Error),
    /// Archived at once: trying again cannot help (bad payload, missing user).
    SkipRetry(anyhow::Error),
}

impl TaskError {
    pub fn skip_retry(e: impl Into<anyhow::Error>) -> Self {
        Self::SkipRetry(e.into())
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry(e) | Self::SkipRetry(e) => write!(f, "{e:#}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for TaskError {
    fn from(e: E) -> Self {
        Self::Retry(e.into())
    }
}
