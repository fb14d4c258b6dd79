//! Part 4, HTTP: POST /v1/create_user on a real `serve` under wrk, beside
//! pgbench's rate for the same transaction, and the cost of the default hashing.

use super::*;

/// One wrk run against `serve`.
pub(crate) struct WrkRun {
    pub rps: f64,
    pub p99: String,
    pub users: i64,
    pub rss_kib: u64,
    /// `serve`'s CPU time (user + system) per request answered.
    pub serve_cpu_us: f64,
    /// The whole machine's busy CPU time per request answered: `serve`,
    /// Postgres, Redis, wrk and anything else running.
    pub machine_cpu_us: f64,
}

impl Bench {
    /// 4. POST /v1/create_user on a real `serve` under wrk, beside pgbench's
    ///    rate for the same transaction; plus the cost of the default hashing.
    pub(crate) async fn http(&self) -> anyhow::Result<Vec<Row>> {
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
            let run = self.wrk_create_user(&lua, None).await?;
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

    /// A release `serve` under wrk posting distinct valid sign-ups; with
    /// `otlp`, exporting every span there.
    pub(crate) async fn wrk_create_user(
        &self,
        lua: &std::path::Path,
        otlp: Option<&str>,
    ) -> anyhow::Result<WrkRun> {
        let clients = self.args.clients.to_string();
        let mail_dir = std::env::temp_dir().join("simplebank-bench-mail");
        let mut serve = self.traced(self.command("serve"), otlp);
        let mut serve = serve
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
            .env("HTTP_SIGNUP_RATE_LIMIT", "0")
            .env("VERIFY_EMAIL_PROCESS_IN", "1h")
            .env("MAIL_DIR", &mail_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting serve")?;
        let result = async {
            let addr = http_addr_from_log(&mut serve)?;
            wait_ready(&addr).await?;
            let cpu_before = cpu_seconds(serve.id())?;
            let busy_before = machine_busy_seconds()?;
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
            let cpu = cpu_seconds(serve.id())? - cpu_before;
            let busy = machine_busy_seconds()? - busy_before;
            let rss = peak_rss_kib(serve.id())?;
            anyhow::Ok((text, rss, cpu, busy))
        }
        .await;
        stop(&mut serve);
        let _ = std::fs::remove_dir_all(&mail_dir);
        let (text, rss_kib, cpu, busy) = result?;
        let requests = requests(&text).context("wrk's request count")?;
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
            serve_cpu_us: cpu * 1e6 / requests,
            machine_cpu_us: busy * 1e6 / requests,
        })
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
pub(crate) const WRK_CREATE_USER: &str = r#"local counter = 0
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

/// The requests wrk made: the number before "requests in".
fn requests(wrk_output: &str) -> Option<f64> {
    let line = wrk_output.lines().find(|l| l.contains(" requests in "))?;
    line.split_whitespace().next()?.parse().ok()
}
