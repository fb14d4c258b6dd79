//! A reliable task queue on Redis.
//!
//! Producers enqueue [`TaskMessage`]s through the [`Broker`]; a [`WorkerServer`]
//! takes them under a lease, runs the [`Handler`] registered for their kind,
//! and acknowledges, retries with backoff, or archives them. Every Redis
//! operation lives in [`broker`]; the worker's files only orchestrate:
//! [`server`] (fetching and recording outcomes), [`handler`] (the handler
//! interface), `maintenance` (forwarding due tasks, keeping leases, wake-ups)
//! and `ack` (batched acknowledgements).
//!
//! Lifecycle: scheduled -> pending -> active -> completed | retry -> pending ... | archived.

mod ack;
pub mod broker;
pub mod connection;
pub mod fence;
pub mod handler;
mod maintenance;
pub mod retry;
mod run;
pub mod server;
pub mod task;

pub use broker::{
    AckOutcome, ArchiveLimits, Broker, FailOutcome, Forwarded, QueueStats, Repair, RequeueOutcome,
};
pub use fence::Fenced;
pub use handler::{Handler, HandlerRegistry, Ledger, Processed, handler_fn};
pub use retry::RetryPolicy;
pub use server::{WorkerServer, WorkerSettings};
pub use task::{Delivery, Task, TaskInfo, TaskMessage, TaskState};

/// A failure of a queue operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached, or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A script (or a read) answered something of the wrong shape: the scripts
    /// and this build do not match, or the data was changed by hand.
    #[error("redis: unexpected reply from {script}: {detail}")]
    Reply {
        script: &'static str,
        detail: String,
    },
    /// Tasks in this state have no index to list them from.
    #[error("tasks in state {0} cannot be listed")]
    NotListable(TaskState),
    /// The enqueue reached fewer replicas than REDIS_WAIT_REPLICAS in time:
    /// a failover now could lose it, so it does not count as done.
    #[error("redis: the enqueue reached {got} of {wanted} replicas within {within:?}")]
    NotReplicated {
        wanted: u32,
        got: u32,
        within: std::time::Duration,
    },
}

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
    /// Stopped before its effect by [`Task::fence`]; see [`Fenced`].
    Fenced(Fenced),
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
            Self::Fenced(why) => write!(f, "stopped before its effect: {why}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for TaskError {
    fn from(e: E) -> Self {
        Self::Retry(e.into())
    }
}
