//! The benchmark harness: every figure beside the limit of the same machine,
//! measured in the same run, as a ratio. Run it with `make bench`
//! (scripts/bench.sh), which starts the dev services, installs the load tools
//! and builds this and the `simplebank` binary in release mode.
//!
//! It works in a scratch database (`simplebank_bench`, dropped and re-created)
//! and in Redis DB 15 of REDIS_URL (emptied before each part and at the end).
//! Traffic stays on loopback; every loop is bounded in count and time; every
//! process it starts it stops by PID.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use fred::prelude::*;
use simplebank::{
    app::Clients,
    config::{Config, RedisConfig},
    outbox::{relay, wake::RelayWaker, write::NewTask},
    queue::{
        Broker, HandlerRegistry, Processed, QueueWeight, TaskId, TaskMessage, WorkerServer,
        WorkerSettings, handler_fn,
    },
    users::{
        password::PasswordHasher,
        repo::{self, NewUser},
    },
};
use sqlx::{Connection, PgConnection, PgPool, Row as _, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;

#[path = "bench/sustained.rs"]
mod sustained;

const BENCH_DB: &str = "simplebank_bench";
const REDIS_DB: u8 = 15;
const PREFIX: &str = "bench";
/// How much longer than its own run a load tool may take before it is killed.
const TOOL_SLACK: Duration = Duration::from_secs(60);
/// No part may run longer than this, whatever its settings.
const PART_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The service's own settings (DATABASE_URL and REDIS_URL name the dev
/// services; everything else keeps its default, as `serve` would run) and
/// the harness's.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    cfg: Config,
    /// The release `simplebank` binary (serve, relay --once).
    #[arg(long, default_value = "target/release/simplebank")]
    bin: PathBuf,
    /// The parts to run, in this order (by default the relay's million rows
    /// last: the disk work they leave behind would slow what follows).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "latency,worker,http,sustained,relay"
    )]
    only: Vec<Part>,
    /// Outbox rows in the relay drain backlog.
    #[arg(long, default_value_t = 1_000_000)]
    relay_rows: i64,
    /// No-op tasks per worker run.
    #[arg(long, default_value_t = 100_000)]
    worker_tasks: usize,
    /// Worker concurrencies to try.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    concurrency: Vec<usize>,
    /// Offered sign-ups per second in the latency run.
    #[arg(long, default_value_t = 1000)]
    latency_rate: u64,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
    /// Load at the same rate before the measured window, not counted: pools
    /// opening their connections are start-up, not steady state.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    latency_warmup: Duration,
    /// Length of each HTTP and pgbench run.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    load_for: Duration,
    /// Alternating pgbench and wrk runs in part 4; the medians are compared.
    #[arg(long, default_value_t = 3)]
    http_rounds: u32,
    /// Connections of wrk and clients of pgbench.
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Also write the table here (markdown).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Length of each sustained-pipeline run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    sustained_for: Duration,
    /// Concurrent sign-up writers in the sustained pipeline.
    #[arg(long, default_value_t = 32)]
    sustained_writers: u32,
    /// Worker processes to try in the sustained pipeline.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    sustained_workers: Vec<usize>,
    /// A Redis Cluster for the sustained pipeline too (scripts/redis-cluster.sh
    /// starts one; `make bench` passes it). Emptied by the bench.
    #[arg(long, env = "BENCH_CLUSTER_URL")]
    cluster_url: Option<String>,
    /// (Internal) run as one of the sustained pipeline's worker processes,
    /// noting each task's latency into this file at SIGTERM.
    #[arg(long, hide = true)]
    worker_child: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Relay,
    Worker,
    Latency,
    Http,
    Sustained,
}

/// One wrk run against `serve`.
struct WrkRun {
    rps: f64,
    p99: String,
    users: i64,
    rss_kib: u64,
}

/// One line of the results table.
struct Row {
    what: String,
    ours: String,
    limit: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(what: impl Into<String>, ours: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            ours: ours.into(),
            limit: String::new(),
            ratio: None,
            target: String::new(),
            met: None,
        }
    }

    fn limit(mut self, limit: impl Into<String>, ratio: f64) -> Self {
        self.limit = limit.into();
        self.ratio = Some(ratio);
        self
    }

    fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

/// The scratch database, the Redis DB and the settings every part shares.
struct Bench {
    args: Args,
    /// The service's settings aimed at the scratch database and Redis DB.
    cfg: Config,
    db_url: String,
    pool: PgPool,
    redis_cfg: RedisConfig,
    redis: fred::clients::Client,
    queue: Broker,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs on stderr: stdout carries the results (and a worker process's
    // "ready").
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let mut args = Args::parse();
    if let Some(out) = args.worker_child.take() {
        return sustained::worker_child(args.cfg, out).await;
    }
    // Absolute: the children run in the temporary directory.
    args.bin = std::fs::canonicalize(&args.bin).with_context(|| {
        format!(
            "{} not found: build it with `cargo build --release`",
            args.bin.display()
        )
    })?;
    let bench = Bench::setup(args).await?;
    println!("{}", machine());
    let mut rows = Vec::new();
    let parts = bench.args.only.clone();
    for part in parts {
        bench.reset().await?;
        let found = match part {
            Part::Relay => bench.relay().await,
            Part::Worker => bench.worker().await,
            Part::Latency => bench.latency().await,
            Part::Http => bench.http().await,
            Part::Sustained => bench.sustained(&bench.targets()).await,
        }?;
        for row in &found {
            println!("  {}: {} {}", row.what, row.ours, row.limit);
        }
        rows.extend(found);
    }
    bench.reset().await?;
    let table = table(&rows);
    println!("\n{table}");
    if let Some(out) = &bench.args.out {
        std::fs::write(out, format!("{}\n\n{table}", machine()))?;
    }
    Ok(())
}

impl Bench {
    async fn setup(args: Args) -> anyhow::Result<Self> {
        let admin_url = args.cfg.database_url()?.to_owned();
        // Load goes to this machine only.
        for url in [&admin_url, &args.cfg.redis.url] {
            let (host, _) = url_host_port(url)?;
            ensure!(
                host == "localhost"
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback()),
                "the harness runs against loopback only; {host} is not"
            );
        }
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .context("connecting to DATABASE_URL")?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {BENCH_DB}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let db_url = with_path(&admin_url, BENCH_DB)?;
        let pool = PgPoolOptions::new()
            .max_connections(48)
            .connect(&db_url)
            .await?;
        simplebank::db::migrate(&pool).await?;

        let redis_cfg = RedisConfig {
            url: with_path(&args.cfg.redis.url, &REDIS_DB.to_string())?,
            key_prefix: PREFIX.into(),
            ..args.cfg.redis.clone()
        };
        let redis = fred::clients::Client::new(
            fred::types::config::Config::from_url(&redis_cfg.url)?,
            None,
            None,
            None,
        );
        redis.init().await?;
        let queue = Broker::new(redis_cfg.connection().pool()?, PREFIX);
        let mut cfg = args.cfg.clone();
        cfg.db.url = Some(db_url.clone());
        cfg.redis = redis_cfg.clone();
        Ok(Self {
            args,
            cfg,
            db_url,
            pool,
            redis_cfg,
            redis,
            queue,
        })
    }

    /// Empty tables and Redis DB, vacuumed: each part starts from the same state.
    async fn reset(&self) -> anyhow::Result<()> {
        // Two calls: several statements in one run as one transaction, and
        // VACUUM refuses that.
        sqlx::raw_sql("TRUNCATE users, outbox, verify_emails, verify_email_codes, verify_email_resends, task_ledger RESTART IDENTITY")
            .execute(&self.pool)
            .await?;
        sqlx::raw_sql("VACUUM ANALYZE").execute(&self.pool).await?;
        self.flush_redis().await?;
        self.settle().await
    }

    /// Lets the previous part's disk work finish (a checkpoint, Redis
    /// rewriting its append-only file), so it does not slow the next part.
    async fn settle(&self) -> anyhow::Result<()> {
        sqlx::raw_sql("CHECKPOINT").execute(&self.pool).await?;
        // The page cache's own writeback (WAL, the append-only file) too.
        Command::new("sync").status().context("running sync")?;
        for _ in 0..600 {
            let info: String = self
                .redis
                .custom(fred::cmd!("INFO"), vec!["persistence"])
                .await?;
            if !info.contains("aof_rewrite_in_progress:1")
                && !info.contains("rdb_bgsave_in_progress:1")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("Redis still rewriting its files after 60 s")
    }

    /// Empties Redis DB 15, the harness's own.
    async fn flush_redis(&self) -> anyhow::Result<()> {
        let _: () = self
            .redis
            .custom(fred::cmd!("FLUSHDB"), Vec::<String>::new())
            .await?;
        Ok(())
    }

    /// A backlog of outbox rows shaped like sign-up tasks.
    async fn backlog(&self, rows: i64) -> anyhow::Result<()> {
        sqlx::raw_sql("TRUNCATE outbox").execute(&self.pool).await?;
        sqlx::query(
            "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
             SELECT 'task:send_verify_email', 'critical',
                    jsonb_build_object('username', 'user_' || g), 10, 60000
             FROM generate_series(1, $1) g",
        )
        .bind(rows)
        .execute(&self.pool)
        .await?;
        sqlx::raw_sql("VACUUM ANALYZE outbox")
            .execute(&self.pool)
            .await?;
        self.settle().await
    }

    /// 1. `relay --once` over the backlog, beside the same claim-and-mark SQL
    ///    with no Redis in between.
    async fn relay(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.args.relay_rows;
        let batch = self.args.cfg.relay.batch_size;
        println!("relay: {n} rows, batches of {batch}");

        // The limit runs as many lanes as the relay keeps batches in flight.
        let lanes = self.args.cfg.relay.parallel_batches.max(1);
        self.backlog(n).await?;
        let started = Instant::now();
        let marked: i64 =
            futures::future::try_join_all((0..lanes).map(|_| self.claim_and_mark(batch)))
                .await?
                .into_iter()
                .sum();
        ensure!(marked == n, "raw loop marked {marked} of {n} rows");
        let raw = n as f64 / started.elapsed().as_secs_f64();

        self.backlog(n).await?;
        let started = Instant::now();
        let child = self
            .command("relay")
            .arg("--once")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting relay --once")?;
        let out = wait_bounded(child, PART_LIMIT)?;
        let took = started.elapsed();
        ensure!(
            out.status.success(),
            "relay --once failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("  {}", String::from_utf8_lossy(&out.stdout).trim());
        let pending = self.queue.stats("critical").await?.pending;
        ensure!(pending == n as u64, "Redis holds {pending} of {n} tasks");
        let ours = n as f64 / took.as_secs_f64();
        Ok(vec![
            Row::new("1. relay drain, 1M backlog (rows/s)", per_s(ours))
                .limit(
                    format!("{} claim+mark SQL, {lanes} lanes", per_s(raw)),
                    ours / raw,
                )
                .target(">= 0.5 of raw", ours / raw >= 0.5),
        ])
    }

    /// 2. No-op tasks through the queue at several concurrencies, beside
    ///    redis-benchmark's LPUSH on the same server.
    async fn worker(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.args.worker_tasks;
        let lpush = self.redis_benchmark(false)?;
        let lpush_pipelined = self.redis_benchmark(true)?;
        println!("worker: {n} no-op tasks; LPUSH {lpush:.0}/s, pipelined {lpush_pipelined:.0}/s");
        let mut rows = Vec::new();
        let mut best = 0f64;
        for &concurrency in &self.args.concurrency {
            self.flush_redis().await?;
            for chunk in (0..n as i64).collect::<Vec<_>>().chunks(1000) {
                let tasks: Vec<TaskMessage> = chunk
                    .iter()
                    .map(|&id| TaskMessage::new(TaskId::from(id + 1), "bench:noop", "default"))
                    .collect();
                self.queue.enqueue(&tasks).await?;
            }
            let done = Arc::new(AtomicU64::new(0));
            let mut registry = HandlerRegistry::default();
            let counter = done.clone();
            registry.register(
                "bench:noop",
                handler_fn(move |_| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async { Ok(Processed::default()) }
                }),
            );
            let stop = CancellationToken::new();
            let started = Instant::now();
            let settings = WorkerSettings {
                concurrency,
                queues: vec![QueueWeight {
                    queue: "default".into(),
                    weight: 1,
                }],
                ..self.args.cfg.worker.server_settings()
            };
            let server = tokio::spawn(self.worker_server(settings, registry)?.run(stop.clone()));
            // Done when every handler ran and Redis holds nothing pending or active.
            loop {
                ensure!(started.elapsed() < PART_LIMIT, "worker run did not finish");
                if done.load(Ordering::Relaxed) >= n as u64 {
                    let s = self.queue.stats("default").await?;
                    if s.pending + s.active == 0 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let rate = n as f64 / started.elapsed().as_secs_f64();
            stop.cancel();
            server.await?;
            best = best.max(rate);
            rows.push(
                Row::new(
                    format!("2. worker, concurrency {concurrency} (tasks/s)"),
                    per_s(rate),
                )
                .limit(format!("{} LPUSH", per_s(lpush)), rate / lpush),
            );
        }
        rows.push(
            Row::new("2. worker, best (tasks/s)", per_s(best))
                .limit(
                    format!("{} LPUSH pipelined 64", per_s(lpush_pipelined)),
                    best / lpush_pipelined,
                )
                .target(">= 20,000/s", best >= 20_000.0),
        );
        Ok(rows)
    }

    /// 3. Commit-to-handler latency at a fixed offered rate through the whole
    ///    pipeline in one process, as `serve` runs it: the sign-up transaction,
    ///    the in-process wake-up, the relay, Redis, the worker.
    async fn latency(&self) -> anyhow::Result<Vec<Row>> {
        let rate = self.args.latency_rate;
        let warmup = rate * self.args.latency_warmup.as_secs();
        let total = warmup + rate * self.args.latency_for.as_secs();
        println!(
            "latency: {rate}/s for {:?} after {:?} of warm-up",
            self.args.latency_for, self.args.latency_warmup
        );
        let committed = Arc::new(Mutex::new(HashMap::<TaskId, Instant>::with_capacity(
            total as usize,
        )));
        let started_at = Arc::new(Mutex::new(HashMap::<TaskId, Instant>::with_capacity(
            total as usize,
        )));
        let mut registry = HandlerRegistry::default();
        let starts = started_at.clone();
        registry.register(
            "bench:probe",
            handler_fn(move |task| {
                starts.lock().unwrap().insert(task.id, Instant::now());
                async { Ok(Processed::default()) }
            }),
        );
        // Peak RSS from here on (Linux: "5" resets VmHWM), not of earlier parts.
        std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
        let stop = CancellationToken::new();
        let waker = RelayWaker::new();
        // As `serve` builds it: on a pool of its own.
        let relay = Clients::new(&self.cfg)?.relay(&self.cfg)?.run(
            waker.clone(),
            self.db_url.clone(),
            stop.clone(),
        );
        let relay = tokio::spawn(relay);
        let settings = self.args.cfg.worker.server_settings();
        let worker = tokio::spawn(self.worker_server(settings, registry)?.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;

        // A create_user without the HTTP and the hashing: the same transaction.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
        let mut offered = Instant::now();
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..total {
            tick.tick().await;
            if i == warmup {
                offered = Instant::now();
            }
            let permit = in_flight.clone().acquire_owned().await?;
            let (pool, waker, committed) = (self.pool.clone(), waker.clone(), committed.clone());
            writers.spawn(async move {
                let _permit = permit;
                let name = format!("lat{i}");
                let email = format!("{name}@example.com");
                let user = NewUser {
                    username: &name,
                    full_name: "Bench User",
                    email: &email,
                    hashed_password: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                };
                let task = NewTask {
                    kind: "bench:probe",
                    queue: "critical".into(),
                    payload: serde_json::json!({ "username": name }),
                    max_retry: 3,
                    timeout: Duration::from_secs(30),
                    process_in: Duration::ZERO,
                    request_id: None,
                };
                let (_, id) = repo::create_with_task(&pool, &user, &task).await?;
                if i >= warmup {
                    committed.lock().unwrap().insert(id, Instant::now());
                }
                waker.wake();
                anyhow::Ok(())
            });
        }
        while let Some(r) = writers.join_next().await {
            r??;
        }
        let achieved = (total - warmup) as f64 / offered.elapsed().as_secs_f64();
        let drained = Instant::now();
        while started_at.lock().unwrap().len() < total as usize {
            ensure!(
                drained.elapsed() < Duration::from_secs(60),
                "only {} of {total} tasks started",
                started_at.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        relay.await?;
        worker.await?;

        let committed = std::mem::take(&mut *committed.lock().unwrap());
        let started_at = std::mem::take(&mut *started_at.lock().unwrap());
        self.print_split(&committed, &started_at, offered).await?;
        let seconds = self.args.latency_for.as_secs() as usize + 1;
        let mut by_second: Vec<Duration> = vec![Duration::ZERO; seconds];
        let mut lat: Vec<Duration> = committed
            .iter()
            .map(|(id, c)| {
                let l = started_at[id].saturating_duration_since(*c);
                let second = c.saturating_duration_since(offered).as_secs() as usize;
                let worst = &mut by_second[second.min(seconds - 1)];
                *worst = (*worst).max(l);
                l
            })
            .collect();
        // Where the tail comes from: the worst latency of each second of the run.
        println!(
            "  worst per second (ms): {}",
            by_second
                .iter()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
        lat.sort();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        let (p50, p99, max) = (q(0.50), q(0.99), *lat.last().unwrap());
        let rss = peak_rss_kib(std::process::id())?;
        Ok(vec![
            Row::new(
                format!("3. commit -> handler, {achieved:.0}/s achieved (p50/p99/max)"),
                format!("{} / {} / {}", ms(p50), ms(p99), ms(max)),
            )
            .target(
                "p50 < 5 ms, p99 < 50 ms",
                p50 < Duration::from_millis(5) && p99 < Duration::from_millis(50),
            ),
            Row::new(
                "5. peak RSS, harness process in 3: relay + worker + writers (MiB)",
                mib(rss),
            )
            .target("< 100 MiB", rss < 100 * 1024),
        ])
    }

    /// 4. POST /v1/create_user on a real `serve` under wrk, beside pgbench's
    ///    rate for the same transaction; plus the cost of the default hashing.
    async fn http(&self) -> anyhow::Result<Vec<Row>> {
        let script = std::env::temp_dir().join("simplebank-bench-create-user.sql");
        std::fs::write(&script, PGBENCH_CREATE_USER)?;
        let lua = std::env::temp_dir().join("simplebank-bench-create-user.lua");
        std::fs::write(&lua, WRK_CREATE_USER)?;
        // pgbench's rate on this disk moves by a third from one run to the
        // next; rounds that alternate the two, and the median of each side,
        // keep one lucky or unlucky run from deciding the ratio.
        let (mut pg, mut ours, mut rss) = (Vec::new(), Vec::new(), 0);
        for round in 1..=self.args.http_rounds.max(1) {
            self.reset().await?;
            let tps = self.pgbench_create_user(&script)?;
            self.reset().await?;
            let run = self.wrk_create_user(&lua).await?;
            println!(
                "http round {round}: pgbench {tps:.0} tx/s; wrk {:.0} req/s, p99 {}, {} users created",
                run.rps, run.p99, run.users
            );
            pg.push(tps);
            rss = rss.max(run.rss_kib);
            ours.push(run);
        }
        let pg = median(&mut pg);
        ours.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let mid = &ours[ours.len() / 2];
        let (rps, p99) = (mid.rps, mid.p99.clone());

        let hashes = self.default_hashes_per_second().await?;
        Ok(vec![
            Row::new(
                "4. POST /v1/create_user, cheap argon2 (req/s, p99)",
                format!("{} , p99 {p99}", per_s(rps)),
            )
            .limit(
                format!("{} pgbench same tx (medians of {})", per_s(pg), ours.len()),
                rps / pg,
            )
            .target(">= 0.7 of pgbench", rps / pg >= 0.7),
            Row::new(
                "4. default argon2id hashing (hashes/s/core)",
                format!("{hashes:.1}"),
            ),
            Row::new("5. peak RSS, serve under 4 (MiB)", mib(rss))
                .target("< 100 MiB", rss < 100 * 1024),
        ])
    }

    /// pgbench running the sign-up transaction; its tx/s.
    fn pgbench_create_user(&self, script: &std::path::Path) -> anyhow::Result<f64> {
        let out = Command::new("pgbench")
            .args(["-n", "-j", "2", "-c", &self.args.clients.to_string()])
            .args(["-T", &self.args.load_for.as_secs().to_string(), "-f"])
            .arg(script)
            .arg(&self.db_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running pgbench")?;
        let out = wait_bounded(out, self.args.load_for + TOOL_SLACK)?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "pgbench failed: {text}");
        find_number(&text, "tps = ").context("tps in pgbench's output")
    }

    /// A release `serve` under wrk posting distinct valid sign-ups.
    async fn wrk_create_user(&self, lua: &std::path::Path) -> anyhow::Result<WrkRun> {
        let clients = self.args.clients.to_string();
        let mail_dir = std::env::temp_dir().join("simplebank-bench-mail");
        let mut serve = self
            .command("serve")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("ARGON2_MEMORY_KIB", "64")
            .env("ARGON2_ITERATIONS", "1")
            // As many connections as pgbench has clients, and the emails
            // scheduled after the run: the same transactions, side by side.
            .env("DATABASE_MAX_CONNECTIONS", &clients)
            // wrk's connections all come from one address.
            .env("HTTP_RATE_LIMIT", "0")
            .env("VERIFY_EMAIL_PROCESS_IN", "1h")
            .env("MAIL_DIR", &mail_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting serve")?;
        let result = async {
            let addr = http_addr_from_log(&mut serve)?;
            wait_ready(&addr).await?;
            let out = Command::new("wrk")
                .args(["-t", "2", "-c", &clients])
                .args(["-d", &format!("{}s", self.args.load_for.as_secs())])
                .args(["--latency", "-s"])
                .arg(lua)
                .arg(format!("http://{addr}/v1/create_user"))
                .stdout(Stdio::piped())
                .spawn()
                .context("running wrk")?;
            let out = wait_bounded(out, self.args.load_for + TOOL_SLACK)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(out.status.success(), "wrk failed: {text}");
            let rss = peak_rss_kib(serve.id())?;
            anyhow::Ok((text, rss))
        }
        .await;
        stop(&mut serve);
        let _ = std::fs::remove_dir_all(&mail_dir);
        let (text, rss_kib) = result?;
        if let Some(bad) = find_number(&text, "Non-2xx or 3xx responses:") {
            bail!("wrk saw {bad} non-2xx responses: the run is not valid");
        }
        Ok(WrkRun {
            rps: find_number(&text, "Requests/sec:").context("wrk's Requests/sec")?,
            p99: text
                .lines()
                .find(|l| l.trim_start().starts_with("99%"))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_owned(),
            users: sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&self.pool)
                .await?,
            rss_kib,
        })
    }

    /// Splits the latency at the task's arrival in Redis (its `enqueued_at`,
    /// Redis's clock in whole ms, the same machine's clock): the relay's part
    /// before, the worker's after.
    async fn print_split(
        &self,
        committed: &HashMap<TaskId, Instant>,
        started: &HashMap<TaskId, Instant>,
        offered: Instant,
    ) -> anyhow::Result<()> {
        let wall_at_offered = std::time::SystemTime::now() - offered.elapsed();
        let wall_ms = |at: Instant| {
            (wall_at_offered + at.duration_since(offered))
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        let keys = self.queue.keys("critical");
        let pipe = self.redis.pipeline();
        let ids: Vec<TaskId> = committed.keys().copied().collect();
        for &id in &ids {
            let _: () = pipe.hget(keys.task(id), "enqueued_at").await?;
        }
        let enqueued: Vec<Option<i64>> = pipe.all().await?;
        let (mut relay, mut worker): (Vec<f64>, Vec<f64>) = ids
            .iter()
            .zip(enqueued)
            .filter_map(|(id, at)| {
                // Whole ms, floored: half a ms early on average.
                let at = at? as f64 + 0.5;
                Some((at - wall_ms(committed[id]), wall_ms(started[id]) - at))
            })
            .unzip();
        for (name, v) in [
            ("relay (commit -> in Redis)", &mut relay),
            ("worker (in Redis -> handler)", &mut worker),
        ] {
            v.sort_by(f64::total_cmp);
            if let (Some(p50), Some(p99)) = (v.get(v.len() / 2), v.get(v.len() * 99 / 100)) {
                println!("  {name}, ms: p50 {p50:.1}, p99 {p99:.1}");
            }
        }
        Ok(())
    }

    fn worker_server(
        &self,
        settings: WorkerSettings,
        registry: HandlerRegistry,
    ) -> anyhow::Result<WorkerServer> {
        Ok(WorkerServer::new(
            self.queue.clone(),
            self.redis_cfg.connection().subscriber()?,
            settings,
            registry,
        ))
    }

    /// The Redis the sustained pipeline runs on: the dev Redis (the bench's
    /// DB), and the cluster when one was given.
    fn targets(&self) -> Vec<sustained::Target> {
        let mut targets = vec![sustained::Target {
            name: "single",
            url: self.redis_cfg.url.clone(),
        }];
        if let Some(url) = &self.args.cluster_url {
            targets.push(sustained::Target {
                name: "cluster",
                url: url.clone(),
            });
        }
        targets
    }

    /// The release binary aimed at the scratch database and Redis DB.
    fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.args.bin);
        cmd.arg(subcommand)
            .env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", &self.redis_cfg.url)
            .env("REDIS_KEY_PREFIX", PREFIX)
            .env("RUST_LOG", "warn")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// One lane of the relay's own transaction, statement for statement, with
    /// no Redis in between, until no row is left; returns the rows marked.
    async fn claim_and_mark(&self, batch: u32) -> anyhow::Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        let mut marked = 0i64;
        while started.elapsed() < PART_LIMIT {
            // The relay's own BEGIN: asynchronous commit, in the same round trip.
            let mut tx = conn.begin_with(relay::BEGIN_BATCH).await?;
            let ids: Vec<i64> = sqlx::query(include_str!("../sql/outbox/claim.sql"))
                .bind(i64::from(batch))
                // No queue held back, as in the relay's usual case.
                .bind(Vec::<String>::new())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.get("id"))
                .collect();
            if ids.is_empty() {
                break;
            }
            sqlx::query(include_str!("../sql/outbox/mark_dispatched.sql"))
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            marked += ids.len() as i64;
        }
        Ok(marked)
    }

    /// The configured (by default, the secure) argon2id parameters, one hash
    /// at a time: hashes per second on one core.
    async fn default_hashes_per_second(&self) -> anyhow::Result<f64> {
        let hasher = PasswordHasher::new(&self.args.cfg.signup)?;
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < Duration::from_secs(3) && n < 1000 {
            hasher.hash("secret123".into()).await?;
            n += 1;
        }
        Ok(f64::from(n) / started.elapsed().as_secs_f64())
    }

    /// redis-benchmark's LPUSH rate on the dev Redis, plain or pipelined 64 deep.
    fn redis_benchmark(&self, pipelined: bool) -> anyhow::Result<f64> {
        let url = url_host_port(&self.redis_cfg.url)?;
        let mut cmd = Command::new("redis-benchmark");
        cmd.args(["-h", &url.0, "-p", &url.1.to_string()]).args([
            "--dbnum",
            &REDIS_DB.to_string(),
            "-t",
            "lpush",
            "-n",
            "200000",
            "-q",
        ]);
        if pipelined {
            cmd.args(["-P", "64"]);
        }
        let child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .context("running redis-benchmark")?;
        let out = wait_bounded(child, TOOL_SLACK)?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "redis-benchmark failed: {text}");
        // "LPUSH: 87719.30 requests per second, p50=..." after carriage returns.
        let line = text.rsplit('\r').next().unwrap_or(&text);
        find_number(line, "LPUSH: ").context("LPUSH rate in redis-benchmark's output")
    }
}

/// The sign-up transaction as the API runs it (sql/users/insert.sql and
/// sql/outbox/insert.sql), with a fresh username per transaction.
const PGBENCH_CREATE_USER: &str = r"\set n random(1, 1000000000000)
BEGIN;
INSERT INTO users (username, hashed_password, full_name, email)
VALUES ('pg' || :client_id || '_' || :n, '$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA', 'Bench User', 'pg' || :client_id || '_' || :n || '@example.com')
RETURNING username, full_name, email, is_email_verified, password_changed_at, created_at;
INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms, process_at)
VALUES ('task:send_verify_email', 'critical', jsonb_build_object('username', 'pg' || :client_id || '_' || :n), 10, 60000, now() + make_interval(secs => 10000::float8 / 1000))
RETURNING id;
END;
";

/// wrk: POST a valid sign-up with a username unique per thread and request.
/// (`thread_id` must stay a global: `thread:set` writes the thread's globals.)
const WRK_CREATE_USER: &str = r#"local counter = 0
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  local name = string.format("w%d_%d", thread_id, counter)
  local body = string.format('{"username":"%s","full_name":"Bench User","email":"%s@example.com","password":"secret123"}', name, name)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"#;

fn http_addr_from_log(serve: &mut Child) -> anyhow::Result<String> {
    let stdout = BufReader::new(serve.stdout.take().context("serve's stdout")?);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log to its end so serve never blocks on a full pipe.
    // Only the line that can hold the address is parsed: the harness should
    // take as little of the machine as it can from the service it measures.
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if line.contains("start HTTP server")
                && let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            {
                let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("serve did not log its address")
}

async fn wait_ready(addr: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for _ in 0..300 {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("serve not ready after 30 s")
}

/// SIGTERM, then SIGKILL if it is still there after 15 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    for _ in 0..150 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` (its output read to the end), killing it after `limit`.
fn wait_bounded(child: Child, limit: Duration) -> anyhow::Result<std::process::Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            bail!("gave up after {limit:?}")
        }
    }
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    find_number(&status, "VmHWM:")
        .map(|v| v as u64)
        .context("VmHWM in /proc status")
}

fn find_number(text: &str, after: &str) -> Option<f64> {
    let rest = &text[text.find(after)? + after.len()..];
    rest.split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

fn with_path(url: &str, path: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(url)?;
    url.set_path(path);
    Ok(url.into())
}

fn url_host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let url = url::Url::parse(url)?;
    Ok((
        url.host_str().context("host")?.to_owned(),
        url.port().unwrap_or(6379),
    ))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("machine: {cores} cores, {cpu}")
}

/// The middle value (the upper one of an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_s(v: f64) -> String {
    let s = format!("{v:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| measure | result | limit, same run | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            r.ours,
            r.limit,
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_default(),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
    t
}
