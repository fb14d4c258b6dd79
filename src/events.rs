//! What the service did, announced as it happens, for whoever waits on it:
//! the tests wait on these instead of sleeping between checks, and an
//! embedder may too. One bus per process (like the metrics recorder), so a
//! waiter needs no handle on the component it waits for; each event is sent
//! once what it names is done (a batch committed; a run's outcome sent to
//! Redis, or given up at shutdown). With nobody subscribed, sending costs
//! a lock and nothing more.

use std::sync::LazyLock;

use tokio::sync::broadcast;

use crate::{
    metrics::TaskMetrics,
    queue::{Observer, RunEnd, RunEnded, TaskId},
    telemetry,
};

/// One thing the service did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A relay committed a batch: `rows` outbox rows are dispatched.
    Forwarded { rows: usize },
    /// A worker's run of task `id` ended as `end`, recorded in Redis.
    RunEnded { id: TaskId, end: RunEnd },
    /// A worker found the lease of a run expired and moved the task on.
    LeaseExpired { end: RunEnd },
    /// A worker's run of task `id` lost its lease and was stopped.
    LeaseLost { id: TaskId },
    /// A worker's breaker stopped taking tasks from `queue` (again).
    QueuePaused { queue: String },
    /// A worker's breaker takes tasks from `queue` again.
    QueueResumed { queue: String },
}

/// Events a slow subscriber may fall behind by before it misses some (it
/// is told it lagged, which a waiter takes as a reason to look again).
const BACKLOG: usize = 1024;

static BUS: LazyLock<broadcast::Sender<Event>> = LazyLock::new(|| broadcast::channel(BACKLOG).0);

/// Every event from now on.
pub fn subscribe() -> broadcast::Receiver<Event> {
    BUS.subscribe()
}

pub(crate) fn announce(event: Event) {
    // No subscriber is no error: nobody is waiting.
    let _ = BUS.send(event);
}

/// The worker's observer: counts each run in the metrics, then announces it.
pub struct Announced;

impl Observer for Announced {
    fn run_span(&self, task: &crate::queue::Task) -> tracing::Span {
        telemetry::run_span(task)
    }

    fn run_ended(&self, run: &RunEnded<'_>) {
        // Called inside the run's span: a run that failed marks it so.
        telemetry::run_ended(run.end);
        TaskMetrics.run_ended(run);
        announce(Event::RunEnded {
            id: run.id,
            end: run.end,
        });
    }

    fn lease_expired(&self, kind: &str, end: RunEnd) {
        TaskMetrics.lease_expired(kind, end);
        announce(Event::LeaseExpired { end });
    }

    fn lease_lost(&self, id: TaskId) {
        TaskMetrics.lease_lost(id);
        announce(Event::LeaseLost { id });
    }

    fn queue_paused(&self, queue: &str, pause: std::time::Duration) {
        TaskMetrics.queue_paused(queue, pause);
        announce(Event::QueuePaused {
            queue: queue.to_owned(),
        });
    }

    fn queue_resumed(&self, queue: &str, paused_for: std::time::Duration) {
        TaskMetrics.queue_resumed(queue, paused_for);
        announce(Event::QueueResumed {
            queue: queue.to_owned(),
        });
    }
}
