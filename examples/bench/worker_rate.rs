//! Part 2, the worker: no-op tasks through the queue at several
//! concurrencies, beside redis-benchmark's LPUSH on the same server.

use super::*;

impl Bench {
    /// 2. No-op tasks through the queue at several concurrencies, beside
    ///    redis-benchmark's LPUSH on the same server.
    pub(crate) async fn worker(&self) -> anyhow::Result<Vec<Row>> {
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
