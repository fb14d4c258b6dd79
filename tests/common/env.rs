//! The app under test: a fresh database and Redis key prefix per test
//! ([`TestEnv`]), the real app on port 0 ([`TestApp`]), and the fixtures the
//! tests build their input from.

use std::time::Duration;

use super::init_logs;

use clap::Parser;
use simplebank::{
    app::{self, Components, RunningApp},
    config::Config,
    queue::{Broker, TaskId, TaskMessage},
};
use sqlx::{Connection, PgConnection, PgPool};

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

fn base_url(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run the tests with `make test`"))
}

/// The configuration as a process started with no settings would see it
/// (besides DATABASE_URL and REDIS_URL, which `make test` exports).
pub fn default_config() -> Config {
    TestCli::try_parse_from(["test"])
        .expect("default config")
        .config
}

/// A test's own database (migrated) and Redis key prefix, and a config aimed at them.
pub struct TestEnv {
    pub cfg: Config,
    pub db_url: String,
    pub pool: PgPool,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::migrated_to(None).await
    }

    /// A test's database with the migrations up to `version` only: the
    /// database of an earlier release, to upgrade from.
    pub async fn at_migration(version: i64) -> Self {
        Self::migrated_to(Some(version)).await
    }

    async fn migrated_to(upto: Option<i64>) -> Self {
        init_logs();
        let admin_url = base_url("DATABASE_URL");
        let name = format!("sbtest_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let db_url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);

        let mut cfg = default_config();
        cfg.db.url = Some(db_url.clone());
        cfg.db.max_connections = 8;
        cfg.redis.url = base_url("REDIS_URL");
        cfg.redis.key_prefix = format!("sbtest:{}", uuid::Uuid::new_v4().simple());
        cfg.http.addr = "127.0.0.1:0".parse().unwrap();
        cfg.http.shutdown_grace = Duration::from_secs(5);
        // Tests sign up many users from 127.0.0.1; the limit has its own test.
        cfg.http.signup_rate_limit = 0;
        // Cheap hashing: the cost of the real parameters is a benchmark matter.
        cfg.signup.argon2_memory_kib = 64;
        cfg.signup.argon2_iterations = 1;
        cfg.signup.verify_email_process_in = Duration::ZERO;
        // The retry schedule in milliseconds instead of seconds: 15 ms, 46 ms, ...
        cfg.worker.retry_unit = Duration::from_millis(1);
        cfg.worker.retry_max = Duration::from_millis(500);
        cfg.worker.shutdown_grace = Duration::from_secs(4);
        cfg.mail.smtp_timeout = Duration::from_secs(2);
        // A breaker that opens after 3 sender-side failures, as by default,
        // and probes within a second rather than minutes.
        cfg.worker.breaker_pause = Duration::from_millis(100);
        cfg.worker.breaker_max_pause = Duration::from_secs(1);
        cfg.mail.dir = std::env::temp_dir().join(format!("{name}-mail"));

        let pool = PgPool::connect(&db_url).await.unwrap();
        match upto {
            None => simplebank::db::migrate(&pool).await.unwrap(),
            Some(version) => {
                let all = &simplebank::db::MIGRATOR;
                let earlier = sqlx::migrate::Migrator {
                    migrations: all
                        .migrations
                        .iter()
                        .filter(|m| m.version <= version)
                        .cloned()
                        .collect::<Vec<_>>()
                        .into(),
                    ..sqlx::migrate::Migrator::DEFAULT
                };
                earlier.run(&pool).await.unwrap();
            }
        }
        Self { cfg, db_url, pool }
    }

    pub async fn start(&self, components: Components) -> TestApp {
        let app = app::start(&self.cfg, components).await.expect("app starts");
        let base = app
            .http_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let admin = app
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        TestApp {
            app: Some(app),
            base,
            admin,
            http: reqwest::Client::new(),
        }
    }

    /// `simplebank args...` aimed at this test's database and Redis prefix,
    /// as an operator would run it: a process of its own.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_simplebank"));
        cmd.args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", &self.cfg.redis.url)
            .env("REDIS_KEY_PREFIX", &self.cfg.redis.key_prefix)
            .env_remove("LOG_FORMAT")
            .current_dir(std::env::temp_dir())
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Redis forgets task `id` of `queue`, its tombstone included (as after a
    /// restore from an old backup, or a restart without its file).
    pub async fn forget_in_redis(&self, queue: &str, id: TaskId) {
        let raw = super::redis_client(&self.cfg.redis.url).await;
        let _: () = fred::prelude::KeysInterface::del(&raw, self.queue().keys(queue).task(id))
            .await
            .unwrap();
    }

    /// A queue client on this test's prefix.
    pub fn queue(&self) -> Broker {
        Broker::new(
            self.cfg.redis.connection().pool().unwrap(),
            &self.cfg.redis.key_prefix,
        )
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Outbox rows not forwarded yet (beyond their queue's position, as
    /// the Redis of this env's config has it).
    pub async fn undispatched(&self) -> i64 {
        simplebank::outbox::stats::OutboxStats::read(&self.pool, &self.queue())
            .await
            .unwrap()
            .undispatched as i64
    }

    /// The id of the test's only outbox row (= its task id).
    pub async fn only_outbox_id(&self) -> TaskId {
        let id: i64 = sqlx::query_scalar("SELECT id FROM outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        TaskId::from(id)
    }
}

/// A task of `kind` for `queue` with no retries and a 5 s timeout, as the
/// relay would enqueue it; the `with_*` methods of [`TaskMessage`] change it.
pub fn task_msg(id: i64, kind: &str, queue: &str) -> TaskMessage {
    TaskMessage::new(TaskId::from(id), kind, queue).with_timeout(Duration::from_secs(5))
}

/// A running app; stopped (and checked to stop cleanly) by [`TestApp::stop`].
pub struct TestApp {
    app: Option<RunningApp>,
    pub base: String,
    /// The ADMIN_ADDR listener's base URL, when one was asked for.
    pub admin: String,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, body) = self.post_json_with_retry_after(path, body).await;
        (status, body)
    }

    /// [`TestApp::post_json`], with the answer's Retry-After in seconds.
    pub async fn post_json_with_retry_after(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, Option<u64>, serde_json::Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let body = res.json().await.unwrap_or(serde_json::Value::Null);
        (status, retry_after, body)
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Wakes the app's relay, as a commit in the app would.
    pub fn wake_relay(&self) {
        self.app.as_ref().unwrap().waker.wake();
    }

    pub async fn stop(mut self) {
        let app = self.app.take().unwrap();
        app.shutdown();
        app.wait().await.expect("app stops within its grace period");
    }
}

pub fn user_json(name: &str) -> serde_json::Value {
    serde_json::json!({
        "username": name,
        "full_name": "Test User",
        "email": format!("{name}@example.com"),
        "password": "secret123",
    })
}
