//! A reliable task queue on Redis.
//!
//! Producers enqueue [`TaskMessage`]s through the [`Broker`]; a [`WorkerServer`]
//! takes them under a lease, runs the [`Handler`] registered for their kind,
//! and acknowledges, retries with backoff, or archives them. Every Redis
//! operation lives in the broker (one Lua script per state change, each on the
//! keys of one queue, so each change is atomic and stays in one Cluster slot);
//! the worker's modules only orchestrate.
//!
//! # A task's life
//!
//! ```text
//! enqueue --> scheduled --(due)--> pending --(dequeue, lease)--> active
//!                                     ^                           |
//!                                     |  retry (backoff)          +--> completed (kept a while)
//!                                     +----- retry <--------------+--> archived  (retries used up)
//! ```
//!
//! An enqueue of a [`TaskId`] Redis already knows is a no-op, so a producer
//! may send the same task again after a lost reply. A worker that dies keeps
//! nothing: its lease runs out and the promoter moves the task to retry.
//!
//! # The fencing rule
//!
//! Each hand-out of a task carries a [`Delivery`] number, and every call that
//! changes a running task quotes it; Redis refuses the call once the number
//! moved on. A handler calls [`Task::fence`] right before an effect it cannot
//! undo: the fence renews the lease and passes only if this run will still
//! hold it, within its timeout, when the effect is over. Before the fence, a
//! lost lease or a shutdown stops the run; after it, the run is let finish.
//! An effect that ends in a long wait for its outcome (an SMTP server's reply
//! to the final dot) calls [`Task::await_outcome`] once handed over: the wait
//! may outlast the timeout and the lease's margin, and a shutdown abandons it.
//!
//! # When what the tasks need is down
//!
//! A handler returns [`TaskError::Unavailable`] for a failure that is not the
//! task's (a mail provider refusing the sender): the task is handed back
//! without counting an attempt, and after a few in a row the worker stops
//! taking that queue's tasks for a growing while ([`BreakerSettings`]),
//! probing with one task at a time.
//!
//! ```
//! use std::time::Duration;
//! use simplebank_queue::{HandlerRegistry, Processed, Task, TaskError, handler_fn};
//!
//! async fn send_welcome(task: Task) -> Result<Processed, TaskError> {
//!     #[derive(serde::Deserialize)]
//!     struct Payload { email: String }
//!     // A payload that does not decode is archived at once: a retry cannot help.
//!     let payload: Payload = task.json()?;
//!     // Everything before the fence may run twice; the effect runs once per
//!     // delivery, and only while this run holds the task.
//!     task.fence(Duration::from_secs(30)).await?;
//!     // ... send the email ...
//!     Ok(Processed::default().with("email", payload.email))
//! }
//!
//! let mut registry = HandlerRegistry::default();
//! registry.register("email:welcome", handler_fn(send_welcome));
//! ```
//!
//! What completed is recorded in a [`Ledger`] the embedding service keeps (a
//! Postgres table, say), so a task delivered again after it ran is
//! acknowledged without running again. What a server does is reported to an
//! [`Observer`] (metrics, tests).

#![warn(missing_docs)]

mod ack;
mod breaker;
mod broker;
mod connection;
mod fence;
mod handler;
mod maintenance;
mod observe;
mod one_line;
mod outage;
mod retry;
mod run;
mod server;
mod task;

pub use breaker::BreakerSettings;
pub use broker::{
    AckOutcome, ArchiveLimits, Broker, Cursor, CursorEnqueue, FailOutcome, Promoted, QueueKeys,
    QueueStats, Repair, RequeueOutcome,
};
pub use connection::RedisSettings;
pub use fence::Fenced;
pub use handler::{Handler, HandlerRegistry, Ledger, Processed, handler_fn};
pub use observe::{Observer, RunEnd, RunEnded, SPAN_TARGET, task_span};
pub use one_line::one_line;
pub use outage::Outage;
pub use retry::RetryPolicy;
pub use server::{QueueWeight, WorkerServer, WorkerSettings};
pub use task::{Delivery, Task, TaskId, TaskInfo, TaskMessage, TaskState};

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
        /// The script or read that answered.
        script: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
    /// Tasks in this state have no index to list them from.
    #[error("tasks in state {0} cannot be listed")]
    NotListable(TaskState),
    /// A write (an enqueue, a dequeue, a lease extension) reached fewer
    /// replicas than the broker was told to wait for
    /// ([`Broker::with_replica_wait`]): a failover now could undo it, so it
    /// does not count as done.
    #[error("redis: the write reached {got} of {wanted} replicas within {within:?}")]
    NotReplicated {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged in time.
        got: u32,
        /// How long the broker waited.
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
    /// Retried after `delay` rather than the backoff (an attempt still
    /// counts): the handler knows when trying again makes sense, e.g. once an
    /// effect whose outcome is unknown has had time to show.
    RetryAfter {
        /// How long until the next attempt.
        delay: std::time::Duration,
        /// What failed.
        error: anyhow::Error,
    },
    /// What the task needs is down, not the task: a mail provider refusing
    /// the sender, say. The task is handed back without counting an attempt,
    /// and after [`BreakerSettings::failures`] of these in a row the worker
    /// stops taking tasks from its queue for a while (see [`BreakerSettings`]).
    Unavailable(anyhow::Error),
    /// Stopped before its effect by [`Task::fence`]; see [`Fenced`].
    Fenced(Fenced),
}

impl TaskError {
    /// A failure no retry can mend: the task is archived at once.
    pub fn skip_retry(e: impl Into<anyhow::Error>) -> Self {
        Self::SkipRetry(e.into())
    }

    /// A failure to try again after `delay`; see [`TaskError::RetryAfter`].
    pub fn retry_after(delay: std::time::Duration, e: impl Into<anyhow::Error>) -> Self {
        Self::RetryAfter {
            delay,
            error: e.into(),
        }
    }

    /// A dependency is down; see [`TaskError::Unavailable`].
    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(e.into())
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retry(e)
            | Self::SkipRetry(e)
            | Self::RetryAfter { error: e, .. }
            | Self::Unavailable(e) => f.write_str(&one_line(e.as_ref())),
            Self::Fenced(why) => write!(f, "stopped before its effect: {why}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for TaskError {
    fn from(e: E) -> Self {
        Self::Retry(e.into())
    }
}
