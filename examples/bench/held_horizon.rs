//! Part 8, the held horizon (PgQue's method at this machine's scale):
//! sign-ups offered at a fixed rate for `--horizon-for`, while a REPEATABLE
//! READ session sits idle in transaction, holding its snapshot, from
//! `--horizon-hold-from` to `--horizon-hold-to`: vacuum can remove nothing
//! meanwhile. Per minute: offered, committed, forwarded, commit to enqueue
//! p50 / p99, dead tuples in the outbox relations, the relay's CPU. Once
//! with the relay (a `simplebank relay` process), once with the reference:
//! the claim-and-mark relay of before (this harness's `--claim-mark-child`
//! process) on a table of that layout, fed by the same sign-ups.

use std::{
    process::{Child, Stdio},
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
    outbox::{NOTIFY_CHANNEL, Outbox, OutboxRow, relay, wake::RelayWaker},
    queue::TaskMessage,
    users::{repo, validation::SignUp},
};
use sqlx::{Connection, PgPool, postgres::PgListener};
use tokio_util::sync::CancellationToken;

use super::{Bench, Row, cpu_seconds, relay_drain::CLAIM, sign_up, stop, util::BENCH_HASH};

const KIND: &str = "bench:horizon";
const MINUTE: Duration = Duration::from_secs(60);
/// Sign-ups in flight at most: an offer finding all busy is not made (it
/// counts as offered, not committed).
const IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Design {
    Snapshots,
    ClaimMark,
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Self::Snapshots => "snapshot reads",
            Self::ClaimMark => "claim-and-mark (before)",
        }
    }

    /// The relations whose dead tuples are counted.
    fn relations(self) -> &'static str {
        match self {
            Self::Snapshots => "relname LIKE 'outbox%'",
            Self::ClaimMark => "relname = 'bench_claim_mark'",
        }
    }
}

/// One minute of a run.
#[derive(Debug, Default, Clone)]
struct Minute {
    offered: u64,
    committed: u64,
    forwarded: u64,
    p50_ms: f64,
    p99_ms: f64,
    dead: i64,
    relay_cpu: f64,
}

impl Bench {
    /// Part 8; see the module doc.
    pub(crate) async fn held_horizon(&self) -> anyhow::Result<Vec<Row>> {
        let a = &self.args;
        println!(
            "held horizon: {} sign-ups/s for {:?}, a snapshot held from {:?} to {:?}",
            a.horizon_rate, a.horizon_for, a.horizon_hold_from, a.horizon_hold_to
        );
        let mut rows = Vec::new();
        for design in [Design::Snapshots, Design::ClaimMark] {
            self.reset().await?;
            let minutes = self.horizon_run(design).await?;
            println!("  {}:", design.name());
            println!(
                "    min  offered  committed  forwarded  p50 ms  p99 ms  dead tuples  relay CPU"
            );
            for (i, m) in minutes.iter().enumerate() {
                println!(
                    "    {:>3}  {:>7}  {:>9}  {:>9}  {:>6.1}  {:>6.1}  {:>11}  {:>8.0}%",
                    i + 1,
                    m.offered,
                    m.committed,
                    m.forwarded,
                    m.p50_ms,
                    m.p99_ms,
                    m.dead,
                    m.relay_cpu * 100.0
                );
            }
            rows.push(self.horizon_row(design, &minutes));
        }
        sqlx::raw_sql("DROP TABLE IF EXISTS bench_claim_mark")
            .execute(&self.pool)
            .await?;
        Ok(rows)
    }

    /// The row for one design: the worst minute of the hold against the
    /// minute before it.
    fn horizon_row(&self, design: Design, minutes: &[Minute]) -> Row {
        let from = (self.args.horizon_hold_from.as_secs() / 60) as usize;
        let to = (self.args.horizon_hold_to.as_secs() / 60) as usize;
        let before = &minutes[from.saturating_sub(1)];
        let held = &minutes[from.min(minutes.len())..to.min(minutes.len())];
        let worst = |f: fn(&Minute) -> f64| held.iter().map(f).fold(0.0, f64::max);
        let (p50, p99) = (worst(|m| m.p50_ms), worst(|m| m.p99_ms));
        let ratio = (p50 / before.p50_ms.max(0.1)).max(p99 / before.p99_ms.max(0.1));
        let dead = held.iter().map(|m| m.dead).max().unwrap_or(0);
        let row = Row::new(
            format!(
                "8. held horizon, {}: worst held minute's commit-to-enqueue p50 / p99 (dead tuples)",
                design.name()
            ),
            format!("{p50:.1} / {p99:.1} ms ({dead})"),
        )
        .limit(
            format!(
                "{:.1} / {:.1} ms the minute before",
                before.p50_ms, before.p99_ms
            ),
            ratio,
        );
        match design {
            // A few hundred dead tuples come from the sign-ups' aborted
            // transactions and the checkpoints, not from relaying.
            Design::Snapshots => row.target(
                "<= 1.2x the minute before, no dead tuples from relaying",
                ratio <= 1.2 && dead < 1_000,
            ),
            Design::ClaimMark => row,
        }
    }

    async fn horizon_run(&self, design: Design) -> anyhow::Result<Vec<Minute>> {
        let a = &self.args;
        let minutes = a.horizon_for.as_secs().div_ceil(60) as usize;
        if design == Design::ClaimMark {
            super::relay_drain::create_claim_mark_table(&self.pool).await?;
        }
        let mut relay = self.start_horizon_relay(design)?;
        let relay_pid = relay.id();

        let waker = RelayWaker::new();
        let stop_notifier = CancellationToken::new();
        let notifier = tokio::spawn(waker.clone().run_notifier(
            self.pool.clone(),
            self.cfg.relay.notify_coalesce,
            stop_notifier.clone(),
        ));
        let started = Instant::now();
        let offered = Arc::new(AtomicU64::new(0));
        // (commit time in ms, task id) of every committed sign-up.
        let commits = Arc::new(Mutex::new(Vec::<(i64, i64)>::new()));
        let offers = tokio::spawn(offer(
            Outbox::new(self.pool.clone(), waker.clone()),
            waker.clone(),
            design,
            a.horizon_rate,
            started + a.horizon_for,
            offered.clone(),
            commits.clone(),
        ));
        let hold = tokio::spawn(hold_snapshot(
            self.db_url.clone(),
            started + a.horizon_hold_from,
            started + a.horizon_hold_to,
        ));

        let mut samples = Vec::with_capacity(minutes);
        let mut cpu_before = cpu_seconds(relay_pid)?;
        let mut offered_before = 0;
        for m in 1..=minutes {
            tokio::time::sleep_until((started + MINUTE * m as u32).into()).await;
            // A failing writer or relay ends the run now, not at its end.
            if offers.is_finished() && m < minutes {
                stop(&mut relay);
                offers.await??;
                anyhow::bail!("the sign-ups stopped before the end");
            }
            if let Some(status) = relay.try_wait()? {
                anyhow::bail!("the relay exited: {status}");
            }
            let cpu = cpu_seconds(relay_pid)?;
            let dead: i64 = sqlx::query_scalar(&format!(
                "SELECT coalesce(sum(n_dead_tup), 0)::int8 FROM pg_stat_user_tables WHERE {}",
                design.relations()
            ))
            .fetch_one(&self.pool)
            .await?;
            let now_offered = offered.load(Ordering::Relaxed);
            samples.push(Minute {
                offered: now_offered - offered_before,
                dead,
                relay_cpu: (cpu - cpu_before) / 60.0,
                ..Minute::default()
            });
            (cpu_before, offered_before) = (cpu, now_offered);
        }
        offers.await??;
        hold.await??;
        // The last sign-ups' tasks have a moment to arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop(&mut relay);
        stop_notifier.cancel();
        notifier.await?;

        let commits = std::mem::take(&mut *commits.lock().unwrap());
        let start_ms = Utc::now().timestamp_millis() - started.elapsed().as_millis() as i64;
        let enqueued = self.enqueued_at(&commits).await?;
        let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); minutes];
        for (&(committed_ms, _), enqueued_ms) in commits.iter().zip(&enqueued) {
            let minute = (((committed_ms - start_ms).max(0) / 60_000) as usize).min(minutes - 1);
            samples[minute].committed += 1;
            if let Some(at) = enqueued_ms {
                let forwarded_in = (((at - start_ms).max(0) / 60_000) as usize).min(minutes - 1);
                samples[forwarded_in].forwarded += 1;
                latencies[minute].push((at - committed_ms).max(0) as f64);
            }
        }
        for (m, mut l) in samples.iter_mut().zip(latencies) {
            l.sort_by(f64::total_cmp);
            if !l.is_empty() {
                m.p50_ms = l[(l.len() - 1) / 2];
                m.p99_ms = l[((l.len() - 1) as f64 * 0.99) as usize];
            }
        }
        let lost = enqueued.iter().filter(|e| e.is_none()).count();
        ensure!(lost == 0, "{lost} committed sign-ups never reached Redis");
        Ok(samples)
    }

    /// When Redis enqueued each task (its `enqueued_at`, ms).
    async fn enqueued_at(&self, commits: &[(i64, i64)]) -> anyhow::Result<Vec<Option<i64>>> {
        let keys = self.queue.keys("critical");
        let mut out = Vec::with_capacity(commits.len());
        for chunk in commits.chunks(5_000) {
            let pipeline = self.redis.pipeline();
            for (_, id) in chunk {
                let () = pipeline.hget(keys.task(*id), "enqueued_at").await?;
            }
            let values: Vec<Option<i64>> = pipeline.all().await?;
            out.extend(values);
        }
        Ok(out)
    }

    fn start_horizon_relay(&self, design: Design) -> anyhow::Result<Child> {
        let mut cmd = match design {
            Design::Snapshots => self.command("relay"),
            Design::ClaimMark => {
                let mut cmd = std::process::Command::new(std::env::current_exe()?);
                cmd.arg("--claim-mark-child")
                    .env("DATABASE_URL", &self.db_url)
                    .env("REDIS_URL", &self.redis_cfg.url)
                    .env("REDIS_KEY_PREFIX", super::PREFIX)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null());
                cmd
            }
        };
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the relay")
    }
}

/// Offers `rate` sign-ups a second until `until`, each in its own task, at
/// most [`IN_FLIGHT`] at once.
async fn offer(
    outbox: Outbox,
    waker: RelayWaker,
    design: Design,
    rate: u64,
    until: Instant,
    offered: Arc<AtomicU64>,
    commits: Arc<Mutex<Vec<(i64, i64)>>>,
) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut made = 0u64;
    let mut running = tokio::task::JoinSet::new();
    while Instant::now() < until {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while made < due {
            made += 1;
            offered.fetch_add(1, Ordering::Relaxed);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let (outbox, waker, commits) = (outbox.clone(), waker.clone(), commits.clone());
            running.spawn(async move {
                let name = format!("horizon{made}");
                let id = match design {
                    Design::Snapshots => sign_up(&outbox, &name, KIND).await?.get(),
                    Design::ClaimMark => sign_up_claim_mark(&outbox, &waker, &name).await?,
                };
                commits
                    .lock()
                    .unwrap()
                    .push((Utc::now().timestamp_millis(), id));
                drop(slot);
                anyhow::Ok(())
            });
        }
        while let Some(done) = running.try_join_next() {
            done??;
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    Ok(())
}

/// The sign-up transaction with its task row in the reference table: the
/// same user row and the same outbox columns as sql/outbox/insert.sql.
async fn sign_up_claim_mark(
    outbox: &Outbox,
    waker: &RelayWaker,
    name: &str,
) -> anyhow::Result<i64> {
    let signup = SignUp::parse(
        name.to_owned(),
        "Bench User".into(),
        format!("{name}@example.com"),
        "bench-password".into(),
    )
    .map_err(|v| anyhow::anyhow!("bench user {name}: {v:?}"))?;
    let mut tx = outbox.begin().await?;
    repo::insert(&mut tx, &signup, BENCH_HASH).await?;
    let conn: &mut sqlx::PgConnection = &mut tx;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO bench_claim_mark (kind, queue, payload, max_retry, timeout_ms, process_at)
         VALUES ($1, 'critical', $2, 3, 30000, now()) RETURNING id",
    )
    .bind(KIND)
    .bind(serde_json::json!({ "username": name }))
    .fetch_one(conn)
    .await?;
    tx.commit().await?;
    waker.wake();
    Ok(id)
}

/// From `from` to `to`, a REPEATABLE READ transaction that read once and
/// then sits idle, holding its snapshot (and so the xmin horizon).
async fn hold_snapshot(db_url: String, from: Instant, to: Instant) -> anyhow::Result<()> {
    tokio::time::sleep_until(from.into()).await;
    let mut conn = sqlx::PgConnection::connect(&db_url).await?;
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    tokio::time::sleep_until(to.into()).await;
    tx.rollback().await?;
    conn.close().await?;
    Ok(())
}

/// The `--claim-mark-child` process: the relay loop from before the snapshot
/// reads, on the reference table: claim (FOR UPDATE SKIP LOCKED), enqueue,
/// mark, commit, in one transaction per batch; woken by the sign-ups'
/// pg_notify, polling every second otherwise. Runs until SIGTERM.
pub async fn claim_mark_child(cfg: Config) -> anyhow::Result<()> {
    let clients = Clients::new(&cfg)?;
    let (pool, broker) = (clients.pool.clone(), clients.broker.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let batch = i64::from(cfg.relay.batch_size);
    loop {
        while claim_mark_batch(&pool, &broker, batch, cfg.relay.session_timeout).await? == batch {}
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = listener.recv() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn claim_mark_batch(
    pool: &PgPool,
    broker: &simplebank::queue::Broker,
    batch: i64,
    session_timeout: Duration,
) -> anyhow::Result<i64> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin_with(relay::begin_batch(session_timeout)).await?;
    let rows: Vec<OutboxRow> = sqlx::query_as(CLAIM)
        .bind(batch)
        .bind(Vec::<String>::new())
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let tasks: Vec<TaskMessage> = rows.into_iter().map(Into::into).collect();
    broker.enqueue(&tasks).await?;
    sqlx::query("UPDATE bench_claim_mark SET dispatched_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len() as i64)
}
