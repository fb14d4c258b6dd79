//! What a worker server reports as it runs tasks, to whoever embeds it: the
//! service counts it in its metrics, tests wait on it instead of polling.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{Task, TaskId};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The handler succeeded (and the ledger, when there is one, recorded it).
    Processed,
    /// It failed and will run again after its backoff.
    Retried,
    /// It failed for good: retries used up, or told to skip them.
    Archived,
}

/// One run that ended in this process.
#[derive(Debug, Clone)]
pub struct RunEnded<'a> {
    /// The task.
    pub id: TaskId,
    /// Its kind when a handler is registered for it, else "unregistered", so
    /// that a kind enqueued by hand under any name is one label, not one per
    /// name.
    pub kind: &'a str,
    /// How it ended.
    pub end: RunEnd,
    /// How long the run took (the ledger lookup, the handler, the record).
    pub took: Duration,
    /// When the pipeline owed the task its run, when known (see
    /// [`crate::Task::due_at`]).
    pub due_at: Option<DateTime<Utc>>,
}

/// Receives what a [`crate::WorkerServer`] does. Every method has a default
/// that does nothing; calls come from the server's tasks and must not block.
pub trait Observer: Send + Sync + 'static {
    /// A run of this process ended with an outcome Redis recorded.
    fn run_ended(&self, _run: &RunEnded<'_>) {}

    /// The promoter found the lease of a run expired (its worker died or was
    /// cut off) and moved the task on to `end` (retry or archive): a failed
    /// attempt no worker lived to report. `kind` is labelled as in
    /// [`RunEnded::kind`].
    fn lease_expired(&self, _kind: &str, _end: RunEnd) {}

    /// A run of this process lost its lease before its fence and was stopped;
    /// another delivery has the task.
    fn lease_lost(&self, _id: TaskId) {}

    /// This process stopped taking tasks from `queue` for `pause`: its tasks
    /// keep finding what they need down (see [`crate::BreakerSettings`]).
    /// Called again, with a longer pause, each time a probe finds it still
    /// down.
    fn queue_paused(&self, _queue: &str, _pause: Duration) {}

    /// This process takes tasks from `queue` again, after `paused_for`.
    fn queue_resumed(&self, _queue: &str, _paused_for: Duration) {}

    /// The span a run of `task` runs in, and every line it logs. The default
    /// names the task (`task_id`, `type`, `queue`, `attempt`, `request_id`);
    /// an embedder that exports traces makes its own, with those fields, and
    /// joins it to the trace in [`Task::trace_context`].
    fn run_span(&self, task: &Task) -> tracing::Span {
        task_span(task)
    }
}

/// The target of a run's span, whoever makes it: `RUST_LOG` names it.
pub const SPAN_TARGET: &str = "simplebank_queue::server";

/// The default span of a run ([`Observer::run_span`]).
pub fn task_span(task: &Task) -> tracing::Span {
    tracing::info_span!(target: SPAN_TARGET, "task", task_id = task.id.get(), r#type = %task.kind, queue = %task.queue, attempt = task.attempt, request_id = task.request_id.as_deref())
}

/// The observer of a server given none.
pub(crate) struct Unobserved;

impl Observer for Unobserved {}
