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
    outbox::{self, NewTask, Outbox, position::Position, positions, relay, wake::RelayWaker},
    queue::{
        Broker, Cursor, CursorEnqueue, HandlerRegistry, Processed, QueueWeight, TaskId,
        TaskMessage, WorkerServer, WorkerSettings, handler_fn,
    },
    users::{password::PasswordHasher, repo, validation::SignUp},
};
use sqlx::{Connection, PgConnection, PgPool, Row as _, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;

#[path = "bench/held_horizon.rs"]
mod held_horizon;
#[path = "bench/http_load.rs"]
mod http_load;
#[path = "bench/latency.rs"]
mod latency;
#[path = "bench/relay_drain.rs"]
mod relay_drain;
#[path = "bench/sustained.rs"]
mod sustained;
#[path = "bench/tracing_cost.rs"]
mod tracing_cost;
#[path = "bench/util.rs"]
mod util;
#[path = "bench/worker_rate.rs"]
mod worker_rate;

use util::{
    cpu_seconds, find_number, http_addr_from_log, machine, machine_busy_seconds, median, mib, ms,
    peak_rss_kib, per_s, sign_up, stop, table, url_host_port, wait_bounded, wait_ready, with_path,
};

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
        default_value = "latency,worker,http,sustained,tracing,horizon,relay"
    )]
    only: Vec<Part>,
    /// Outbox rows of each drain in the tracing part.
    #[arg(long, default_value_t = 200_000)]
    tracing_rows: i64,
    /// Offered sign-ups per second in the held-horizon part.
    #[arg(long, default_value_t = 1000)]
    horizon_rate: u64,
    /// Length of each held-horizon run.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    horizon_for: Duration,
    /// When the held-horizon run's snapshot is taken...
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    horizon_hold_from: Duration,
    /// ...and when it is let go.
    #[arg(long, default_value = "8m", value_parser = humantime::parse_duration)]
    horizon_hold_to: Duration,
    /// (Internal) run as the held-horizon part's claim-and-mark relay.
    #[arg(long, hide = true)]
    claim_mark_child: bool,
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
    /// Bulk writers (500 outbox rows a transaction) in the sustained
    /// pipeline's bulk run: a few saturate the machine.
    #[arg(long, default_value_t = 2)]
    sustained_bulk_writers: u32,
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
    Tracing,
    Horizon,
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
    if args.claim_mark_child {
        return held_horizon::claim_mark_child(args.cfg).await;
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
            Part::Tracing => bench.tracing_cost().await,
            Part::Horizon => bench.held_horizon().await,
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
        sqlx::raw_sql("TRUNCATE users, outbox, outbox_checkpoints, verify_emails, verify_email_codes, verify_email_resend_limits, task_ledger RESTART IDENTITY")
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
            wait_replicas: 0,
        }];
        if let Some(url) = &self.args.cluster_url {
            targets.push(sustained::Target {
                name: "cluster",
                url: url.clone(),
                wait_replicas: 0,
            });
            // What waiting for a replica on every enqueue, dequeue and
            // lease extension costs.
            targets.push(sustained::Target {
                name: "cluster (REDIS_WAIT_REPLICAS=1)",
                url: url.clone(),
                wait_replicas: 1,
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
}
