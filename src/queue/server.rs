//! The worker server: takes tasks from Redis under a lease, runs their
//! handlers, and records the outcome.
//!
//! Five loops, all stopped by one `CancellationToken`:
//! - fetch: whenever a slot is free, takes tasks from the queues by weight (or
//!   strict priority). When the queues are empty it blocks on a wake-up
//!   published by the enqueue scripts, with a 1 s safety poll, so an idle worker
//!   starts a new task within a round trip and does not poll in a tight loop.
//! - forward: moves due scheduled and retry tasks to pending and recovers
//!   expired leases; it sleeps exactly until the next due time.
//! - lease: extends the leases of the tasks this process runs.
//! - wake: turns messages on the queues' wake channels into local wake-ups.
//! - ack: acknowledges completed runs in batches (see [`super::ack`]).
//!
//! At shutdown, running tasks get `shutdown_grace` to finish; the rest are
//! handed back to the front of their pending list at once.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::{clients::SubscriberClient, prelude::*};
use futures::{FutureExt, future::BoxFuture};
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{QueueClient, QueueError, TaskError, ack::Acker, scripts, task::Task};
use crate::config::WorkerConfig;

/// Most tasks moved between sets by one forward script call.
const FORWARD_BATCH: u32 = 1000;
/// The longest the fetch and forward loops sleep without a wake-up.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Runs tasks of one kind.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Processed, TaskError>>;
}

/// Fields a handler adds to the "processed task" log line.
#[derive(Debug, Default)]
pub struct Processed {
    fields: Vec<(&'static str, String)>,
}

impl Processed {
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.fields.push((name, value.into()));
        self
    }
}

impl std::fmt::Display for Processed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.fields.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { "" } else { " " })?;
        }
        Ok(())
    }
}

/// A handler from an async function that takes the task by value.
pub fn handler_fn<F, Fut>(f: F) -> impl Handler
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Processed, TaskError>> + Send + 'static,
{
    struct FnHandler<F>(F);
    impl<F, Fut> Handler for FnHandler<F>
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Processed, TaskError>> + Send + 'static,
    {
        fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Processed, TaskError>> {
            Box::pin((self.0)(task.clone()))
        }
    }
    FnHandler(f)
}

/// Handlers by task kind.
#[derive(Default, Clone)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl HandlerRegistry {
    pub fn register(&mut self, kind: &str, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    fn get(&self, kind: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(kind).cloned()
    }
}

/// How a worker server runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    /// Queues with their weights, highest first.
    pub queues: Vec<(String, u32)>,
    pub strict_priority: bool,
    pub lease: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub shutdown_grace: Duration,
    pub done_retention: Duration,
}

impl From<&WorkerConfig> for WorkerSettings {
    fn from(c: &WorkerConfig) -> Self {
        Self {
            concurrency: c.worker_concurrency.max(1),
            queues: c.worker_queues.by_priority(),
            strict_priority: c.worker_strict_priority,
            lease: c.worker_lease,
            retry_base: c.worker_retry_base,
            retry_max: c.worker_retry_max,
            shutdown_grace: c.worker_shutdown_grace,
            done_retention: c.worker_done_retention,
        }
    }
}

impl WorkerSettings {
    /// Delay before retry number `retried + 1`: exponential, capped, with jitter
    /// (between half and all of it) so that failed tasks do not return in step.
    pub fn retry_delay(&self, retried: u32) -> Duration {
        let exp = self
            .retry_base
            .saturating_mul(2u32.saturating_pow(retried.min(30)));
        let capped = exp.min(self.retry_max);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Takes tasks from Redis and runs them.
pub struct WorkerServer {
    inner: Arc<Inner>,
}

struct Inner {
    client: QueueClient,
    subscriber: SubscriberClient,
    settings: WorkerSettings,
    registry: HandlerRegistry,
    /// Tasks this process runs, by (queue, id), with their delivery number.
    running: Mutex<HashMap<(String, i64), String>>,
    /// Woken when tasks may have become pending.
    fetch_wake: Notify,
    /// Woken when due times may have changed.
    forward_wake: Notify,
}

/// What became of one run.
enum Outcome {
    Done(Processed),
    Failed(TaskError),
    HandedBack,
}

impl WorkerServer {
    pub fn new(
        client: QueueClient,
        subscriber: SubscriberClient,
        settings: WorkerSettings,
        registry: HandlerRegistry,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                subscriber,
                settings,
                registry,
                running: Mutex::new(HashMap::new()),
                fetch_wake: Notify::new(),
                forward_wake: Notify::new(),
            }),
        }
    }

    /// Runs until `shutdown` is cancelled, then lets running tasks finish or
    /// hands them back, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        tracing::info!(queues = ?inner.settings.queues, concurrency = inner.settings.concurrency, "start task processor");
        let loops = TaskTracker::new();
        let handlers = TaskTracker::new();
        // Stops the loops that must outlive the handlers (leases, wake-ups).
        let background = CancellationToken::new();
        // Interrupts handlers still running after the grace period.
        let abort = CancellationToken::new();

        let (acker, ack_loop) = Acker::start(
            inner.client.clone(),
            inner.settings.done_retention,
            background.clone(),
        );
        loops.spawn(ack_loop);
        loops.spawn(inner.clone().wake_loop(background.clone()));
        loops.spawn(inner.clone().lease_loop(background.clone()));
        loops.spawn(inner.clone().forward_loop(shutdown.clone()));
        inner
            .clone()
            .fetch_loop(shutdown.clone(), &handlers, &abort, &acker)
            .await;

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
        let mut failing = false;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let tasks = match self.dequeue(permits.len()).await {
                Ok(tasks) => {
                    if failing {
                        tracing::info!("redis reachable again: fetching tasks");
                        failing = false;
                    }
                    tasks
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot fetch tasks; retrying");
                        failing = true;
                    }
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            // Fewer tasks than free slots: the queues are empty now, so wait
            // for a wake-up (an enqueue publishes one) instead of asking again.
            let drained = tasks.len() < permits.len();
            for (task, permit) in tasks.into_iter().zip(permits) {
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
    async fn dequeue(&self, n: usize) -> Result<Vec<Task>, QueueError> {
        let queues = &self.settings.queues;
        let mut tasks = Vec::with_capacity(n);
        // Queues that came back short from the weighted draw: they are empty,
        // and asking them again costs a round trip.
        let mut emptied = vec![false; queues.len()];
        if !self.settings.strict_priority && queues.len() > 1 {
            let total: u32 = queues.iter().map(|(_, w)| w).sum();
            let mut counts = vec![0usize; queues.len()];
            {
                let mut rng = rand::rng();
                for _ in 0..n {
                    let mut pick = rng.random_range(0..total);
                    let i = queues
                        .iter()
                        .position(|(_, w)| {
                            if pick < *w {
                                true
                            } else {
                                pick -= w;
                                false
                            }
                        })
                        .unwrap_or(0);
                    counts[i] += 1;
                }
            }
            let draws = queues
                .iter()
                .zip(&counts)
                .filter(|(_, c)| **c > 0)
                .map(|((q, _), c)| self.dequeue_from(q, *c));
            let drawn = counts.iter().enumerate().filter(|(_, c)| **c > 0);
            for (got, (i, want)) in futures::future::try_join_all(draws)
                .await?
                .into_iter()
                .zip(drawn)
            {
                emptied[i] = got.len() < *want;
                tasks.extend(got);
            }
        }
        // Strict priority, and the slots the weighted draw left: the queues in
        // priority order.
        for ((queue, _), emptied) in queues.iter().zip(emptied) {
            if tasks.len() == n {
                break;
            }
            if !emptied {
                tasks.extend(self.dequeue_from(queue, n - tasks.len()).await?);
            }
        }
        Ok(tasks)
    }

    async fn dequeue_from(&self, queue: &str, n: usize) -> Result<Vec<Task>, QueueError> {
        let keys = self.client.keys(queue);
        let flat: Vec<fred::types::Value> = scripts::run(
            self.client.pool(),
            &self.client.scripts().dequeue,
            vec![keys.task_prefix, keys.pending, keys.active],
            vec![n.to_string(), self.settings.lease.as_millis().to_string()],
        )
        .await?;
        let text = |v: &fred::types::Value| v.as_string().unwrap_or_default();
        let num = |v: &fred::types::Value| v.as_i64().unwrap_or(0);
        let mut tasks = Vec::with_capacity(flat.len() / 7);
        let mut running = self.running.lock().expect("running-task map poisoned");
        for f in flat.chunks_exact(7) {
            let task = Task {
                id: num(&f[0]),
                kind: text(&f[1]),
                queue: queue.to_owned(),
                payload: text(&f[2]),
                attempt: num(&f[3]) as u32 + 1,
                max_retry: num(&f[4]) as u32,
                timeout: Duration::from_millis(num(&f[5]).max(1) as u64),
                delivery: text(&f[6]),
            };
            running.insert((task.queue.clone(), task.id), task.delivery.clone());
            tasks.push(task);
        }
        Ok(tasks)
    }

    async fn run_task(
        self: Arc<Self>,
        task: Task,
        _slot: OwnedSemaphorePermit,
        abort: CancellationToken,
        acker: Acker,
    ) {
        let span = tracing::info_span!("task", task_id = task.id, r#type = %task.kind, queue = %task.queue, attempt = task.attempt);
        async {
            let started = Instant::now();
            let outcome = match self.registry.get(&task.kind) {
                None => Outcome::Failed(TaskError::skip_retry(anyhow::anyhow!(
                    "no handler is registered for task kind {:?}",
                    task.kind
                ))),
                Some(handler) => tokio::select! {
                    biased;
                    _ = abort.cancelled() => Outcome::HandedBack,
                    result = run_handler(handler.as_ref(), &task) => match result {
                        Ok(p) => Outcome::Done(p),
                        Err(e) => Outcome::Failed(e),
                    },
                },
            };
            if let Err(e) = self.record(&task, outcome, started.elapsed(), &acker).await {
                // The lease will expire and the task will run again elsewhere.
                tracing::error!(error = %e, "could not record the outcome of the task");
            }
            self.running
                .lock()
                .expect("running-task map poisoned")
                .remove(&(task.queue.clone(), task.id));
        }
        .instrument(span)
        .await
    }

    async fn record(
        &self,
        task: &Task,
        outcome: Outcome,
        took: Duration,
        acker: &Acker,
    ) -> Result<(), QueueError> {
        let keys = self.client.keys(&task.queue);
        let scripts = self.client.scripts();
        let pool = self.client.pool();
        let id = task.id.to_string();
        let lost = |what: &str| {
            tracing::warn!("lease lost before the task was {what}: another worker has it")
        };
        match outcome {
            Outcome::Done(processed) => {
                let ok = acker.complete(&task.queue, task.id, &task.delivery).await?;
                tracing::info!(r#type = %task.kind, payload = %task.payload, took_ms = took.as_millis() as u64, fields = %processed, "processed task");
                if !ok {
                    lost("acknowledged");
                }
            }
            Outcome::Failed(error) => {
                let skip = matches!(error, TaskError::SkipRetry(_));
                let delay = self.settings.retry_delay(task.attempt - 1);
                let state: String = scripts::run(
                    pool,
                    &scripts.fail,
                    vec![keys.task(task.id), keys.active, keys.retry, keys.archived],
                    vec![
                        id,
                        task.delivery.clone(),
                        error.to_string(),
                        delay.as_millis().to_string(),
                        if skip { "1" } else { "0" }.to_owned(),
                        keys.wake_channel,
                    ],
                )
                .await?;
                match state.as_str() {
                    "retry" => {
                        tracing::warn!(r#type = %task.kind, payload = %task.payload, error = %error, retry_in_ms = delay.as_millis() as u64, "task failed; will retry")
                    }
                    "archived" => {
                        tracing::error!(r#type = %task.kind, payload = %task.payload, error = %error, "task failed; archived")
                    }
                    _ => lost("failed"),
                }
            }
            Outcome::HandedBack => {
                let ok: i64 = scripts::run(
                    pool,
                    &scripts.requeue,
                    vec![keys.task(task.id), keys.active, keys.pending],
                    vec![id, task.delivery.clone(), keys.wake_channel],
                )
                .await?;
                if ok == 1 {
                    tracing::info!("task handed back to pending");
                } else {
                    lost("handed back");
                }
            }
        }
        Ok(())
    }

    async fn forward_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            let mut next = SAFETY_POLL;
            let mut again = false;
            for (queue, _) in &self.settings.queues {
                match self.forward(queue).await {
                    Ok((moved, recovered, next_due)) => {
                        if failing {
                            failing = false;
                            tracing::info!("redis reachable again: forwarding due tasks");
                        }
                        if recovered > 0 {
                            tracing::warn!(queue = %queue, recovered, "recovered tasks whose lease expired");
                        }
                        again |= moved >= FORWARD_BATCH as i64;
                        if next_due >= 0 {
                            next = next.min(Duration::from_millis(next_due as u64));
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot forward due tasks; retrying");
                            failing = true;
                        }
                    }
                }
            }
            if again {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.forward_wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    async fn forward(&self, queue: &str) -> Result<(i64, i64, i64), QueueError> {
        let k = self.client.keys(queue);
        let r: Vec<i64> = scripts::run(
            self.client.pool(),
            &self.client.scripts().forward,
            vec![
                k.task_prefix,
                k.pending,
                k.scheduled,
                k.retry,
                k.active,
                k.archived,
            ],
            vec![k.wake_channel, FORWARD_BATCH.to_string()],
        )
        .await?;
        match r.as_slice() {
            [moved, recovered, next_due] => Ok((*moved, *recovered, *next_due)),
            _ => Ok((0, 0, -1)),
        }
    }

    async fn lease_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.settings.lease / 3;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let by_queue: HashMap<String, Vec<(i64, String)>> = {
                let running = self.running.lock().expect("running-task map poisoned");
                let mut m: HashMap<String, Vec<(i64, String)>> = HashMap::new();
                for ((q, id), d) in running.iter() {
                    m.entry(q.clone()).or_default().push((*id, d.clone()));
                }
                m
            };
            for (queue, tasks) in by_queue {
                let k = self.client.keys(&queue);
                let mut args = vec![self.settings.lease.as_millis().to_string()];
                for (id, delivery) in tasks {
                    args.extend([id.to_string(), delivery]);
                }
                let lost: Result<Vec<i64>, _> = scripts::run(
                    self.client.pool(),
                    &self.client.scripts().extend,
                    vec![k.task_prefix, k.active],
                    args,
                )
                .await;
                match lost {
                    Ok(lost) if !lost.is_empty() => {
                        tracing::warn!(queue = %queue, ?lost, "leases lost")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot extend leases"),
                }
            }
        }
    }

    async fn wake_loop(self: Arc<Self>, stop: CancellationToken) {
        let channels: Vec<String> = self
            .settings
            .queues
            .iter()
            .map(|(q, _)| self.client.keys(q).wake_channel)
            .collect();
        let mut messages = self.subscriber.message_rx();
        if let Err(e) = self.subscriber.subscribe(channels).await {
            // The subscriber re-subscribes when Redis is back; until then the
            // safety poll keeps tasks moving.
            tracing::warn!(error = %e, "cannot subscribe to wake-ups yet");
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                msg = messages.recv() => match msg {
                    Ok(msg) => {
                        // "0": only due times changed, nothing new is pending.
                        if msg.value.as_str().is_none_or(|v| v != "0") {
                            self.fetch_wake.notify_one();
                        }
                        self.forward_wake.notify_one();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.fetch_wake.notify_one();
                        self.forward_wake.notify_one();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        let _ = self.subscriber.unsubscribe_all().await;
    }
}

/// Runs a handler with the task's timeout; a panic or a timeout is a failed attempt.
async fn run_handler(handler: &dyn Handler, task: &Task) -> Result<Processed, TaskError> {
    match tokio::time::timeout(
        task.timeout,
        AssertUnwindSafe(handler.handle(task)).catch_unwind(),
    )
    .await
    {
        Err(_) => Err(TaskError::Retry(anyhow::anyhow!(
            "timed out after {:?}",
            task.timeout
        ))),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(TaskError::Retry(anyhow::anyhow!("handler panicked: {msg}")))
        }
        Ok(Ok(result)) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let s = WorkerSettings {
            concurrency: 1,
            queues: vec![],
            strict_priority: false,
            lease: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            shutdown_grace: Duration::ZERO,
            done_retention: Duration::ZERO,
        };
        for _ in 0..100 {
            let d0 = s.retry_delay(0);
            assert!(
                d0 >= Duration::from_millis(500) && d0 <= Duration::from_secs(1),
                "{d0:?}"
            );
            let d3 = s.retry_delay(3);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            assert!(s.retry_delay(40) <= Duration::from_secs(60));
        }
    }
}
