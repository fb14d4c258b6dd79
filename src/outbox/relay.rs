//! The relay: forwards committed outbox rows to their Redis queues.
//!
//! Each queue is read on its own, from its [`Position`]: a batch is the rows
//! the current snapshot shows committed beyond it, in transaction order
//! ([`super::read`]). The batch's tasks and the next position go to Redis in
//! one script call (the queue's cursor, [`super::positions`]), so nothing in
//! Postgres is updated or deleted to say a row was forwarded, and no
//! transaction stays open while Redis answers. A crash before Redis's
//! answer leaves the cursor where it was; the next read returns the same
//! rows, and the idempotent enqueue keeps one task per row.
//!
//! Two relays (or two lanes of one) that read the same position cannot both
//! move it: the cursor names where each batch started, and the second
//! script call finds it moved, writes nothing, and reads again from there.
//!
//! A queue Redis refuses (a broken key, a cluster slot without a master)
//! keeps its position and is held back for a growing while
//! ([`super::held`]); the other queues go on, and a held queue costs one
//! batch's read when it is tried again, not a read of its backlog.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use super::session::begin_batch;
use super::{
    held::HeldQueues,
    legacy::Legacy,
    partitions::Partitions,
    position::Position,
    positions::{self, CHECKPOINT_EVERY, CURSOR, Known, PositionError},
    read::{self, ReadBatch, ReadError},
    wake::RelayWaker,
};
use crate::{
    config::RelayConfig,
    events::{self, Event},
    metrics,
    queue::{Broker, Cursor, CursorEnqueue, Outage, QueueError, TaskMessage},
    telemetry,
};

/// How often the loop creates partitions ahead and drops those past
/// retention.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// How often the running relay looks for queues it has not seen rows of.
const DISCOVER_EVERY: Duration = Duration::from_millis(200);

/// How often a relay with nothing to forward on a queue checks the queue's
/// cursor in Redis: a failover to a replica that had not received the last
/// batches brings back an older cursor (and loses those tasks with it), and
/// the rows it no longer covers must go again even if no new row comes.
const VERIFY_EVERY: Duration = Duration::from_secs(1);

/// Times a batch reads again after finding its queue's cursor moved by
/// another relay, before it leaves the queue to that relay.
const MOVED_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] QueueError),
    #[error("postgres: the batch had no answer within {0:?}; given up")]
    TimedOut(Duration),
    #[error(transparent)]
    Position(#[from] PositionError),
}

impl From<ReadError> for RelayError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Db(e) => Self::Db(e),
            ReadError::Parse(e) => Self::Db(sqlx::Error::Decode(Box::new(e))),
        }
    }
}

impl RelayError {
    /// Which side is failing, to log once per change of state.
    fn side(&self) -> &'static str {
        match self {
            Self::Db(_) | Self::TimedOut(_) | Self::Position(PositionError::Db(_)) => "postgres",
            Self::Redis(_) | Self::Position(_) => "redis",
        }
    }

    /// An error of one queue's Redis side (its rows wait, the others go on),
    /// as opposed to Postgres failing every queue.
    fn of_the_queue(&self) -> bool {
        self.side() == "redis"
    }
}

/// What one batch (or one batch of each queue) did.
#[derive(Debug, Default)]
pub struct Batch {
    /// Rows read.
    pub claimed: usize,
    /// Rows enqueued (the position moved past them).
    pub forwarded: usize,
    /// The error of a queue that refused its rows (they wait).
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
    fn add(&mut self, other: Drained) {
        self.forwarded += other.forwarded;
        self.failed = other.failed.or(self.failed.take());
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

/// One queue as a relay knows it.
#[derive(Default)]
struct QueueState {
    /// Its position, once loaded. The lock also keeps a relay's lanes from
    /// reading the same queue at once.
    known: tokio::sync::Mutex<Option<Known>>,
    /// When its position was last copied to Postgres, and which.
    checkpointed: Mutex<Option<(Instant, Position)>>,
    /// When its position was last read from Redis or moved there.
    verified: Mutex<Option<Instant>>,
}

/// The queues a relay has seen rows of.
#[derive(Default)]
struct Queues {
    states: HashMap<String, Arc<QueueState>>,
    /// When the relay last looked for queues.
    discovered: Option<Instant>,
}

/// Forwards outbox rows; see the module doc.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    broker: Broker,
    cfg: RelayConfig,
    held: Arc<HeldQueues>,
    queues: Arc<Mutex<Queues>>,
    legacy: Arc<Legacy>,
    /// Rows this relay (and its clones) forwarded, for progress reports.
    forwarded: Arc<AtomicU64>,
    /// The statement that begins a batch's read ([`begin_batch`]).
    begin: String,
}

impl Relay {
    pub fn new(pool: PgPool, broker: Broker, cfg: RelayConfig) -> Self {
        let held = Arc::new(HeldQueues::new(Duration::from_millis(100), cfg.max_backoff));
        Self {
            pool,
            broker,
            held,
            queues: Arc::default(),
            legacy: Arc::default(),
            forwarded: Arc::default(),
            begin: begin_batch(cfg.session_timeout),
            cfg,
        }
    }

    /// Rows this relay (and its clones) forwarded since it was made.
    pub fn forwarded_so_far(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    fn queues_lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The queues to read now, less those held back: every queue with rows
    /// (a few index descents), looked up afresh when `fresh`, and otherwise
    /// at most every [`DISCOVER_EVERY`]: a wake-up of the running relay
    /// (one per commit, under load) saves the round trip. A wake-up that
    /// finds nothing in the known queues looks again at once (see
    /// [`Relay::run`]), so a new queue's first row waits for the next
    /// wake-up or poll at most.
    async fn queues_to_read(
        &self,
        fresh: bool,
    ) -> Result<Vec<(String, Arc<QueueState>)>, RelayError> {
        let due = fresh
            || self
                .queues_lock()
                .discovered
                .is_none_or(|at| at.elapsed() >= DISCOVER_EVERY);
        if due {
            let mut conn = self.pool.acquire().await?;
            let found = tokio::time::timeout(self.bound(), async {
                Ok(positions::queues_on(&mut conn).await?)
            })
            .await;
            let found = self.within_bound(conn, found)?;
            let mut queues = self.queues_lock();
            for queue in found {
                queues.states.entry(queue).or_default();
            }
            queues.discovered = Some(Instant::now());
        }
        let (skipped, _) = self.held.split(Instant::now());
        let mut list: Vec<(String, Arc<QueueState>)> = self
            .queues_lock()
            .states
            .iter()
            .filter(|(q, _)| !skipped.contains(q))
            .map(|(q, s)| (q.clone(), s.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list)
    }

    /// Reads one batch of `queue` beyond `position`, in a transaction that
    /// bounds itself ([`begin_batch`]).
    async fn read(&self, queue: &str, position: &Position) -> Result<ReadBatch, RelayError> {
        let mut conn = self.pool.acquire().await?;
        let read = async {
            let mut tx = conn.begin_with(self.begin.clone()).await?;
            let batch = read::read(&mut tx, queue, position, self.cfg.batch_size).await?;
            tx.commit().await?;
            Ok(batch)
        };
        let read = tokio::time::timeout(self.bound(), read).await;
        self.within_bound(conn, read)
    }

    /// The relay's own bound on a round of Postgres work: Postgres ends a
    /// session it stopped hearing from, and this ends work whose Postgres
    /// went silent (a link that drops packets without closing), so the loop
    /// goes on.
    fn bound(&self) -> Duration {
        self.cfg.session_timeout * 2
    }

    /// The outcome of work on `conn` run under [`Relay::bound`].
    fn within_bound<T>(
        &self,
        conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
        outcome: Result<Result<T, RelayError>, tokio::time::error::Elapsed>,
    ) -> Result<T, RelayError> {
        match outcome {
            Ok(done) => done,
            Err(_) => {
                // Closed, not handed back: the pool would ping it first,
                // and a ping over a silent link waits for the kernel to
                // give up (minutes), holding one of the relay's few slots.
                drop(conn.detach());
                Err(RelayError::TimedOut(self.bound()))
            }
        }
    }

    /// Forwards `queue`'s rows beyond its position: reads a batch, then
    /// enqueues its rows and moves the cursor in one script call. One batch,
    /// or with `drain` batches until one comes back short (or `drain` is
    /// cancelled). While a batch is being enqueued, the read of the next
    /// one, from where this one leaves the position, goes on beside it:
    /// Redis and Postgres work at once, and a read whose batch before it did
    /// not go through is dropped.
    async fn forward_queue(
        &self,
        queue: &str,
        state: &QueueState,
        drain: Option<&CancellationToken>,
    ) -> Result<Batch, RelayError> {
        let mut known = state.known.lock().await;
        let verified =
            |at: Option<Instant>| *state.verified.lock().unwrap_or_else(|p| p.into_inner()) = at;
        let mut total = Batch::default();
        let mut moved = 0;
        let mut read_ahead: Option<(Position, Result<ReadBatch, RelayError>)> = None;
        while moved < MOVED_RETRIES {
            let k = match known.as_ref() {
                Some(k) => k.clone(),
                None => {
                    let loaded = positions::load(&self.broker, &self.pool, queue).await?;
                    verified(Some(Instant::now()));
                    known.insert(loaded).clone()
                }
            };
            let batch = match read_ahead.take() {
                Some((from, read)) if from == k.position => read?,
                _ => self.read(queue, &k.position).await?,
            };
            if batch.rows.is_empty() {
                let last = *state.verified.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|at| at.elapsed() >= VERIFY_EVERY) {
                    let stored = self.broker.cursor(queue, CURSOR).await?;
                    verified(Some(Instant::now()));
                    if stored != k.stored {
                        // Moved elsewhere (another relay, or a failover):
                        // read again from there.
                        *known = None;
                        moved += 1;
                        continue;
                    }
                    let next_xid = positions::next_xid(&self.pool).await?;
                    if next_xid < k.position.xmax {
                        *known = self.rewind(queue, &k, next_xid).await?;
                        moved += 1;
                        continue;
                    }
                }
                if k.stored.is_some() {
                    self.checkpoint_if_due(queue, state, &k.position, true)
                        .await;
                }
                return Ok(total);
            }
            let next = batch.next(&k.position);
            let next_text = positions::cursor_text(&next);
            let more = batch.full && drain.is_some_and(|d| !d.is_cancelled());
            let tasks: Vec<TaskMessage> = batch.rows.into_iter().map(Into::into).collect();
            let cursor = Cursor {
                name: CURSOR,
                expected: k.stored.as_deref(),
                next: &next_text,
            };
            let enqueue = self
                .broker
                .enqueue_at(queue, &tasks, cursor)
                .instrument(batch_span(&tasks));
            let enqueued = match more {
                true => {
                    let (enqueued, ahead) = tokio::join!(enqueue, self.read(queue, &next));
                    read_ahead = Some((next.clone(), ahead));
                    enqueued?
                }
                false => enqueue.await?,
            };
            match enqueued {
                CursorEnqueue::Enqueued(_) => {
                    verified(Some(Instant::now()));
                    self.forwarded
                        .fetch_add(tasks.len() as u64, Ordering::Relaxed);
                    events::announce(Event::Forwarded { rows: tasks.len() });
                    metrics::relay_batch(tasks.iter().map(|t| (t.queue.as_str(), t.created_at)));
                    self.checkpoint_if_due(queue, state, &next, false).await;
                    *known = Some(Known {
                        position: next,
                        stored: Some(next_text),
                    });
                    total.claimed += tasks.len();
                    total.forwarded += tasks.len();
                    if !more {
                        return Ok(total);
                    }
                }
                // Another relay moved it: read on from there.
                CursorEnqueue::Moved(Some(text)) => {
                    *known = Some(Known {
                        position: positions::parse(queue, &text)?,
                        stored: Some(text),
                    });
                    moved += 1;
                }
                // Redis lost it: from the checkpoint, forwarding again what
                // came after (a no-op for tasks Redis still has).
                CursorEnqueue::Moved(None) => {
                    tracing::warn!(
                        queue,
                        "the queue's outbox cursor is gone from Redis; reading again from its last checkpoint"
                    );
                    *known = None;
                    moved += 1;
                }
            }
        }
        Ok(total)
    }

    /// The database hands out transaction ids below the queue's position:
    /// it was restored from a backup, or failed over to a standby that
    /// missed the last transactions. Rows written from now on would count as
    /// forwarded. The cursor goes back to the newest checkpoint below the
    /// database's ids (or the start), and what follows is forwarded again.
    /// Returns the position to go on from (`None`: load it afresh, another
    /// relay moved the cursor meanwhile).
    async fn rewind(
        &self,
        queue: &str,
        from: &Known,
        next_xid: u64,
    ) -> Result<Option<Known>, RelayError> {
        let back = positions::checkpoint_below(&self.pool, queue, next_xid)
            .await?
            .unwrap_or(Position::START);
        tracing::error!(queue, position = %from.position, next_xid, back = %back,
            "Postgres hands out transaction ids below the queue's outbox position (restored from a backup, or failed over to a standby that missed transactions); forwarding again from an earlier checkpoint");
        let text = positions::cursor_text(&back);
        let cursor = Cursor {
            name: CURSOR,
            expected: from.stored.as_deref(),
            next: &text,
        };
        Ok(match self.broker.enqueue_at(queue, &[], cursor).await? {
            CursorEnqueue::Enqueued(_) => Some(Known {
                position: back,
                stored: Some(text),
            }),
            CursorEnqueue::Moved(_) => None,
        })
    }

    /// Copies the queue's position to Postgres if it moved since the last
    /// copy and that copy is older than [`CHECKPOINT_EVERY`], or, when
    /// `idle` (a read found nothing), older than [`VERIFY_EVERY`]: the last
    /// batches before a quiet spell would otherwise stay uncheckpointed,
    /// holding retention back. Not at every empty read: under load most
    /// wake-ups find their row taken already, and a commit each would slow
    /// the relay down. A failure only makes the copy older.
    async fn checkpoint_if_due(
        &self,
        queue: &str,
        state: &QueueState,
        position: &Position,
        idle: bool,
    ) {
        let due = match &*state.checkpointed.lock().unwrap_or_else(|p| p.into_inner()) {
            None => true,
            Some((_, copied)) if copied == position => false,
            Some((at, _)) => match idle {
                true => at.elapsed() >= VERIFY_EVERY,
                false => at.elapsed() >= CHECKPOINT_EVERY,
            },
        };
        if due {
            self.write_checkpoint(queue, state, position).await;
        }
    }

    async fn write_checkpoint(&self, queue: &str, state: &QueueState, position: &Position) {
        match positions::checkpoint(&self.pool, queue, position).await {
            Ok(()) => {
                *state.checkpointed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), position.clone()))
            }
            Err(e) => tracing::debug!(queue, error = %e, "cannot checkpoint the outbox position"),
        }
    }

    /// Copies every queue's position to Postgres now (at the end of a drain
    /// or of the relay), so that retention and redeliveries see it.
    pub async fn checkpoint(&self) {
        let states: Vec<(String, Arc<QueueState>)> = self
            .queues_lock()
            .states
            .iter()
            .map(|(q, s)| (q.clone(), s.clone()))
            .collect();
        for (queue, state) in states {
            let known = state.known.lock().await.clone();
            if let Some(Known {
                position,
                stored: Some(_),
            }) = known
            {
                self.write_checkpoint(&queue, &state, &position).await;
            }
        }
    }

    /// One batch of `queue`, its failures sorted: a queue Redis refused is
    /// held back and its error returned in the batch; Postgres failing is
    /// an error.
    async fn queue_batch(
        &self,
        queue: &str,
        state: &QueueState,
        drain: Option<&CancellationToken>,
    ) -> Result<Batch, RelayError> {
        match self.forward_queue(queue, state, drain).await {
            Ok(batch) => {
                if batch.forwarded > 0 && self.held.recovered(queue) == Some(true) {
                    tracing::info!(queue = %queue, "queue takes tasks again");
                }
                Ok(batch)
            }
            Err(e) if e.of_the_queue() => {
                metrics::relay_error("redis");
                self.held.failed(queue, Instant::now());
                let error = match e {
                    RelayError::Redis(e) | RelayError::Position(PositionError::Redis(e)) => e,
                    other => QueueError::Reply {
                        script: "outbox cursor",
                        detail: other.to_string(),
                    },
                };
                Ok(Batch {
                    failed: Some(error),
                    ..Batch::default()
                })
            }
            Err(e) => {
                metrics::relay_error(e.side());
                Err(e)
            }
        }
    }

    /// One batch of each queue with rows.
    pub async fn forward_batch(&self) -> Result<Batch, RelayError> {
        let mut total = Batch::default();
        for (queue, state) in self.queues_to_read(true).await? {
            let batch = self.queue_batch(&queue, &state, None).await?;
            total.claimed += batch.claimed;
            total.forwarded += batch.forwarded;
            total.failed = batch.failed.or(total.failed);
        }
        Ok(total)
    }

    /// Forwards batches until none is left (or `shutdown`, after the current
    /// batches): the rows of the old table first, if the upgrade left any
    /// ([`Legacy`]), then each queue to its end, up to
    /// `RELAY_PARALLEL_BATCHES` queues at once.
    pub async fn drain(&self, shutdown: &CancellationToken) -> Result<Drained, RelayError> {
        self.drain_queues(shutdown, true).await
    }

    /// [`Relay::drain`], looking for new queues only when `fresh` or due.
    async fn drain_queues(
        &self,
        shutdown: &CancellationToken,
        fresh: bool,
    ) -> Result<Drained, RelayError> {
        let mut drained = Drained::default();
        match self.drain_legacy(shutdown).await {
            Ok(n) => drained.forwarded += n,
            // Its rows wait; the new table's go on.
            Err(RelayError::Redis(e)) => drained.failed = Some(e),
            Err(e) => return Err(e),
        }
        let queues = self.queues_to_read(fresh).await?;
        let tried = queues.len();
        let lanes = futures::stream::iter(queues)
            .map(|(queue, state)| async move { self.drain_queue(&queue, &state, shutdown).await })
            .buffer_unordered(self.cfg.parallel_batches.max(1) as usize);
        let results: Vec<Result<(Drained, Option<String>), RelayError>> = lanes.collect().await;
        let (mut refused, mut newly) = (0, Vec::<String>::new());
        for result in results {
            let (lane, newly_refused) = result?;
            refused += usize::from(lane.failed.is_some());
            newly.extend(newly_refused);
            drained.add(lane);
        }
        // Every queue refused, some for the first time, and nothing went
        // through (Redis is down, most likely): an outage, which the caller
        // logs and backs off from.
        if tried > 0
            && refused == tried
            && !newly.is_empty()
            && drained.forwarded == 0
            && let Some(e) = drained.failed.take()
        {
            return Err(RelayError::Redis(e));
        }
        // Otherwise each queue that refused for the first time is logged,
        // once: its rows wait, held back, and the other queues go on.
        if let Some(e) = &drained.failed {
            for queue in newly {
                tracing::warn!(queue = %queue, error = %e, "queue refuses tasks; its rows wait, the other queues go on");
                self.held.announce(&queue);
            }
        }
        Ok(drained)
    }

    /// The old table's undispatched rows ([`Legacy`]), batch after batch,
    /// each under the relay's bound.
    async fn drain_legacy(&self, shutdown: &CancellationToken) -> Result<u64, RelayError> {
        if !self.legacy.waiting(&self.pool).await? {
            return Ok(0);
        }
        let mut total = 0;
        while !shutdown.is_cancelled() {
            let mut conn = self.pool.acquire().await?;
            let batch =
                self.legacy
                    .batch(&mut conn, &self.broker, self.cfg.batch_size, &self.begin);
            let batch = tokio::time::timeout(self.bound(), batch).await;
            let n = self.within_bound(conn, batch)?;
            total += n as u64;
            if n < self.cfg.batch_size as usize {
                break;
            }
        }
        Ok(total)
    }

    /// `queue`'s batches until one comes back short (or `shutdown`).
    /// Returns what it did, and the queue when it refused for the first
    /// time.
    async fn drain_queue(
        &self,
        queue: &str,
        state: &QueueState,
        shutdown: &CancellationToken,
    ) -> Result<(Drained, Option<String>), RelayError> {
        let was_held = self.held.is_held(queue);
        let batch = self.queue_batch(queue, state, Some(shutdown)).await?;
        let drained = Drained {
            forwarded: batch.forwarded as u64,
            failed: batch.failed,
        };
        let newly_refused = drained.failed.is_some() && !was_held;
        Ok((drained, newly_refused.then(|| queue.to_owned())))
    }

    /// Enqueues again every row forwarded in the last `window` (from each
    /// queue's newest checkpoint taken before the window; from the start
    /// when there is none): the recovery after Redis lost data. Rows not
    /// forwarded yet go too. Tasks Redis still has are left alone; tasks
    /// that already completed are skipped by the workers' ledger.
    pub async fn redeliver_since(&self, window: Duration) -> Result<u64, RelayError> {
        let mut total = self
            .legacy
            .redeliver_since(&self.pool, &self.broker, window, self.cfg.batch_size)
            .await?;
        for queue in positions::queues(&self.pool).await? {
            let mut position = positions::checkpoint_before(&self.pool, &queue, window)
                .await?
                .unwrap_or(Position::START);
            loop {
                let batch = self.read(&queue, &position).await?;
                if batch.rows.is_empty() {
                    break;
                }
                position = batch.next(&position);
                let full = batch.full;
                let tasks: Vec<TaskMessage> = batch.rows.into_iter().map(Into::into).collect();
                total += tasks.len() as u64;
                self.broker.enqueue(&tasks).await?;
                if !full {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Creates partitions ahead and drops those past retention
    /// ([`Partitions`]), every [`MAINTAIN_EVERY`] until `shutdown`. A loop
    /// of its own, so that forwarding never waits for it.
    async fn maintain_loop(self, shutdown: CancellationToken) {
        let mut partitions = Partitions::new(self.cfg.outbox_retention);
        loop {
            match partitions.maintain(&self.pool).await {
                Ok(done) => done.log(),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox partition upkeep failed; trying again later")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
            }
        }
    }

    /// The relay loop: drain, then sleep until woken (same process, LISTEN) or
    /// the poll interval passes. Outages are retried with capped exponential
    /// backoff and logged once per change of state.
    pub async fn run(self, waker: RelayWaker, listen_url: String, shutdown: CancellationToken) {
        tracing::info!("start outbox relay");
        let upkeep = tokio::spawn(self.clone().maintain_loop(shutdown.clone()));
        let wake_ups = waker.wake_ups(listen_url, self.cfg.max_backoff, shutdown.clone());
        let mut outage = Outage::new(
            "relay cannot forward; retrying with backoff",
            "relay recovered: forwarding again",
            Duration::from_millis(50),
            self.cfg.max_backoff,
        );
        loop {
            // A wake-up that found nothing in the queues known looks for
            // new ones at once: its row may be a new queue's.
            let drained = match self.drain_queues(&shutdown, false).await {
                Ok(d) if d.forwarded == 0 && d.failed.is_none() => {
                    self.drain_queues(&shutdown, true).await
                }
                other => other,
            };
            match drained {
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
        self.checkpoint().await;
        let _ = tokio::join!(wake_ups.stopped(), upkeep);
        tracing::info!("outbox relay stopped");
    }
}
