//! What travels through the queue: the message a producer enqueues, the task a
//! handler is given, and what Redis holds of a task.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use super::{TaskError, fence::RunGuard};

/// A task's id, for its whole life: its Redis key, its ledger row, its log
/// lines. The producer chooses it (the service uses its outbox row id), so
/// that enqueuing the same task twice is a no-op.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TaskId(i64);

impl TaskId {
    /// The id as a number (the service's outbox row id).
    pub fn get(self) -> i64 {
        self.0
    }
}

impl From<i64> for TaskId {
    fn from(id: i64) -> Self {
        Self(id)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ids come back from Redis as numbers (list and set members, script replies).
impl fred::types::FromValue for TaskId {
    fn from_value(value: fred::types::Value) -> Result<Self, fred::error::Error> {
        i64::from_value(value).map(Self)
    }
}

impl FromStr for TaskId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A task as enqueued; build it with [`TaskMessage::new`] and the `with_*`
/// methods.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Its id: enqueuing an id Redis knows is a no-op.
    pub id: TaskId,
    /// Which handler runs it.
    pub kind: String,
    /// The queue it waits in.
    pub queue: String,
    /// JSON text, passed to the handler as is.
    pub payload: String,
    /// Retries before it is archived (0: archived at its first failure).
    pub max_retry: u32,
    /// The longest one run may take; a run past it is a failed attempt.
    pub timeout: Duration,
    /// When the task may run; in the past or now means at once.
    pub process_at: DateTime<Utc>,
    /// The request that caused it (the sign-up's), for the worker's log lines.
    pub request_id: Option<String>,
    /// When its outbox row was written, for the commit-to-handled latency.
    pub created_at: DateTime<Utc>,
    /// The trace context of the span that wrote it (W3C `traceparent`, then
    /// a newline and `tracestate` when there is one), carried as is for the
    /// worker to join; the queue does not read it.
    pub trace_context: Option<String>,
}

impl TaskMessage {
    /// A task of `kind` on `queue` with payload `{}`, no retry, a 30 s
    /// timeout, due now.
    pub fn new(id: impl Into<TaskId>, kind: &str, queue: &str) -> Self {
        let now = Utc::now();
        Self {
            id: id.into(),
            kind: kind.to_owned(),
            queue: queue.to_owned(),
            payload: "{}".to_owned(),
            max_retry: 0,
            timeout: Duration::from_secs(30),
            process_at: now,
            request_id: None,
            created_at: now,
            trace_context: None,
        }
    }

    /// With this payload (JSON text).
    pub fn with_payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Retried up to `max_retry` times before it is archived.
    pub fn with_max_retry(mut self, max_retry: u32) -> Self {
        self.max_retry = max_retry;
        self
    }

    /// Each run may take at most `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Not run before `at`.
    pub fn with_process_at(mut self, at: DateTime<Utc>) -> Self {
        self.process_at = at;
        self
    }
}

/// Numbers one hand-out of a task. Every call that changes a running task
/// (acknowledge, fail, hand back, extend the lease) quotes it, and Redis
/// refuses the call once the number moved on, so a worker whose lease expired
/// cannot touch the run a later worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Delivery(pub u64);

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A task handed to a handler.
#[derive(Debug, Clone)]
pub struct Task {
    /// Its id (see [`TaskId`]).
    pub id: TaskId,
    /// Its kind: the handler registered for it runs it.
    pub kind: String,
    /// The queue it came from.
    pub queue: String,
    /// JSON text, as enqueued.
    pub payload: String,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    /// Retries allowed in all.
    pub max_retry: u32,
    /// The longest this run may take.
    pub timeout: Duration,
    /// This hand-out of the task; see [`Delivery`].
    pub delivery: Delivery,
    /// The request that caused it, when it came from one.
    pub request_id: Option<String>,
    /// When its outbox row was written; `None` for a task enqueued before
    /// this was recorded.
    pub created_at: Option<DateTime<Utc>>,
    /// When it was to run at the earliest (its delay after the commit).
    pub process_at: Option<DateTime<Utc>>,
    /// The trace context it was enqueued with ([`TaskMessage::trace_context`]).
    pub trace_context: Option<String>,
    /// Whether this is the task's first hand-out: no run before it, not
    /// even one handed back untried, a lost lease's, or one before a retry
    /// from the archive (which resets [`Task::attempt`]).
    pub first_hand_out: bool,
    /// The run's lease, timeout and shutdown, as far as this process knows.
    pub(crate) guard: Arc<RunGuard>,
}

impl Task {
    /// The payload decoded as `T`; a payload that does not decode cannot succeed
    /// on a retry either, so the error skips retries.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_str(&self.payload)
            .map_err(|e| TaskError::skip_retry(anyhow::anyhow!("invalid payload: {e}")))
    }

    /// Call right before an effect that cannot be undone and takes up to
    /// `effect` (an email: the SMTP timeout and the ledger record). Renews
    /// the lease and passes only if this run will still hold it, and still
    /// be within its timeout, when the effect is over; see [`super::fence`].
    /// Return its error from the handler.
    pub async fn fence(&self, effect: Duration) -> Result<(), TaskError> {
        self.guard.fence(effect).await.map_err(TaskError::Fenced)
    }

    /// Call after the fence, once the effect is handed over and only its
    /// outcome is awaited, for at most `wait` (an SMTP server's reply to the
    /// final dot). The run's timeout moves to cover the wait, the lease is
    /// kept extended, and a shutdown whose grace ends meanwhile abandons the
    /// run: record the hand-over durably before calling this, so that the
    /// next delivery can tell the outcome is unknown. See [`super::fence`].
    pub fn await_outcome(&self, wait: Duration) {
        self.guard.await_outcome(wait)
    }

    /// When the pipeline owed this task a run: its commit, or its
    /// process_at when it was to wait longer (a delay on purpose is not
    /// latency). The start of the commit-to-handled latency.
    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        let created_at = self.created_at?;
        Some(self.process_at.map_or(created_at, |p| p.max(created_at)))
    }
}

/// Where a task is in its life:
/// scheduled -> pending -> active -> completed | retry -> pending ... | archived;
/// an operator may delete a task that is not active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for its process_at.
    Scheduled,
    /// Ready to run.
    Pending,
    /// Being run under a lease.
    Active,
    /// Failed; waiting for its next attempt.
    Retry,
    /// Will not run again: retries used up, or told to skip them.
    Archived,
    /// Ran successfully; remembered for the retention time.
    Completed,
    /// Deleted by an operator; remembered for the retention time.
    Deleted,
}

impl TaskState {
    /// Every state, in the order of a task's life.
    pub const ALL: [Self; 7] = [
        Self::Scheduled,
        Self::Pending,
        Self::Active,
        Self::Retry,
        Self::Archived,
        Self::Completed,
        Self::Deleted,
    ];

    /// The name Redis stores and the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retry => "retry",
            Self::Archived => "archived",
            Self::Completed => "completed",
            Self::Deleted => "deleted",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// One task as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskInfo {
    /// Its id.
    pub id: TaskId,
    /// Its queue.
    pub queue: String,
    /// Where it is in its life.
    pub state: TaskState,
    /// Its kind.
    pub kind: String,
    /// Absent once the task completed (the payload is dropped then).
    pub payload: Option<String>,
    /// Failed runs so far.
    pub retried: u32,
    /// Retries allowed in all.
    pub max_retry: u32,
    /// The error of its last failed run.
    pub last_error: Option<String>,
    /// When its last run failed.
    pub last_failed_at: Option<DateTime<Utc>>,
    /// When the task reached Redis (Redis's clock).
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When its outbox row was written.
    pub created_at: Option<DateTime<Utc>>,
    /// The request that caused it.
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!("done".parse::<TaskState>().is_err());
    }
}
