//! Prometheus metrics: every name in one place, the process's recorder, and
//! the gauges read from Postgres and Redis when they are scraped.
//!
//! Counters and histograms are recorded where things happen (the edge, the
//! relay, a run) through the functions below; gauges that describe shared
//! state (the outbox backlog, tasks per queue) are read at scrape time by a
//! [`Scrape`], at most once a second however often `/metrics` is asked.
//! Names follow Prometheus' conventions: `simplebank_` first, the unit last.
//! `deploy/` (the Grafana dashboard, the alert rules) reads these names.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::{
    outbox::stats::OutboxStats,
    queue::{Broker, Observer, QueueStats, RunEnd, RunEnded, TaskState},
};

pub const HTTP_REQUESTS: &str = "simplebank_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "simplebank_http_request_duration_seconds";
pub const EDGE_REFUSALS: &str = "simplebank_http_refusals_total";
pub const OUTBOX_UNDISPATCHED: &str = "simplebank_outbox_undispatched_rows";
pub const OUTBOX_OLDEST_AGE: &str = "simplebank_outbox_oldest_undispatched_age_seconds";
pub const RELAY_BATCHES: &str = "simplebank_relay_batches_total";
pub const RELAY_ROWS: &str = "simplebank_relay_rows_total";
pub const RELAY_ERRORS: &str = "simplebank_relay_errors_total";
pub const COMMIT_TO_ENQUEUE: &str = "simplebank_relay_commit_to_enqueue_seconds";
pub const QUEUE_TASKS: &str = "simplebank_queue_tasks";
pub const QUEUE_LATENCY: &str = "simplebank_queue_latency_seconds";
pub const QUEUE_PAUSED: &str = "simplebank_queue_paused";
pub const TASKS_PROCESSED: &str = "simplebank_tasks_processed_total";
pub const TASKS_FAILED: &str = "simplebank_tasks_failed_total";
pub const TASKS_RETRIED: &str = "simplebank_tasks_retried_total";
pub const TASKS_ARCHIVED: &str = "simplebank_tasks_archived_total";
pub const HANDLER_DURATION: &str = "simplebank_task_handler_duration_seconds";
pub const COMMIT_TO_HANDLED: &str = "simplebank_task_commit_to_handled_seconds";
pub const SCRAPE_SOURCE_UP: &str = "simplebank_scrape_source_up";
/// Rows the retention loop deleted, per table.
pub const RETENTION_DELETED: &str = "simplebank_retention_deleted_rows_total";
/// 1 while this worker's breaker holds a queue back (its tasks keep finding
/// what they need down: the mail provider refusing the sender), else 0.
pub const WORKER_BREAKER_OPEN: &str = "simplebank_worker_breaker_open";
/// Pauses this worker's breakers took (an opening, and each longer pause
/// after a probe found the dependency still down).
pub const WORKER_BREAKER_PAUSES: &str = "simplebank_worker_breaker_pauses_total";

/// Finished spans exported to the OTLP collector.
pub const TRACE_SPANS_EXPORTED: &str = "simplebank_trace_spans_exported_total";
/// Finished spans lost on their way: the export queue was full, or an
/// export failed or timed out (the collector is away).
pub const TRACE_SPANS_DROPPED: &str = "simplebank_trace_spans_dropped_total";

/// Histogram buckets for every `_seconds` metric: from a millisecond (a
/// relay hop) to minutes (a task that waited out an outage).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
];

/// The process's recorder, installed on first use. Histogram samples are
/// folded into their buckets every few seconds by a thread of its own, so
/// a process nobody scrapes does not keep them all.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Only this function installs one; a second install (another
        // embedder's) leaves ours unused, which the metrics test would show.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics shows ours only");
        }
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawning a thread");
        handle
    })
}

/// One HTTP request answered. `route` is the matched route's pattern (never
/// the raw path: one series per route, not per URL a client invents).
pub fn http_request(route: &str, method: &str, status: u16, took: Duration) {
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_REQUEST_DURATION, &labels).record(took.as_secs_f64());
}

/// Why the edge refused a request.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// Over the client's rate (429).
    RateLimit,
    /// Over the client's rate of sign-ups and link requests (429).
    SignupRate,
    /// `HTTP_MAX_IN_FLIGHT` requests under way already (503).
    InFlight,
    /// Over `HTTP_REQUEST_TIMEOUT` (503).
    Timeout,
    /// No password-hashing slot within `ARGON2_QUEUE_WAIT` (503).
    HashingBusy,
    /// A connection that sent nothing within `HTTP_HEADER_TIMEOUT`.
    SilentConnection,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::SignupRate => "signup_rate",
            Self::InFlight => "in_flight",
            Self::Timeout => "timeout",
            Self::HashingBusy => "hashing_busy",
            Self::SilentConnection => "silent_connection",
        }
    }
}

pub fn trace_spans_exported(n: u64) {
    counter!(TRACE_SPANS_EXPORTED).increment(n);
}

pub fn trace_spans_dropped(reason: &'static str, n: u64) {
    counter!(TRACE_SPANS_DROPPED, "reason" => reason).increment(n);
}

pub fn edge_refused(why: Refusal) {
    counter!(EDGE_REFUSALS, "reason" => why.as_str()).increment(1);
}

/// One relay batch forwarded: its rows per queue, and how long each row
/// waited from its outbox insert to Redis.
pub fn relay_batch<'a>(rows: impl IntoIterator<Item = (&'a str, DateTime<Utc>)>) {
    counter!(RELAY_BATCHES).increment(1);
    let now = Utc::now();
    let wait = histogram!(COMMIT_TO_ENQUEUE);
    for (queue, created_at) in rows {
        counter!(RELAY_ROWS, "queue" => queue.to_owned()).increment(1);
        wait.record(seconds_since(created_at, now));
    }
}

/// Rows deleted past their retention from `table`.
pub fn retention_deleted(table: &'static str, rows: u64) {
    counter!(RETENTION_DELETED, "table" => table).increment(rows);
}

/// Where a relay error came from.
pub fn relay_error(store: &'static str) {
    counter!(RELAY_ERRORS, "store" => store).increment(1);
}

/// The worker server's runs, counted per task kind (the server labels kinds
/// no handler knows as one, so a kind enqueued by hand under any name adds
/// one series, not one per name).
pub struct TaskMetrics;

impl Observer for TaskMetrics {
    fn run_ended(&self, run: &RunEnded<'_>) {
        let kind = run.kind.to_owned();
        histogram!(HANDLER_DURATION, "kind" => kind.clone()).record(run.took.as_secs_f64());
        match run.end {
            RunEnd::Processed => {
                counter!(TASKS_PROCESSED, "kind" => kind.clone()).increment(1);
                // From the commit, or from a later process_at: a delay on
                // purpose is not latency.
                if let Some(due_at) = run.due_at {
                    histogram!(COMMIT_TO_HANDLED, "kind" => kind)
                        .record(seconds_since(due_at, Utc::now()));
                }
            }
            RunEnd::Retried | RunEnd::Archived => run_failed(&kind, run.end),
        }
    }

    /// A run whose worker died or was cut off, which no worker lived to count.
    fn lease_expired(&self, kind: &str, end: RunEnd) {
        run_failed(kind, end);
    }

    fn queue_paused(&self, queue: &str, _pause: Duration) {
        gauge!(WORKER_BREAKER_OPEN, "queue" => queue.to_owned()).set(1.0);
        counter!(WORKER_BREAKER_PAUSES, "queue" => queue.to_owned()).increment(1);
    }

    fn queue_resumed(&self, queue: &str, _paused_for: Duration) {
        gauge!(WORKER_BREAKER_OPEN, "queue" => queue.to_owned()).set(0.0);
    }
}

/// A failed run: retried, or archived.
fn run_failed(kind: &str, end: RunEnd) {
    let kind = kind.to_owned();
    counter!(TASKS_FAILED, "kind" => kind.clone()).increment(1);
    let name = match end {
        RunEnd::Archived => TASKS_ARCHIVED,
        _ => TASKS_RETRIED,
    };
    counter!(name, "kind" => kind).increment(1);
}

fn seconds_since(then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - then).to_std().unwrap_or_default().as_secs_f64()
}

/// Reads the gauges of shared state at scrape time: the outbox backlog
/// (when `outbox` is set: a process running the relay) and each queue's
/// tasks, latency and pause (when `queues` is set: a process running the
/// worker). Cheap to clone.
#[derive(Clone)]
pub struct Scrape {
    outbox: Option<(PgPool, Broker)>,
    queues: Option<(Broker, Vec<String>)>,
    last: Arc<Mutex<Option<Instant>>>,
}

/// The longest a scrape waits for Postgres or Redis.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrapes within this of the last one reuse its gauges: a crowd asking for
/// `/metrics` costs Postgres and Redis one read a second.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

impl Scrape {
    pub fn new(outbox: Option<(PgPool, Broker)>, queues: Option<(Broker, Vec<String>)>) -> Self {
        Self {
            outbox,
            queues,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The metrics text, with the gauges read afresh when they are older than
    /// a second. A source that does not answer sets its
    /// `simplebank_scrape_source_up` to 0 and keeps its last values.
    pub async fn render(&self) -> String {
        {
            let mut last = self.last.lock().await;
            if last.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
                tokio::join!(self.read_outbox(), self.read_queues());
                *last = Some(Instant::now());
            }
        }
        handle().render()
    }

    async fn read_outbox(&self) {
        let Some((pool, broker)) = &self.outbox else {
            return;
        };
        let read = tokio::time::timeout(SOURCE_TIMEOUT, OutboxStats::read(pool, broker)).await;
        let up = match read {
            Ok(Ok(stats)) => {
                gauge!(OUTBOX_UNDISPATCHED).set(stats.undispatched as f64);
                gauge!(OUTBOX_OLDEST_AGE).set(stats.oldest_age.unwrap_or_default().as_secs_f64());
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "metrics: cannot read the outbox");
                false
            }
            Err(_) => false,
        };
        gauge!(SCRAPE_SOURCE_UP, "source" => "outbox").set(f64::from(u8::from(up)));
    }

    async fn read_queues(&self) {
        let Some((broker, queues)) = &self.queues else {
            return;
        };
        // Side by side, under one timeout: a Redis that does not answer
        // costs a scrape two seconds, not two per queue.
        let reads = futures::future::join_all(queues.iter().map(|q| broker.stats(q)));
        let up = match tokio::time::timeout(SOURCE_TIMEOUT, reads).await {
            Ok(results) => {
                let mut up = true;
                for (queue, read) in queues.iter().zip(results) {
                    match read {
                        Ok(s) => set_queue_gauges(queue, &s),
                        Err(e) => {
                            tracing::debug!(queue, error = %e, "metrics: cannot read the queue");
                            up = false;
                        }
                    }
                }
                up
            }
            Err(_) => false,
        };
        gauge!(SCRAPE_SOURCE_UP, "source" => "queues").set(f64::from(u8::from(up)));
    }
}

fn set_queue_gauges(queue: &str, s: &QueueStats) {
    for state in TaskState::ALL {
        if let Some(n) = s.count(state) {
            gauge!(QUEUE_TASKS, "queue" => queue.to_owned(), "state" => state.as_str())
                .set(n as f64);
        }
    }
    gauge!(QUEUE_LATENCY, "queue" => queue.to_owned())
        .set(s.latency.unwrap_or_default().as_secs_f64());
    gauge!(QUEUE_PAUSED, "queue" => queue.to_owned()).set(f64::from(u8::from(s.paused)));
}
