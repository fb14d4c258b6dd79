//! The worker server: takes tasks from Redis under a lease, runs their
//! handlers, and records the outcome through the [`Broker`].
//!
//! The fetch loop here takes tasks whenever a slot is free, by weight (or
//! strict priority). When the queues are empty it blocks on a wake-up
//! published by the enqueue scripts, with a 1 s safety poll, so an idle worker
//! starts a new task within a round trip and does not poll in a tight loop.
//! Beside it run the services of [`super::maintenance`] (promoting due tasks,
//! keeping leases, wake-ups) and the batched acknowledgements of
//! [`super::ack`], all stopped by one `CancellationToken`.
//!
//! At shutdown, runs that have not reached their fence are handed back
//! untried when they do; runs past it get `shutdown_grace` to finish; what
//! is left then goes back to the front of its pending list (see
//! [`super::run`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::clients::SubscriberClient;
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    Broker, QueueError, RetryPolicy,
    ack::Acker,
    breaker::{Allowance, BreakerSettings, Breakers, Change},
    handler::{HandlerRegistry, Ledger},
    maintenance::{self, RunningTasks, SAFETY_POLL},
    run::{self, RunContext},
    task::Task,
};
use crate::{Observer, observe::Unobserved, outage::Outage};

/// How a worker server runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Runs at once (at least 1).
    pub concurrency: usize,
    /// The queues served, each with its weight, highest first.
    pub queues: Vec<QueueWeight>,
    /// Serve a lower queue only while every higher one is empty (else by weight).
    pub strict_priority: bool,
    /// How long a dequeued task is held before another worker may take it;
    /// extended while the run goes on.
    pub lease: Duration,
    /// When a failed run is tried again.
    pub retry: RetryPolicy,
    /// How long a shutdown lets runs past their fence finish.
    pub shutdown_grace: Duration,
    /// How long a completed (or deleted) task is remembered, so that an
    /// enqueue of its id meanwhile stays a no-op.
    pub done_retention: Duration,
    /// When to stop taking a queue's tasks because what they need is down.
    pub breaker: BreakerSettings,
}

/// A queue a worker serves, and its share of the fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueWeight {
    /// The queue's name.
    pub queue: String,
    /// Its weight: a queue of weight 10 is asked twice as often as one of 5.
    pub weight: u32,
}

/// Takes tasks from Redis and runs them.
pub struct WorkerServer {
    inner: Arc<Inner>,
    subscriber: SubscriberClient,
}

struct Inner {
    broker: Broker,
    settings: WorkerSettings,
    registry: HandlerRegistry,
    ledger: Option<Arc<dyn Ledger>>,
    running: Arc<RunningTasks>,
    observer: Arc<dyn Observer>,
    /// Woken when tasks may have become pending.
    fetch_wake: Arc<Notify>,
    breakers: Breakers,
}

impl WorkerServer {
    /// A server taking tasks through `broker`, woken through `subscriber`, and
    /// running them with the handlers of `registry`.
    pub fn new(
        broker: Broker,
        subscriber: SubscriberClient,
        settings: WorkerSettings,
        registry: HandlerRegistry,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                broker,
                registry,
                ledger: None,
                running: Arc::default(),
                observer: Arc::new(Unobserved),
                fetch_wake: Arc::default(),
                breakers: Breakers::new(settings.breaker),
                settings,
            }),
            subscriber,
        }
    }

    /// Consults `ledger` before each run and records each completed run in it
    /// (see [`Ledger`]). Without one, a task delivered again runs again.
    pub fn with_ledger(mut self, ledger: impl Ledger) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("not running yet")
            .ledger = Some(Arc::new(ledger));
        self
    }

    /// Reports what the server does to `observer` (metrics; tests waiting
    /// on a run).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("not running yet")
            .observer = observer;
        self
    }

    /// Runs until `shutdown` is cancelled, then lets running tasks finish or
    /// hands them back, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        let settings = &inner.settings;
        tracing::info!(queues = ?settings.queues, concurrency = settings.concurrency, "start task processor");
        let loops = TaskTracker::new();
        let handlers = TaskTracker::new();
        // Stops the loops that must outlive the handlers (leases, wake-ups, acks).
        let background = CancellationToken::new();
        // Interrupts handlers still running after the grace period.
        let abort = CancellationToken::new();
        let promote_wake = Arc::new(Notify::new());
        let queue_names: Vec<String> = settings.queues.iter().map(|q| q.queue.clone()).collect();

        let (acker, ack_loop) = Acker::start(
            inner.broker.clone(),
            settings.done_retention,
            background.clone(),
        );
        loops.spawn(ack_loop);
        loops.spawn(maintenance::listen_for_wakeups(
            self.subscriber,
            inner
                .broker
                .wake_channels(queue_names.iter().map(String::as_str)),
            inner.fetch_wake.clone(),
            promote_wake.clone(),
            background.clone(),
        ));
        loops.spawn(maintenance::keep_leases(
            inner.broker.clone(),
            settings.lease,
            inner.running.clone(),
            background.clone(),
        ));
        loops.spawn(maintenance::promote_due(
            inner.broker.clone(),
            queue_names,
            inner.registry.clone(),
            inner.observer.clone(),
            promote_wake,
            shutdown.clone(),
        ));
        inner
            .clone()
            .fetch_loop(shutdown.clone(), &handlers, &abort, &acker)
            .await;

        // Runs that have not begun their effect are handed back when they
        // reach their fence; those past it get the grace to finish.
        inner.running.stop_all();
        handlers.close();
        if tokio::time::timeout(inner.settings.shutdown_grace, handlers.wait())
            .await
            .is_err()
        {
            tracing::info!("shutdown grace over: handing running tasks back");
            abort.cancel();
            handlers.wait().await;
        }
        background.cancel();
        loops.close();
        loops.wait().await;
        tracing::info!("task processor stopped");
    }
}

impl Inner {
    async fn fetch_loop(
        self: Arc<Self>,
        shutdown: CancellationToken,
        handlers: &TaskTracker,
        abort: &CancellationToken,
        acker: &Acker,
    ) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut outage = Outage::new(
            "cannot fetch tasks; retrying",
            "redis reachable again: fetching tasks",
            Duration::from_millis(50),
            SAFETY_POLL,
        );
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let Fetched {
                tasks,
                failed,
                answered,
            } = self.dequeue(permits.len()).await;
            match failed {
                None => outage.up(),
                // No queue answered: wait before asking again.
                Some(e) if !answered => {
                    drop(permits);
                    if outage.pause("redis", &e, &shutdown).await.is_break() {
                        return;
                    }
                    continue;
                }
                // Some queue failed and others answered: carry on with those,
                // logging the failure once.
                Some(e) => {
                    outage.down("redis", &e);
                }
            }
            // Fewer tasks than free slots: the queues are empty now, so wait
            // for a wake-up (an enqueue publishes one) instead of asking again.
            let drained = tasks.len() < permits.len();
            for (task, permit) in tasks.into_iter().zip(permits) {
                self.running.insert(&task);
                handlers.spawn(
                    self.clone()
                        .run_task(task, permit, abort.clone(), acker.clone()),
                );
            }
            if drained {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.fetch_wake.notified() => {}
                    _ = tokio::time::sleep(SAFETY_POLL) => {}
                }
            }
        }
    }

    /// Takes up to `n` tasks: by weight (each slot goes to a queue drawn in
    /// proportion to its weight, so a light queue never starves) or in strict
    /// priority order. Slots a short queue could not fill go to the others.
    /// A queue whose breaker is open is skipped; one being probed gets one
    /// task.
    ///
    /// A queue whose dequeue fails is skipped, and its error returned beside
    /// the tasks the others gave: those were taken under a lease, and
    /// dropping them would strand them until the lease expired.
    async fn dequeue(&self, n: usize) -> Fetched {
        let queues = &self.settings.queues;
        let lease = self.settings.lease;
        let now = Instant::now();
        let allowed: Vec<Allowance> = queues
            .iter()
            .map(|q| self.breakers.allowance(&q.queue, now))
            .collect();
        // How many more tasks each queue may give.
        let mut room: Vec<usize> = allowed
            .iter()
            .map(|a| match a {
                Allowance::Any => n,
                Allowance::One => 1,
                Allowance::None => 0,
            })
            .collect();
        let mut fetched = Fetched {
            tasks: Vec::with_capacity(n),
            failed: None,
            answered: false,
        };
        // Records what queue `i` gave when asked for `want`.
        let take = |fetched: &mut Fetched, room: &mut [usize], i: usize, got, want| match got {
            Ok(got) => {
                let got: Vec<Task> = got;
                fetched.answered = true;
                room[i] = if got.len() < want {
                    0
                } else {
                    room[i] - got.len()
                };
                if let (Allowance::One, Some(probe)) = (allowed[i], got.first()) {
                    self.breakers.took(&queues[i].queue, probe.id);
                }
                fetched.tasks.extend(got);
            }
            Err(e) => {
                room[i] = 0;
                fetched.failed = Some(e);
            }
        };
        if !self.settings.strict_priority && queues.len() > 1 {
            let counts: Vec<usize> = weighted_draw(queues, &room, n)
                .into_iter()
                .zip(&room)
                .map(|(c, r)| c.min(*r))
                .collect();
            let draws = queues
                .iter()
                .zip(&counts)
                .filter(|(_, c)| **c > 0)
                .map(|(q, c)| self.broker.dequeue(&q.queue, *c, lease));
            let drawn: Vec<(usize, usize)> = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i, *c))
                .collect();
            for (got, (i, want)) in futures::future::join_all(draws)
                .await
                .into_iter()
                .zip(drawn)
            {
                take(&mut fetched, &mut room, i, got, want);
            }
        }
        // Strict priority, and the slots the weighted draw left: the queues in
        // priority order. A queue that came back short (or failed) is empty
        // now, and asking it again costs a round trip.
        for (i, QueueWeight { queue, .. }) in queues.iter().enumerate() {
            let want = (n - fetched.tasks.len()).min(room[i]);
            if want == 0 {
                continue;
            }
            let got = self.broker.dequeue(queue, want, lease).await;
            take(&mut fetched, &mut room, i, got, want);
        }
        fetched
    }

    async fn run_task(
        self: Arc<Self>,
        task: Task,
        _slot: OwnedSemaphorePermit,
        abort: CancellationToken,
        acker: Acker,
    ) {
        let span = self.observer.run_span(&task);
        let cx = RunContext {
            broker: &self.broker,
            acker: &acker,
            ledger: self.ledger.as_deref(),
            retry: self.settings.retry,
            done_retention: self.settings.done_retention,
            abort: &abort,
            observer: self.observer.as_ref(),
        };
        let verdict = run::run(&task, self.registry.get(&task.kind), &cx)
            .instrument(span.clone())
            .await;
        self.running.remove(&task);
        let change = self
            .breakers
            .ended(&task.queue, task.id, verdict, Instant::now());
        if let Some(change) = change {
            self.report(&task.queue, change).instrument(span).await;
        }
    }

    /// Logs a breaker's change (an opening once, not each longer pause),
    /// tells the observer, and notes it in Redis for the dashboard.
    async fn report(&self, queue: &str, change: Change) {
        let noted = match change {
            Change::Opened { pause } => {
                tracing::warn!(
                    queue,
                    pause_ms = pause.as_millis() as u64,
                    "tasks of this queue keep finding what they need down: not taking its tasks for a while (they stay pending)"
                );
                self.observer.queue_paused(queue, pause);
                self.broker.note_breaker(queue, Some(pause)).await
            }
            Change::Reopened { pause } => {
                tracing::debug!(
                    queue,
                    pause_ms = pause.as_millis() as u64,
                    "still down: paused again"
                );
                self.observer.queue_paused(queue, pause);
                self.broker.note_breaker(queue, Some(pause)).await
            }
            Change::Closed { paused_for } => {
                tracing::info!(
                    queue,
                    paused_for_ms = paused_for.as_millis() as u64,
                    "what the queue's tasks need answers again: taking its tasks"
                );
                self.observer.queue_resumed(queue, paused_for);
                self.fetch_wake.notify_one();
                self.broker.note_breaker(queue, None).await
            }
        };
        if let Err(e) = noted {
            tracing::debug!(error = %e, "could not note the breaker in redis (the dashboard shows it late)");
        }
    }
}

/// What one fetch got.
struct Fetched {
    tasks: Vec<Task>,
    /// The last error of a queue that failed.
    failed: Option<QueueError>,
    /// Whether any queue answered (if only with nothing).
    answered: bool,
}

/// How many of `n` slots each queue gets, drawn in proportion to its weight
/// among the queues with `room` left.
fn weighted_draw(queues: &[QueueWeight], room: &[usize], n: usize) -> Vec<usize> {
    let weight = |i: usize| match room[i] {
        0 => 0,
        _ => u64::from(queues[i].weight),
    };
    // In u64: weights are u32 each, and their sum must not overflow.
    let total: u64 = (0..queues.len()).map(weight).sum();
    let mut counts = vec![0usize; queues.len()];
    if total == 0 {
        return counts;
    }
    let mut rng = rand::rng();
    for _ in 0..n {
        let mut pick = rng.random_range(0..total);
        let i = (0..queues.len())
            .position(|i| {
                let w = weight(i);
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weighted_draw_hands_out_every_slot_in_proportion() {
        let queue = |name: &str, weight| QueueWeight {
            queue: name.to_owned(),
            weight,
        };
        let queues = vec![queue("critical", 10), queue("default", 5)];
        let counts = weighted_draw(&queues, &[30_000, 30_000], 30_000);
        assert_eq!(counts.iter().sum::<usize>(), 30_000);
        // 2:1 expected; far outside this band would mean a broken draw.
        assert!((18_500..21_500).contains(&counts[0]), "{counts:?}");
        // A paused queue gets nothing; the others get its share.
        assert_eq!(weighted_draw(&queues, &[0, 30_000], 100), vec![0, 100]);
    }
}
