//! The relay: forwards committed outbox rows to their Redis queues.
//!
//! Per batch, in one Postgres transaction: claim undispatched rows with
//! `FOR UPDATE SKIP LOCKED` (so relays never wait on each other and never claim
//! the same row at once), enqueue them to Redis in one round trip with
//! task id = row id, and mark them dispatched once Redis acknowledged. A crash
//! between Redis's acknowledgement and the commit leaves the rows undispatched;
//! the next claim forwards them again and the idempotent enqueue keeps one task
//! per row.
//!
//! There is no high-water mark: ids are assigned at insert but commit out of
//! order, so every undispatched row is a candidate on every claim.
//!
//! A queue Redis refuses (a broken key, a cluster slot without a master) keeps
//! its rows undispatched and is held back from the claims for a growing while
//! ([`super::held`]); the other queues' rows go on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use super::session::begin_batch;
use super::{OutboxRow, held::HeldQueues, wake::RelayWaker};
use crate::{
    config::RelayConfig,
    events::{self, Event},
    metrics,
    queue::{Broker, Outage, QueueError, TaskMessage},
    telemetry,
};

/// How often the loop deletes dispatched rows older than the retention.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] QueueError),
    #[error("postgres: the batch had no answer within {0:?}; given up")]
    TimedOut(Duration),
}

impl RelayError {
    /// Which side is failing, to log once per change of state.
    fn side(&self) -> &'static str {
        match self {
            Self::Db(_) | Self::TimedOut(_) => "postgres",
            Self::Redis(_) => "redis",
        }
    }
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct Batch {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows enqueued and marked dispatched.
    pub forwarded: usize,
    /// The error of a queue that refused its rows (they stay undispatched).
    pub failed: Option<QueueError>,
}

/// What a drain did.
#[derive(Debug, Default)]
pub struct Drained {
    pub forwarded: u64,
    /// The last error of a queue that refused its rows; the rows of the
    /// other queues were forwarded.
    pub failed: Option<QueueError>,
}

impl Drained {
    fn add(&mut self, batch: Batch) {
        self.forwarded += batch.forwarded as u64;
        self.failed = batch.failed.or(self.failed.take());
    }
}

/// A queue Redis refused a batch's tasks of.
struct Refusal {
    queue: String,
    /// It was held back already (this was another try).
    was_held: bool,
}

/// What Redis made of a batch: the queues that refused, and the last error.
#[derive(Default)]
struct Enqueued {
    refusals: Vec<Refusal>,
    error: Option<QueueError>,
}

impl Enqueued {
    fn refused(&self, queue: &str) -> bool {
        self.refusals.iter().any(|r| r.queue == queue)
    }

    /// For a batch none of whose tasks went through: `Ok` when only queues
    /// already held refused (they stay held, the others are not concerned),
    /// `Err` when a queue refused for the first time as well.
    fn into_error(self) -> Result<Option<QueueError>, QueueError> {
        match self.error {
            Some(e) if self.refusals.iter().any(|r| !r.was_held) => Err(e),
            error => Ok(error),
        }
    }

    /// Logs, once, each queue that refused for the first time while others
    /// went through: its rows wait, held back, and the other queues go on.
    fn announce_new(&self, held: &HeldQueues) {
        let Some(e) = &self.error else { return };
        for r in self.refusals.iter().filter(|r| !r.was_held) {
            tracing::warn!(queue = %r.queue, error = %e, "queue refuses tasks; its rows wait, the other queues go on");
            held.announce(&r.queue);
        }
    }
}

/// The "send" span of a batch (OpenTelemetry's messaging conventions),
/// linked to the span that wrote each of its rows. Off, a plain span.
fn batch_span(tasks: &[TaskMessage]) -> tracing::Span {
    if !telemetry::context::enabled() {
        return tracing::Span::none();
    }
    let mut queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
    queues.sort_unstable();
    queues.dedup();
    let span = tracing::info_span!(
        "send",
        otel.name = match queues.as_slice() {
            [one] => format!("send {one}"),
            _ => "send outbox batch".to_owned(),
        },
        otel.kind = "producer",
        messaging.system = telemetry::MESSAGING_SYSTEM,
        messaging.operation.type = "send",
        // One destination only when the batch has one.
        messaging.destination.name = match queues.as_slice() {
            [one] => Some(*one),
            _ => None,
        },
        messaging.batch.message_count = tasks.len(),
    );
    telemetry::context::link_all(&span, tasks.iter().map(|t| t.trace_context.as_deref()));
    span
}

/// Forwards outbox rows; see the module doc.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    broker: Broker,
    cfg: RelayConfig,
    held: Arc<HeldQueues>,
    /// Rows this relay forwarded, for progress reports.
    forwarded: Arc<AtomicU64>,
    /// The statement that begins a batch ([`begin_batch`]).
    begin: String,
}

impl Relay {
    pub fn new(pool: PgPool, broker: Broker, cfg: RelayConfig) -> Self {
        let held = Arc::new(HeldQueues::new(Duration::from_millis(100), cfg.max_backoff));
        Self {
            pool,
            broker,
            held,
            forwarded: Arc::default(),
            begin: begin_batch(cfg.session_timeout),
            cfg,
        }
    }

    /// The longest one batch may take: its claim and its mark, each bounded
    /// by the session timeout in Postgres, and the Redis step between.
    fn batch_limit(&self) -> Duration {
        self.cfg.session_timeout * 3
    }

    /// Rows this relay (and its clones) forwarded since it was made.
    pub fn forwarded_so_far(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Claims, enqueues and marks one batch. The rows of a queue Redis
    /// refused stay undispatched, and that queue is held back from the next
    /// claims for a while; the other queues' rows are marked and committed.
    pub async fn forward_batch(&self) -> Result<Batch, RelayError> {
        // The relay's own bound: Postgres ends a batch it stopped hearing
        // from, and this ends a batch whose Postgres went silent (a link
        // that drops packets without closing), so the loop goes on.
        let limit = self.batch_limit();
        let batch = async {
            let mut conn = self.pool.acquire().await?;
            match tokio::time::timeout(limit, self.try_forward_batch(&mut conn)).await {
                Ok(batch) => batch,
                Err(_) => {
                    // Closed, not handed back: the pool would ping it first,
                    // and a ping over a silent link waits for the kernel to
                    // give up (minutes), holding one of the relay's few slots.
                    drop(conn.detach());
                    Err(RelayError::TimedOut(limit))
                }
            }
        }
        .await;
        match &batch {
            Ok(Batch {
                failed: Some(_), ..
            }) => metrics::relay_error("redis"),
            Err(e) => metrics::relay_error(e.side()),
            Ok(_) => {}
        }
        batch
    }

    async fn try_forward_batch(&self, conn: &mut sqlx::PgConnection) -> Result<Batch, RelayError> {
        let mut tx = conn.begin_with(self.begin.clone()).await?;
        let tasks = self.claim(&mut tx).await?;
        if tasks.is_empty() {
            return Ok(Batch::default());
        }
        let claimed = tasks.len();
        let enqueued = self.enqueue(&tasks).instrument(batch_span(&tasks)).await;
        let forwarded: Vec<&TaskMessage> = tasks
            .iter()
            .filter(|t| !enqueued.refused(&t.queue))
            .collect();
        if forwarded.is_empty() {
            // Dropping `tx` rolls back; every row stays undispatched.
            return match enqueued.into_error() {
                // Only queues already held, tried again: held on.
                Ok(failed) => Ok(Batch {
                    claimed,
                    forwarded: 0,
                    failed,
                }),
                // Every queue refused, some for the first time (Redis is down,
                // most likely): an outage, which the caller logs.
                Err(e) => Err(RelayError::Redis(e)),
            };
        }
        enqueued.announce_new(&self.held);
        let ids: Vec<i64> = forwarded.iter().map(|t| t.id.get()).collect();
        sqlx::query_file!("sql/outbox/mark_dispatched.sql", &ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forwarded
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        events::announce(Event::Forwarded { rows: ids.len() });
        metrics::relay_batch(forwarded.iter().map(|t| (t.queue.as_str(), t.created_at)));
        Ok(Batch {
            claimed,
            forwarded: ids.len(),
            failed: enqueued.error,
        })
    }

    /// Claims a batch of undispatched rows in `tx`, leaving out the queues
    /// held back now.
    async fn claim(&self, tx: &mut sqlx::PgConnection) -> Result<Vec<TaskMessage>, RelayError> {
        let (skipped, due) = self.held.split(Instant::now());
        let rows = sqlx::query_file_as!(
            OutboxRow,
            "sql/outbox/claim.sql",
            i64::from(self.cfg.batch_size),
            &skipped
        )
        .fetch_all(tx)
        .await?;
        // A claim that was not full took every row it could: a held queue
        // due for a try with no rows in it has none left (another relay
        // forwarded them), and is held no more.
        if rows.len() < self.cfg.batch_size as usize {
            for queue in due.iter().filter(|q| !rows.iter().any(|r| &r.queue == *q)) {
                self.held.recovered(queue);
            }
        }
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Enqueues `tasks`, one script call per queue in one round trip, and
    /// notes which queues refused theirs.
    async fn enqueue(&self, tasks: &[TaskMessage]) -> Enqueued {
        let mut enqueued = Enqueued::default();
        for (queue, outcome) in self.broker.enqueue_each(tasks).await {
            match outcome {
                Ok(_) => {
                    // Its failure was logged (a partial one): so is this.
                    if self.held.recovered(&queue) == Some(true) {
                        tracing::info!(queue = %queue, "queue takes tasks again");
                    }
                }
                Err(e) => {
                    let was_held = self.held.failed(&queue, Instant::now());
                    enqueued.refusals.push(Refusal { queue, was_held });
                    enqueued.error = Some(e);
                }
            }
        }
        enqueued
    }

    /// Forwards batches until none is left (or `shutdown`, after the current
    /// batches), keeping `RELAY_PARALLEL_BATCHES` in flight: a batch waiting on
    /// Redis leaves Postgres idle and the other way round, so overlapping them
    /// nearly doubles the drain rate. SKIP LOCKED keeps them apart.
    pub async fn drain(&self, shutdown: &CancellationToken) -> Result<Drained, RelayError> {
        // The usual case, a few fresh rows, takes one batch; only a full batch
        // (a backlog) is worth the lanes.
        let first = self.forward_batch().await?;
        let mut drained = Drained::default();
        let full = first.claimed == self.cfg.batch_size as usize;
        drained.add(first);
        if !full || shutdown.is_cancelled() {
            return Ok(drained);
        }
        let lanes = (0..self.cfg.parallel_batches.max(1)).map(|_| self.drain_lane(shutdown));
        for lane in futures::future::try_join_all(lanes).await? {
            drained.forwarded += lane.forwarded;
            drained.failed = lane.failed.or(drained.failed);
        }
        Ok(drained)
    }

    /// One sequence of batches, until a batch comes back short.
    async fn drain_lane(&self, shutdown: &CancellationToken) -> Result<Drained, RelayError> {
        let mut drained = Drained::default();
        while !shutdown.is_cancelled() {
            let batch = self.forward_batch().await?;
            let full = batch.claimed == self.cfg.batch_size as usize;
            drained.add(batch);
            if !full {
                break;
            }
        }
        Ok(drained)
    }

    /// Enqueues again every row dispatched in the last `window`: the recovery
    /// after Redis lost data. Tasks Redis still has are left alone; tasks that
    /// already completed are skipped by the workers' ledger.
    pub async fn redeliver_since(&self, window: Duration) -> Result<u64, RelayError> {
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let rows = sqlx::query_file_as!(
                OutboxRow,
                "sql/outbox/dispatched_since.sql",
                window.as_secs_f64(),
                after,
                i64::from(self.cfg.batch_size)
            )
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let tasks: Vec<TaskMessage> = rows.into_iter().map(Into::into).collect();
            total += tasks.len() as u64;
            self.broker.enqueue(&tasks).await?;
        }
        Ok(total)
    }

    /// Deletes dispatched rows older than the retention, in small batches,
    /// until none is left or `shutdown`.
    pub async fn cleanup(&self, shutdown: &CancellationToken) -> Result<u64, RelayError> {
        let mut total = 0;
        while !shutdown.is_cancelled() {
            let done = sqlx::query_file!(
                "sql/outbox/delete_dispatched_before.sql",
                self.cfg.outbox_retention.as_secs_f64(),
                i64::from(self.cfg.outbox_cleanup_batch)
            )
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += done;
            if done < u64::from(self.cfg.outbox_cleanup_batch) {
                break;
            }
        }
        Ok(total)
    }

    /// Runs [`Relay::cleanup`] every `CLEANUP_EVERY` until `shutdown`. A loop
    /// of its own: a cleanup of millions of rows takes minutes, and
    /// forwarding must not wait for it.
    async fn cleanup_loop(self, shutdown: CancellationToken) {
        loop {
            match self.cleanup(&shutdown).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "deleted dispatched outbox rows past retention")
                }
                Err(e) => tracing::warn!(error = %e, "outbox cleanup failed; trying again later"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CLEANUP_EVERY) => {}
            }
        }
    }

    /// The relay loop: drain, then sleep until woken (same process, LISTEN) or
    /// the poll interval passes. Outages are retried with capped exponential
    /// backoff and logged once per change of state.
    pub async fn run(self, waker: RelayWaker, listen_url: String, shutdown: CancellationToken) {
        tracing::info!("start outbox relay");
        let cleanup = tokio::spawn(self.clone().cleanup_loop(shutdown.clone()));
        let wake_ups = waker.wake_ups(listen_url, self.cfg.max_backoff, shutdown.clone());
        let mut outage = Outage::new(
            "relay cannot forward; retrying with backoff",
            "relay recovered: forwarding again",
            Duration::from_millis(50),
            self.cfg.max_backoff,
        );
        loop {
            match self.drain(&shutdown).await {
                Ok(drained) => {
                    // A queue still held back is still failing: no "recovered"
                    // line just because the others went through.
                    match drained.failed {
                        Some(e) => {
                            outage.down("redis", &e);
                        }
                        None if !self.held.any() => outage.up(),
                        None => {}
                    }
                    if drained.forwarded > 0 {
                        tracing::debug!(forwarded = drained.forwarded, "forwarded outbox rows");
                    }
                }
                Err(e) => {
                    if outage.pause(e.side(), &e, &shutdown).await.is_break() {
                        break;
                    }
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake_ups.next() => {}
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
            }
        }
        let _ = tokio::join!(wake_ups.stopped(), cleanup);
        tracing::info!("outbox relay stopped");
    }
}
