//! Part 1, the relay: `relay --once` over a backlog of outbox rows, beside
//! the same claim-and-mark SQL with no Redis in between.

use super::*;

impl Bench {
    /// 1. `relay --once` over the backlog, beside the same claim-and-mark SQL
    ///    with no Redis in between.
    pub(crate) async fn relay(&self) -> anyhow::Result<Vec<Row>> {
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
        let ours = self.relay_once(n, None).await?;
        Ok(vec![
            Row::new("1. relay drain, 1M backlog (rows/s)", per_s(ours))
                .limit(
                    format!("{} claim+mark SQL, {lanes} lanes", per_s(raw)),
                    ours / raw,
                )
                .target(">= 0.5 of raw", ours / raw >= 0.5),
        ])
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

    /// One lane of the relay's own transaction, statement for statement, with
    /// no Redis in between, until no row is left; returns the rows marked.
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
            let ids: Vec<i64> = sqlx::query(include_str!("../../sql/outbox/claim.sql"))
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
            sqlx::query(include_str!("../../sql/outbox/mark_dispatched.sql"))
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            marked += ids.len() as i64;
        }
        Ok(marked)
    }
}
