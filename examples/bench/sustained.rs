//! Part 5, the sustained pipeline: sign-up transactions committed by many
//! writers as fast as they go for a while, through the whole pipeline (the
//! relay in this process, as `serve` runs it; 1 or 3 worker processes with a
//! no-op handler), on a single Redis and on a cluster. Reported per second of
//! wall time, with the backlog left at the end and its trend, and the
//! commit-to-handler latency: the figure to set beside a Postgres-only
//! queue's sustained rate. Once more with bulk writers, each transaction
//! 500 outbox rows (a bulk send): the figure to set beside a job queue that
//! inserts in batches.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use chrono::Utc;
use fred::prelude::*;
use simplebank::{
    app::Clients,
    config::Config,
    outbox::{Outbox, stats::OutboxStats, wake::RelayWaker},
    queue::{Broker, HandlerRegistry, Processed, WorkerServer, handler_fn},
};
use tokio_util::sync::CancellationToken;

use super::{Bench, PREFIX, Row, ms, per_s, sign_up, stop};

/// The task kind the bench's workers run (a no-op).
const KIND: &str = "bench:sustained";
/// Outbox rows per transaction of a bulk writer.
const BULK_ROWS: i64 = 500;
/// How often the backlog is sampled for its trend.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// One Redis the pipeline runs on.
pub struct Target {
    pub name: &'static str,
    pub url: String,
    /// REDIS_WAIT_REPLICAS for the relay and the workers.
    pub wait_replicas: u32,
}

/// The `--worker-child` process: a worker server with a no-op handler that
/// notes, for each task, when it ran and how long after its commit. Runs
/// until SIGTERM, then writes its notes to `out` (one "unix_ms latency_us"
/// per line) and exits.
pub async fn worker_child(cfg: Config, out: PathBuf) -> anyhow::Result<()> {
    let notes = Arc::new(Mutex::new(Vec::<(i64, i64)>::with_capacity(1 << 20)));
    let mut registry = HandlerRegistry::default();
    let seen = notes.clone();
    registry.register(
        KIND,
        handler_fn(move |task| {
            let now = Utc::now();
            if let Some(committed) = task.created_at {
                let latency = (now - committed).num_microseconds().unwrap_or(i64::MAX);
                seen.lock().unwrap().push((now.timestamp_millis(), latency));
            }
            async { Ok(Processed::default()) }
        }),
    );
    // As `worker` builds it: with REDIS_WAIT_REPLICAS, waiting for them.
    let broker = Clients::new(&cfg)?.worker_broker(&cfg)?;
    let server = WorkerServer::new(
        broker,
        cfg.redis.connection().subscriber()?,
        cfg.worker.server_settings(),
        registry,
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(server.run(stop.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    println!("ready");
    std::io::stdout().flush()?;
    term.recv().await;
    stop.cancel();
    running.await?;
    let notes = std::mem::take(&mut *notes.lock().unwrap());
    let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for (at, latency) in notes {
        writeln!(file, "{at} {latency}")?;
    }
    file.flush()?;
    Ok(())
}

/// What one run measured.
struct Measured {
    committed_per_s: f64,
    handled_per_s: f64,
    backlog_end: u64,
    /// Rows per second the backlog grew (negative: shrank) over the run.
    trend: f64,
    p50: Duration,
    p99: Duration,
}

impl Bench {
    /// Part 5: every Redis target with 1 and with 3 worker processes.
    pub async fn sustained(&self, targets: &[Target]) -> anyhow::Result<Vec<Row>> {
        let window = self.args.sustained_for;
        println!(
            "sustained: {} writers for {window:?}, on {}",
            self.args.sustained_writers,
            targets
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(" and ")
        );
        let mut rows = Vec::new();
        for target in targets {
            for &workers in &self.args.sustained_workers {
                self.reset().await?;
                flush(&target.url).await?;
                let m = self.sustained_run(target, workers, false).await?;
                println!(
                    "  {} Redis, {workers} worker process(es): committed {}/s, handled {}/s, backlog {} at the end ({:+.0} rows/s), commit-to-handler p50 {} p99 {}",
                    target.name,
                    per_s(m.committed_per_s),
                    per_s(m.handled_per_s),
                    m.backlog_end,
                    m.trend,
                    ms(m.p50),
                    ms(m.p99)
                );
                rows.push(
                    Row::new(
                        format!("sustained pipeline, {} Redis, {workers} worker process(es): handled/s (committed/s; backlog at end, trend; transaction start to handler p50/p99)", target.name),
                        format!(
                            "{} ({}; {}, {:+.0}/s; {} / {})",
                            per_s(m.handled_per_s),
                            per_s(m.committed_per_s),
                            m.backlog_end,
                            m.trend,
                            ms(m.p50),
                            ms(m.p99)
                        ),
                    )
                    .limit(
                        format!("{} committed/s", per_s(m.committed_per_s)),
                        m.handled_per_s / m.committed_per_s.max(1e-9),
                    )
                    // Growth under 1 % of the rate is a 60 s run's noise.
                    .target(
                        ">= 21,000/s, no backlog growth",
                        m.handled_per_s >= 21_000.0 && m.trend <= 0.01 * m.committed_per_s,
                    ),
                );
            }
        }
        rows.push(self.sustained_bulk(&targets[0]).await?);
        flush_all(targets).await?;
        Ok(rows)
    }

    /// The bulk run: on the first target, with the most worker processes.
    async fn sustained_bulk(&self, target: &Target) -> anyhow::Result<Row> {
        let workers = self
            .args
            .sustained_workers
            .iter()
            .copied()
            .max()
            .unwrap_or(1);
        self.reset().await?;
        flush(&target.url).await?;
        let m = self.sustained_run(target, workers, true).await?;
        println!(
            "  {} bulk writers ({BULK_ROWS} rows a transaction), {} Redis, {workers} worker process(es): committed {} rows/s, handled {}/s, backlog {} at the end ({:+.0} rows/s), p50 {} p99 {}",
            self.args.sustained_bulk_writers,
            target.name,
            per_s(m.committed_per_s),
            per_s(m.handled_per_s),
            m.backlog_end,
            m.trend,
            ms(m.p50),
            ms(m.p99)
        );
        Ok(Row::new(
            format!("sustained pipeline, {} bulk writers ({BULK_ROWS} rows a transaction), {} Redis, {workers} worker process(es): handled/s (committed rows/s; backlog at end, trend; transaction start to handler p50/p99)", self.args.sustained_bulk_writers, target.name),
            format!(
                "{} ({}; {}, {:+.0}/s; {} / {})",
                per_s(m.handled_per_s),
                per_s(m.committed_per_s),
                m.backlog_end,
                m.trend,
                ms(m.p50),
                ms(m.p99)
            ),
        )
        .limit(
            format!("{} committed rows/s", per_s(m.committed_per_s)),
            m.handled_per_s / m.committed_per_s.max(1e-9),
        ))
    }

    async fn sustained_run(
        &self,
        target: &Target,
        workers: usize,
        bulk: bool,
    ) -> anyhow::Result<Measured> {
        let mut cfg = self.cfg.clone();
        cfg.redis.url = target.url.clone();
        cfg.redis.wait_replicas = target.wait_replicas;
        cfg.redis.key_prefix = PREFIX.into();
        let clients = Clients::new(&cfg)?;
        let broker = clients.broker.clone();
        let notes_dir = std::env::temp_dir().join(format!("sb-sustained-{}", std::process::id()));
        std::fs::create_dir_all(&notes_dir)?;

        // The workers first, each a process of its own, ready before load.
        // Guarded: an error on the way stops them too.
        let children = self.start_workers(target, workers, &notes_dir)?;
        let stop_relay = CancellationToken::new();
        let waker = RelayWaker::new();
        let relay = tokio::spawn(clients.relay(&cfg)?.run(
            waker.clone(),
            self.db_url.clone(),
            stop_relay.clone(),
        ));

        // Writers: the sign-up transaction (users + outbox), as fast as it
        // goes, each waking the relay as create_user does.
        let window = self.args.sustained_for;
        let started = Instant::now();
        let started_ms = Utc::now().timestamp_millis();
        let deadline = started + window;
        let committed = Arc::new(AtomicU64::new(0));
        let mut writers = self.spawn_writers(&waker, deadline, &committed, bulk);
        // The backlog (outbox rows not yet forwarded plus tasks waiting in
        // Redis), sampled along the way.
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            tokio::time::sleep(
                SAMPLE_EVERY.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
            samples.push((
                started.elapsed().as_secs_f64(),
                backlog(&self.pool, &broker).await?,
            ));
        }
        let elapsed = started.elapsed();
        let ended_ms = Utc::now().timestamp_millis();
        let committed = committed.load(Ordering::Relaxed);
        while let Some(r) = writers.join_next().await {
            r??;
        }
        let backlog_end = backlog(&self.pool, &broker).await?;
        stop_relay.cancel();
        relay.await?;
        let mut latencies = Vec::new();
        for (mut child, notes) in children {
            child.stop();
            latencies.extend(read_notes(&notes, started_ms, ended_ms)?);
        }
        let _ = std::fs::remove_dir_all(&notes_dir);
        ensure!(!latencies.is_empty(), "no task was handled");
        let handled = latencies.len();
        latencies.sort_unstable();
        let q = |p: f64| {
            Duration::from_micros(latencies[((handled - 1) as f64 * p) as usize].max(0) as u64)
        };
        // Least squares over the samples: rows per second of growth.
        let trend = slope(&samples);
        Ok(Measured {
            committed_per_s: committed as f64 / elapsed.as_secs_f64(),
            handled_per_s: handled as f64 / elapsed.as_secs_f64(),
            backlog_end,
            trend,
            p50: q(0.50),
            p99: q(0.99),
        })
    }

    /// `workers` worker processes on `target`, each noting into a file in
    /// `notes_dir`, once each is ready.
    fn start_workers(
        &self,
        target: &Target,
        workers: usize,
        notes_dir: &Path,
    ) -> anyhow::Result<Vec<(Worker, PathBuf)>> {
        let mut children: Vec<(Worker, PathBuf)> = Vec::new();
        for i in 0..workers {
            let notes = notes_dir.join(format!("worker-{i}"));
            let mut child = Command::new(std::env::current_exe()?)
                .arg("--worker-child")
                .arg(&notes)
                .env("DATABASE_URL", &self.db_url)
                .env("REDIS_URL", &target.url)
                .env("REDIS_WAIT_REPLICAS", target.wait_replicas.to_string())
                .env("REDIS_KEY_PREFIX", PREFIX)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stdin(Stdio::null())
                .spawn()
                .context("starting a worker process")?;
            let stdout = child.stdout.take().unwrap();
            let child = Worker(Some(child));
            let mut ready = String::new();
            BufReader::new(stdout).read_line(&mut ready)?;
            ensure!(ready.trim() == "ready", "a worker process did not start");
            children.push((child, notes));
        }
        Ok(children)
    }

    /// The sign-up writers, committing until `deadline` and counting their
    /// commits in `committed`; with `bulk`, writers of [`BULK_ROWS`] outbox
    /// rows a transaction instead (one multi-row insert), counting rows.
    fn spawn_writers(
        &self,
        waker: &RelayWaker,
        deadline: Instant,
        committed: &Arc<AtomicU64>,
        bulk: bool,
    ) -> tokio::task::JoinSet<anyhow::Result<()>> {
        let mut writers = tokio::task::JoinSet::new();
        let count = match bulk {
            false => self.args.sustained_writers,
            true => self.args.sustained_bulk_writers,
        };
        for w in 0..count {
            let (outbox, waker, committed) = (
                Outbox::new(self.pool.clone(), waker.clone()),
                waker.clone(),
                committed.clone(),
            );
            writers.spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    match bulk {
                        false => {
                            sign_up(&outbox, &format!("s{w}_{i}"), KIND).await?;
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        true => {
                            bulk_send(&outbox, &waker, KIND, BULK_ROWS).await?;
                            committed.fetch_add(BULK_ROWS as u64, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
                anyhow::Ok(())
            });
        }
        writers
    }
}

/// One transaction of `rows` outbox rows of `kind` (the columns of
/// sql/outbox/insert.sql, in one multi-row insert), then the relay's
/// wake-up.
async fn bulk_send(
    outbox: &Outbox,
    waker: &RelayWaker,
    kind: &str,
    rows: i64,
) -> anyhow::Result<()> {
    let mut tx = outbox.begin().await?;
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms, process_at)
         SELECT $1, 'critical', jsonb_build_object('n', g), 3, 30000, now()
         FROM generate_series(1, $2) g",
    )
    .bind(kind)
    .bind(rows)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    waker.wake();
    Ok(())
}

/// A worker process, stopped by its PID (SIGTERM, then its notes are
/// written) when done or dropped.
struct Worker(Option<Child>);

impl Worker {
    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            stop(&mut child);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Rows in the outbox not yet forwarded, plus tasks pending in Redis.
async fn backlog(pool: &sqlx::PgPool, broker: &Broker) -> anyhow::Result<u64> {
    let outbox = OutboxStats::read(pool, broker).await?.undispatched;
    let redis = broker.stats("critical").await?;
    Ok(outbox + redis.pending + redis.active)
}

/// The latencies (µs) of the tasks a worker handled within [from, to] (ms).
fn read_notes(path: &Path, from: i64, to: i64) -> anyhow::Result<Vec<i64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (at, latency) = l.split_once(' ')?;
            let at: i64 = at.parse().ok()?;
            (from..=to).contains(&at).then(|| latency.parse().ok())?
        })
        .collect())
}

fn slope(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = samples
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + *y as f64));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (*y as f64 - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Empties what a run left in `url`'s Redis: the bench's DB of a single
/// Redis, or every primary of a cluster.
async fn flush(url: &str) -> anyhow::Result<()> {
    // Never anything but this machine's: the bench's cluster or DB.
    let (host, _) = super::url_host_port(url.replace("redis-cluster://", "redis://").as_str())?;
    ensure!(
        host == "127.0.0.1" || host == "localhost" || host == "[::1]",
        "the bench flushes loopback Redis only; {host} is not"
    );
    let client = fred::clients::Client::new(
        fred::types::config::Config::from_url(url)?,
        None,
        None,
        None,
    );
    client.init().await?;
    if client.is_clustered() {
        // The bench's own cluster (scripts/redis-cluster.sh).
        client.flushall_cluster().await?;
    } else {
        // Only the bench's DB of the dev Redis.
        let _: () = client
            .custom(fred::cmd!("FLUSHDB"), Vec::<String>::new())
            .await?;
    }
    client.quit().await?;
    Ok(())
}

async fn flush_all(targets: &[Target]) -> anyhow::Result<()> {
    for target in targets {
        flush(&target.url).await?;
    }
    Ok(())
}
