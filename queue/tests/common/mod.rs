//! Support for the queue crate's tests: a Redis key prefix of the test's own
//! on the Redis that REDIS_URL names, a worker server started and stopped on
//! it, an in-memory ledger, and bounded waits that look again whenever a
//! worker reports something ([`eventually`]). The service's tests use its
//! logging, its wait core and raw Redis client too (tests/common/mod.rs).

#![allow(dead_code)]

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock, Mutex, Once},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use simplebank_queue::{
    BreakerSettings, Broker, HandlerRegistry, Ledger, Observer, QueueWeight, RedisSettings,
    RetryPolicy, RunEnd, RunEnded, Task, TaskId, TaskInfo, TaskState, WorkerServer, WorkerSettings,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Logs to the test's output, at TEST_LOG (default warn).
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A test's own key prefix on the Redis of REDIS_URL.
pub struct QueueEnv {
    pub redis: RedisSettings,
    pub prefix: String,
}

impl QueueEnv {
    /// A fresh prefix: no other test sees this one's queues.
    pub async fn new() -> Self {
        Self::with_prefix(&format!("sbtest:queue-{}", uuid::Uuid::new_v4().simple()))
    }

    /// An existing prefix (a child process working on its parent's queues).
    pub fn with_prefix(prefix: &str) -> Self {
        init_logs();
        let url = std::env::var("REDIS_URL")
            .unwrap_or_else(|_| panic!("REDIS_URL is not set: run the tests with `make test`"));
        Self {
            redis: RedisSettings {
                url,
                pool_size: 4,
                connect_timeout: Duration::from_secs(5),
                command_timeout: Duration::from_secs(3),
            },
            prefix: prefix.to_owned(),
        }
    }

    /// A broker on this test's prefix.
    pub fn queue(&self) -> Broker {
        Broker::new(self.redis.pool().unwrap(), &self.prefix)
    }

    /// Settings as a service would give them, with the retry schedule in
    /// milliseconds instead of seconds (15 ms, 46 ms, ...).
    pub fn settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: 16,
            queues: vec![
                QueueWeight {
                    queue: "critical".into(),
                    weight: 10,
                },
                QueueWeight {
                    queue: "default".into(),
                    weight: 5,
                },
            ],
            strict_priority: false,
            lease: Duration::from_secs(30),
            retry: RetryPolicy {
                unit: Duration::from_millis(1),
                max: Duration::from_millis(500),
            },
            shutdown_grace: Duration::from_secs(4),
            done_retention: Duration::from_secs(3600),
            breaker: BreakerSettings {
                failures: 3,
                first_pause: Duration::from_millis(300),
                max_pause: Duration::from_secs(2),
            },
        }
    }
}

/// A running worker server; stop it with [`stop_worker`].
pub struct RunningWorker {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// A worker server for `env`'s queues, with `tweak` applied to its settings.
pub fn start_worker(
    env: &QueueEnv,
    registry: HandlerRegistry,
    tweak: impl FnOnce(&mut WorkerSettings),
) -> RunningWorker {
    start_worker_with(env, registry, None, tweak)
}

/// [`start_worker`] with a ledger.
pub fn start_worker_with(
    env: &QueueEnv,
    registry: HandlerRegistry,
    ledger: Option<MemoryLedger>,
    tweak: impl FnOnce(&mut WorkerSettings),
) -> RunningWorker {
    let mut settings = env.settings();
    tweak(&mut settings);
    let mut server = WorkerServer::new(
        env.queue(),
        env.redis.subscriber().unwrap(),
        settings,
        registry,
    );
    if let Some(ledger) = ledger {
        server = server.with_ledger(ledger);
    }
    RunningWorker::spawn(server.with_observer(Arc::new(Reported)))
}

impl RunningWorker {
    /// Runs `server`, built by the caller, until [`stop_worker`].
    pub fn spawn(server: WorkerServer) -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(server.run(stop.clone()));
        Self { stop, handle }
    }
}

/// Longer than any test's shutdown grace (the service's default is 15 s).
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Stops `worker` and checks that it stops within its grace and a margin.
pub async fn stop_worker(worker: RunningWorker) {
    worker.stop.cancel();
    tokio::time::timeout(STOP_LIMIT, worker.handle)
        .await
        .expect("worker stops")
        .unwrap();
}

/// The ledger kept in memory: the ids of completed runs, shared by clones.
#[derive(Clone, Default)]
pub struct MemoryLedger {
    done: std::sync::Arc<Mutex<HashSet<TaskId>>>,
}

impl MemoryLedger {
    pub fn contains(&self, id: TaskId) -> bool {
        self.done.lock().unwrap().contains(&id)
    }
}

impl Ledger for MemoryLedger {
    fn is_done<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move { Ok(self.contains(task.id)) })
    }

    fn mark_done<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.done.lock().unwrap().insert(task.id);
            Ok(())
        })
    }
}

/// Raw Redis commands.
pub async fn redis_client(url: &str) -> fred::clients::Client {
    use fred::prelude::*;
    let client = fred::clients::Client::new(
        fred::types::config::Config::from_url(url).unwrap(),
        None,
        None,
        None,
    );
    client.init().await.unwrap();
    client
}

/// Waits until task `id` of `queue` is in `state`.
pub async fn wait_state(q: &Broker, queue: &str, id: TaskId, state: TaskState) -> TaskInfo {
    eventually(
        Duration::from_secs(20),
        &format!("task {id}: {state}"),
        || async {
            q.task(queue, id)
                .await
                .ok()
                .flatten()
                .filter(|t| t.state == state)
        },
    )
    .await
}

/// What the test workers report (any run ended, lease expired or lost),
/// for [`eventually`] to look again at once.
static REPORTS: LazyLock<broadcast::Sender<()>> = LazyLock::new(|| broadcast::channel(1024).0);

/// The observer of every test worker: it tells waiters that something ended.
struct Reported;

impl Observer for Reported {
    fn run_ended(&self, _run: &RunEnded<'_>) {
        let _ = REPORTS.send(());
    }

    fn lease_expired(&self, _kind: &str, _end: RunEnd) {
        let _ = REPORTS.send(());
    }

    fn lease_lost(&self, _id: TaskId) {
        let _ = REPORTS.send(());
    }

    fn queue_paused(&self, _queue: &str, _pause: Duration) {
        let _ = REPORTS.send(());
    }

    fn queue_resumed(&self, _queue: &str, _paused_for: Duration) {
        let _ = REPORTS.send(());
    }
}

/// The longest a wait goes without looking again: for what no report
/// announces (a task the test enqueued itself, a run that started, another
/// process's work).
const LOOK_AGAIN_AFTER: Duration = Duration::from_millis(100);

/// The shortest time between two looks: a flood of reports (thousands of
/// runs a second) must not turn a wait into a busy loop of checks.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_millis(5);

/// Waits until `check` returns `Some`, looking again at each of the test
/// workers' reports, or panics after `limit` naming `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_on(limit, what, &mut REPORTS.subscribe(), check).await
}

/// Waits until `check` returns `Some`, looking again at every event of
/// `events` (or after [`LOOK_AGAIN_AFTER`] at the latest), or panics after
/// `limit` naming `what`. Subscribe before the call: an event between the
/// subscription and the first look is not missed.
pub async fn eventually_on<E: Clone, T, F, Fut>(
    limit: Duration,
    what: &str,
    events: &mut broadcast::Receiver<E>,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        let now = Instant::now();
        assert!(
            now < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        let wait = LOOK_AGAIN_AFTER.min(deadline - now);
        // An event, a lag (events were missed: look again) or the time: look.
        let _ = tokio::time::timeout(wait, events.recv()).await;
        tokio::time::sleep_until((now + LOOK_AT_MOST_EVERY).into()).await;
        // What came meanwhile is seen by the next look.
        while !matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
    }
}
