//! Test support: a fresh database and Redis key prefix per test, the real app
//! on port 0, and private Redis and SMTP server processes for fault tests.

// Shared by the `it` and `faults` test crates; each uses a part of it.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use clap::Parser;
use fred::prelude::*;
use simplebank::{
    app::{self, Components, RunningApp},
    config::Config,
    queue::{self, Broker, TaskInfo, TaskState},
};
use sqlx::{Connection, PgConnection, PgPool};

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

fn base_url(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run the tests with `make test`"))
}

/// The component sets the tests start, besides [`Components::ALL`].
pub const API_ONLY: Components = Components {
    api: true,
    relay: false,
    worker: false,
};
pub const API_AND_RELAY: Components = Components {
    api: true,
    relay: true,
    worker: false,
};
pub const RELAY_ONLY: Components = Components {
    api: false,
    relay: true,
    worker: false,
};
pub const WORKER_ONLY: Components = Components {
    api: false,
    relay: false,
    worker: true,
};
pub const RELAY_AND_WORKER: Components = Components {
    api: false,
    relay: true,
    worker: true,
};

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
        // Cheap hashing: the cost of the real parameters is a benchmark matter.
        cfg.signup.argon2_memory_kib = 64;
        cfg.signup.argon2_iterations = 1;
        cfg.signup.verify_email_process_in = Duration::ZERO;
        // The retry schedule in milliseconds instead of seconds: 15 ms, 46 ms, ...
        cfg.worker.retry_unit = Duration::from_millis(1);
        cfg.worker.retry_max = Duration::from_millis(500);
        cfg.worker.shutdown_grace = Duration::from_secs(4);
        cfg.mail.smtp_timeout = Duration::from_secs(2);
        cfg.mail.dir = std::env::temp_dir().join(format!("{name}-mail"));

        let pool = PgPool::connect(&db_url).await.unwrap();
        simplebank::db::migrate(&pool).await.unwrap();
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

    /// A queue client on this test's prefix.
    pub fn queue(&self) -> Broker {
        Broker::new(
            queue::connection::pool(&self.cfg.redis).unwrap(),
            &self.cfg.redis.key_prefix,
        )
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The id of the test's only outbox row (= its task id).
    pub async fn only_outbox_id(&self) -> i64 {
        sqlx::query_scalar("SELECT id FROM outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// A task of `kind` for `queue` with no retries, as the relay would enqueue it.
pub fn task_msg(id: i64, kind: &str, queue: &str) -> simplebank::queue::TaskMessage {
    simplebank::queue::TaskMessage {
        id,
        kind: kind.into(),
        queue: queue.into(),
        payload: "{}".into(),
        max_retry: 0,
        timeout: Duration::from_secs(5),
        process_at: chrono::Utc::now(),
        request_id: None,
        created_at: chrono::Utc::now(),
    }
}

/// Waits (up to `limit`) until task `id` of `queue` exists and passes `ok`.
pub async fn wait_task(
    q: &Broker,
    queue: &str,
    id: i64,
    limit: Duration,
    what: &str,
    ok: impl Fn(&TaskInfo) -> bool,
) -> TaskInfo {
    eventually(limit, &format!("task {id}: {what}"), || async {
        q.task(queue, id).await.ok().flatten().filter(&ok)
    })
    .await
}

/// Waits until task `id` of `queue` is in `state`.
pub async fn wait_state(q: &Broker, queue: &str, id: i64, state: TaskState) -> TaskInfo {
    wait_task(q, queue, id, Duration::from_secs(20), state.as_str(), |t| {
        t.state == state
    })
    .await
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
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(serde_json::Value::Null))
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

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "nothing listens on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private redis-server on a loopback port, with an append-only file so a
/// restart keeps its data. Stopped by PID when dropped.
pub struct RedisProcess {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProcess {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("sbtest-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port: free_port(),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (make test installs it)");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
    }

    /// SIGTERM and wait: Redis flushes its append-only file and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real SMTP server (aiosmtpd) writing what it receives into a Maildir, and
/// refusing recipients whose local part starts with "refused"
/// (tests/support/smtp_sink.py).
pub struct SmtpProcess {
    pub port: u16,
    pub maildir: PathBuf,
    child: Option<Child>,
}

impl SmtpProcess {
    pub fn on_port(port: u16) -> Self {
        let maildir =
            std::env::temp_dir().join(format!("sbtest-smtp-{}", uuid::Uuid::new_v4().simple()));
        let mut smtp = Self {
            port,
            maildir,
            child: None,
        };
        smtp.start();
        smtp
    }

    /// Starts the server again (after [`SmtpProcess::stop`]), on the same
    /// port and Maildir.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let (port, maildir) = (self.port, &self.maildir);
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/venv/bin/python");
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
        let child = Command::new(python)
            .env("PYTHONPATH", support)
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "smtp_sink.RefusingMailbox",
            ])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd in .dev/venv (make test installs it)");
        self.child = Some(child);
        wait_for_port(port, Duration::from_secs(15));
    }

    /// Stops the server (SIGKILL: it is gone at once); what it received stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<String> {
        self.received().into_iter().map(|(_, m)| m).collect()
    }

    /// Every message received so far, raw, with when it was written.
    pub fn received(&self) -> Vec<(std::time::SystemTime, String)> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let at = std::fs::metadata(&path).ok()?.modified().ok()?;
                Some((at, std::fs::read_to_string(path).ok()?))
            })
            .collect()
    }
}

impl Drop for SmtpProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}

/// Raw Redis commands on a test's prefix.
pub async fn redis_client(url: &str) -> fred::clients::Client {
    let client = fred::clients::Client::new(
        fred::types::config::Config::from_url(url).unwrap(),
        None,
        None,
        None,
    );
    client.init().await.unwrap();
    client
}

/// A TCP link to a real server that a test can cut and restore. Cut, the
/// client sees what it sees when the server goes away: open connections end
/// and new ones are refused. The server itself keeps running, with the test's
/// data, for the test to inspect. While replies are swallowed, requests reach
/// the server and its answers are dropped: a reply lost on the way back.
pub struct CuttableLink {
    pub port: u16,
    target: std::net::SocketAddr,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    up: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

impl CuttableLink {
    pub async fn to(target: std::net::SocketAddr) -> Self {
        let mut link = Self {
            port: free_port(),
            target,
            swallow: Default::default(),
            up: None,
        };
        link.restore().await;
        link
    }

    /// The Postgres URL `url` with its host and port replaced by this link's.
    pub fn postgres_url(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.into()
    }

    /// The Redis URL of this link.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// From now until the next [`CuttableLink::restore`], the server's answers
    /// are dropped on the way back.
    pub fn swallow_replies(&self) {
        self.swallow
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn restore(&mut self) {
        assert!(self.up.is_none(), "already up");
        self.swallow
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebind the link's port");
        let stop = tokio_util::sync::CancellationToken::new();
        let (target, token, swallow) = (self.target, stop.clone(), self.swallow.clone());
        let accept = tokio::spawn(async move {
            let pipes = tokio_util::task::TaskTracker::new();
            loop {
                let (client, _) = tokio::select! {
                    _ = token.cancelled() => break,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let (token, swallow) = (token.clone(), swallow.clone());
                pipes.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = pipe(client_read, server_write, None) => {}
                        _ = pipe(server_read, client_write, Some(swallow)) => {}
                    }
                });
            }
            // Both ends of every pipe are dropped (closed) before the cut returns.
            pipes.close();
            pipes.wait().await;
        });
        self.up = Some((stop, accept));
    }

    pub async fn cut(&mut self) {
        let (stop, accept) = self.up.take().expect("link is up");
        stop.cancel();
        accept.await.unwrap();
    }
}

/// Copies `from` to `to` until either end closes; drops what it reads while
/// `swallow` is set.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if swallow
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Host and port of a Postgres URL, resolved.
pub fn postgres_addr(url: &str) -> std::net::SocketAddr {
    url_addr(url, 5432)
}

/// Host and port of a Redis URL, resolved.
pub fn redis_addr(url: &str) -> std::net::SocketAddr {
    url_addr(url, 6379)
}

fn url_addr(url: &str, default_port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(url).unwrap();
    (url.host_str().unwrap(), url.port().unwrap_or(default_port))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}
