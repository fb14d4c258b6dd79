//! Part 3, commit-to-handler latency at a fixed offered rate through the
//! whole pipeline in one process, split at the task's arrival in Redis.

use super::*;

impl Bench {
    /// 3. Commit-to-handler latency at a fixed offered rate through the whole
    ///    pipeline in one process, as `serve` runs it: the sign-up transaction,
    ///    the in-process wake-up, the relay, Redis, the worker.
    pub(crate) async fn latency(&self) -> anyhow::Result<Vec<Row>> {
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

        let offered = self
            .write_probe_sign_ups(total, warmup, &waker, &committed)
            .await?;
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
        let mut lat = latencies(&committed, &started_at, offered, seconds);
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

    /// Writes `total` probe sign-ups at the offered rate, the first `warmup`
    /// of them not counted, noting in `committed` when each counted one
    /// committed. Returns when the counted ones began.
    async fn write_probe_sign_ups(
        &self,
        total: u64,
        warmup: u64,
        waker: &RelayWaker,
        committed: &Arc<Mutex<HashMap<TaskId, Instant>>>,
    ) -> anyhow::Result<Instant> {
        let rate = self.args.latency_rate;
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
            let (outbox, committed) = (
                Outbox::new(self.pool.clone(), waker.clone()),
                committed.clone(),
            );
            writers.spawn(async move {
                let _permit = permit;
                let name = format!("lat{i}");
                let id = sign_up(&outbox, &name, "bench:probe").await?;
                if i >= warmup {
                    committed.lock().unwrap().insert(id, Instant::now());
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = writers.join_next().await {
            r??;
        }
        Ok(offered)
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
}

/// The commit-to-handler latency of each task `committed` and `started`,
/// `seconds` the length of the measured run from `offered`. Prints the worst
/// of each second.
fn latencies(
    committed: &HashMap<TaskId, Instant>,
    started_at: &HashMap<TaskId, Instant>,
    offered: Instant,
    seconds: usize,
) -> Vec<Duration> {
    let mut by_second: Vec<Duration> = vec![Duration::ZERO; seconds];
    let lat: Vec<Duration> = committed
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
    lat
}
