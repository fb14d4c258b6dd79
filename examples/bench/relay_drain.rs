//! Part 1, the relay: `relay --once` over a backlog of outbox rows, beside
//! two limits with no Redis in between: the relay's own read loop, and the
//! claim-and-mark SQL of the outbox before it was read by snapshots (the
//! reference, on a table of that layout the harness makes); and beside the
//! limit of the Redis side alone: the same batches' enqueue calls, one after
//! another as one queue's are, timed without the reads.

use super::*;

impl Bench {
    /// 1. `relay --once` over the backlog, beside the same claim-and-mark SQL
    ///    with no Redis in between.
    pub(crate) async fn relay(&self) -> anyhow::Result<Vec<Row>> {
        let n = self.args.relay_rows;
        let batch = self.args.cfg.relay.batch_size;
        println!("relay: {n} rows, batches of {batch}");

        // The reference runs as many lanes as the old relay kept batches
        // in flight.
        let lanes = self.args.cfg.relay.parallel_batches.max(1);
        self.claim_mark_backlog(n).await?;
        let started = Instant::now();
        let marked: i64 =
            futures::future::try_join_all((0..lanes).map(|_| self.claim_and_mark(batch)))
                .await?
                .into_iter()
                .sum();
        ensure!(marked == n, "claim+mark loop marked {marked} of {n} rows");
        let claim_mark = n as f64 / started.elapsed().as_secs_f64();
        sqlx::raw_sql("DROP TABLE bench_claim_mark")
            .execute(&self.pool)
            .await?;

        self.backlog(n).await?;
        let started = Instant::now();
        let read = self.read_all(batch).await?;
        ensure!(read == n, "read loop read {read} of {n} rows");
        let raw_read = n as f64 / started.elapsed().as_secs_f64();

        let cpu_before = self.redis_main_thread_cpu().await?;
        let (enqueued, enqueue_time) = self.enqueue_all(batch).await?;
        ensure!(
            enqueued == n,
            "enqueue loop enqueued {enqueued} of {n} rows"
        );
        let enqueue_alone = n as f64 / enqueue_time.as_secs_f64();
        // Redis's main thread runs every command: its CPU per row is the
        // most one Redis can forward, with every other cost overlapped.
        let redis_cpu = (self.redis_main_thread_cpu().await? - cpu_before) / n as f64;
        let redis_ceiling = 1.0 / redis_cpu;
        println!(
            "  Redis main thread: {:.1} us of CPU per row enqueued, at most {} rows/s",
            redis_cpu * 1e6,
            per_s(redis_ceiling)
        );
        // The relay below starts from an empty Redis, as the others did.
        self.flush_redis().await?;
        self.settle().await?;

        let ours = self.relay_once(n, None).await?;
        Ok(vec![
            Row::new("1. relay drain, 1M backlog (rows/s)", per_s(ours))
                .limit(
                    format!(
                        "{} claim+mark SQL (before), {lanes} lanes",
                        per_s(claim_mark)
                    ),
                    ours / claim_mark,
                )
                .target(">= 1.0 of claim+mark", ours / claim_mark >= 1.0),
            Row::new("   its own read loop, no Redis (rows/s)", per_s(raw_read))
                .limit(format!("{} relay", per_s(ours)), ours / raw_read),
            Row::new(
                "   its enqueue calls alone, one at a time, no Postgres (rows/s)",
                per_s(enqueue_alone),
            )
            .limit(format!("{} relay", per_s(ours)), ours / enqueue_alone),
            Row::new(
                "   one Redis's ceiling: a core over its CPU per row enqueued (rows/s)",
                per_s(redis_ceiling),
            )
            .limit(format!("{} relay", per_s(ours)), ours / redis_ceiling),
        ])
    }

    /// Seconds of CPU Redis's main thread has used (INFO cpu).
    async fn redis_main_thread_cpu(&self) -> anyhow::Result<f64> {
        let info: String = self.redis.custom(fred::cmd!("INFO"), vec!["cpu"]).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(':')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .with_context(|| format!("no {name} in Redis's INFO cpu"))
        };
        Ok(field("used_cpu_user_main_thread")? + field("used_cpu_sys_main_thread")?)
    }

    /// The relay's enqueue calls for the backlog, each batch with its
    /// cursor as the relay writes them, one after another; the rows
    /// enqueued and the time spent in those calls only (the reads between
    /// them are not counted).
    async fn enqueue_all(&self, batch: u32) -> anyhow::Result<(i64, Duration)> {
        let mut conn = self.pool.acquire().await?;
        let (mut position, mut total, mut stored) = (Position::START, 0i64, None::<String>);
        let (started, mut spent) = (Instant::now(), Duration::ZERO);
        while started.elapsed() < PART_LIMIT {
            let read = read_batch(&mut conn, &position, batch).await?;
            if read.rows.is_empty() {
                break;
            }
            let next = read.next(&position);
            let next_text = positions::cursor_text(&next);
            let tasks: Vec<TaskMessage> = read.rows.into_iter().map(Into::into).collect();
            let cursor = Cursor {
                name: positions::CURSOR,
                expected: stored.as_deref(),
                next: &next_text,
            };
            let call = Instant::now();
            let outcome = self.queue.enqueue_at("critical", &tasks, cursor).await?;
            spent += call.elapsed();
            ensure!(
                matches!(outcome, CursorEnqueue::Enqueued(_)),
                "the bench's own cursor moved: {outcome:?}"
            );
            total += tasks.len() as i64;
            (position, stored) = (next, Some(next_text));
        }
        Ok((total, spent))
    }

    /// The relay's reads of the backlog, batch after batch from the start,
    /// with no Redis in between; the rows read.
    async fn read_all(&self, batch: u32) -> anyhow::Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let (mut position, mut total) = (Position::START, 0i64);
        let started = Instant::now();
        while started.elapsed() < PART_LIMIT {
            let read = read_batch(&mut conn, &position, batch).await?;
            if read.rows.is_empty() {
                break;
            }
            total += read.rows.len() as i64;
            position = read.next(&position);
        }
        Ok(total)
    }

    /// `n` rows in the reference table ([`create_claim_mark_table`]).
    async fn claim_mark_backlog(&self, n: i64) -> anyhow::Result<()> {
        create_claim_mark_table(&self.pool).await?;
        sqlx::query(
            "INSERT INTO bench_claim_mark (kind, queue, payload, max_retry, timeout_ms)
             SELECT 'task:send_verify_email', 'critical',
                    jsonb_build_object('username', 'user_' || g), 10, 60000
             FROM generate_series(1, $1) g",
        )
        .bind(n)
        .execute(&self.pool)
        .await?;
        sqlx::raw_sql("VACUUM ANALYZE bench_claim_mark")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `relay --once` over the backlog of `n` rows (with `otlp`, exporting
    /// every span there); its rows per second.
    pub(crate) async fn relay_once(&self, n: i64, otlp: Option<&str>) -> anyhow::Result<f64> {
        let started = Instant::now();
        let child = self
            .traced(self.command("relay"), otlp)
            .arg("--once")
            // The batch spans are at info (a span RUST_LOG turns off is not
            // traced), the per-task lines of the enqueue stay off.
            .env("RUST_LOG", "warn,simplebank::outbox=info")
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
        Ok(n as f64 / took.as_secs_f64())
    }

    /// One lane of the old relay's transaction, statement for statement,
    /// with no Redis in between, until no row is left; returns the rows
    /// marked.
    async fn claim_and_mark(&self, batch: u32) -> anyhow::Result<i64> {
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        let mut marked = 0i64;
        while started.elapsed() < PART_LIMIT {
            // The relay's own BEGIN: asynchronous commit and the session's
            // bounds, in the same round trip.
            let mut tx = conn
                .begin_with(relay::begin_batch(Duration::from_secs(30)))
                .await?;
            let ids: Vec<i64> = sqlx::query(CLAIM)
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
            sqlx::query("UPDATE bench_claim_mark SET dispatched_at = now() WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            marked += ids.len() as i64;
        }
        Ok(marked)
    }
}

/// One batch of the critical queue beyond `position`, read as the relay
/// reads it.
async fn read_batch(
    conn: &mut PgConnection,
    position: &Position,
    batch: u32,
) -> anyhow::Result<outbox::read::ReadBatch> {
    let mut tx = conn
        .begin_with(relay::begin_batch(Duration::from_secs(30)))
        .await?;
    let read = outbox::read::read(&mut tx, "critical", position, batch).await?;
    tx.commit().await?;
    Ok(read)
}

/// A table of the outbox's layout before it was read by snapshots (made
/// afresh): a flag per row, set when forwarded, and a partial index of the
/// rows without it.
pub(crate) async fn create_claim_mark_table(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_claim_mark;
         CREATE TABLE bench_claim_mark (
             id bigserial PRIMARY KEY, kind text NOT NULL, queue text NOT NULL,
             payload jsonb NOT NULL, max_retry integer NOT NULL, timeout_ms bigint NOT NULL,
             process_at timestamptz NOT NULL DEFAULT now(),
             created_at timestamptz NOT NULL DEFAULT now(),
             dispatched_at timestamptz, request_id text, trace_context text);
         CREATE INDEX bench_claim_mark_undispatched ON bench_claim_mark (id)
             WHERE dispatched_at IS NULL;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The old relay's claim, on the reference table.
pub(crate) const CLAIM: &str =
    "SELECT id, kind, queue, payload::text AS payload, max_retry, timeout_ms,
       process_at, request_id, created_at, trace_context
FROM bench_claim_mark
WHERE dispatched_at IS NULL AND queue <> ALL($2::text[])
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED";
