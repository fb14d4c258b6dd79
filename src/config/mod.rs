//! Configuration: every setting is a flag that also reads its environment
//! variable (and `.env`, loaded by `main` before parsing). `.env.example` lists
//! them all with their defaults. Values are checked when parsed (their type)
//! and then together ([`validate`]: ranges, agreement between settings, URLs
//! without echoing their secrets), so a bad one stops start-up with one line
//! naming it. URL settings never show their values in `--help`.

pub mod scoped;
pub mod validate;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use crate::queue::{QueueWeight, RedisSettings, RetryPolicy, WorkerSettings};

/// Everything the service can be told, grouped by the component it configures.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub db: DbConfig,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub log: LogConfig,
    #[command(flatten)]
    pub signup: SignupConfig,
    #[command(flatten)]
    pub relay: RelayConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub mail: MailConfig,
    #[command(flatten)]
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Postgres")]
pub struct DbConfig {
    /// Postgres URL (postgres://user:password@host:port/db).
    #[arg(
        id = "database_url",
        value_name = "DATABASE_URL",
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// Size of the connection pool.
    #[arg(
        id = "database_max_connections",
        value_name = "DATABASE_MAX_CONNECTIONS",
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering 503.
    #[arg(id = "database_acquire_timeout", value_name = "DATABASE_ACQUIRE_TIMEOUT", long = "database-acquire-timeout", env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub acquire_timeout: Duration,
    /// A direct (not transaction-pooled) URL for the relay's LISTEN connection.
    /// LISTEN does not survive transaction-mode poolers such as PgBouncer.
    /// Defaults to DATABASE_URL.
    #[arg(
        id = "database_listen_url",
        value_name = "DATABASE_LISTEN_URL",
        long = "database-listen-url",
        env = "DATABASE_LISTEN_URL",
        hide_env_values = true
    )]
    pub listen_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis URL: redis:// or rediss:// (TLS) for one server, with optional
    /// user, password and DB number; redis-cluster://host:port?node=host:port...
    /// for a Redis Cluster; redis-sentinel://host:port?sentinelServiceName=NAME&node=...
    /// for a primary behind Sentinel (rediss-cluster://, rediss-sentinel:// with TLS).
    #[arg(
        id = "redis_url",
        value_name = "REDIS_URL",
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub url: String,
    /// Connections in the Redis pool.
    #[arg(
        id = "redis_pool_size",
        value_name = "REDIS_POOL_SIZE",
        long = "redis-pool-size",
        env = "REDIS_POOL_SIZE",
        default_value_t = 4
    )]
    pub pool_size: usize,
    /// Timeout for establishing a Redis connection.
    #[arg(id = "redis_connect_timeout", value_name = "REDIS_CONNECT_TIMEOUT", long = "redis-connect-timeout", env = "REDIS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Timeout for one Redis command.
    #[arg(id = "redis_command_timeout", value_name = "REDIS_COMMAND_TIMEOUT", long = "redis-command-timeout", env = "REDIS_COMMAND_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Replicas that must hold the relay's enqueued tasks before their outbox
    /// rows are marked dispatched (Redis WAIT): with 1, a primary that
    /// crashes and fails over to its replica loses no task. 0: no wait (a
    /// single Redis with an append-only file needs none).
    #[arg(
        id = "redis_wait_replicas",
        value_name = "REDIS_WAIT_REPLICAS",
        long = "redis-wait-replicas",
        env = "REDIS_WAIT_REPLICAS",
        default_value_t = 0
    )]
    pub wait_replicas: u32,
    /// The longest the relay waits for REDIS_WAIT_REPLICAS; beyond, the rows
    /// stay undispatched and are forwarded again (a no-op enqueue) later.
    #[arg(id = "redis_wait_timeout", value_name = "REDIS_WAIT_TIMEOUT", long = "redis-wait-timeout", env = "REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// Prefix of every Redis key and channel this service uses.
    #[arg(
        id = "redis_key_prefix",
        value_name = "REDIS_KEY_PREFIX",
        long = "redis-key-prefix",
        env = "REDIS_KEY_PREFIX",
        default_value = "simplebank"
    )]
    pub key_prefix: String,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    #[arg(
        id = "http_addr",
        value_name = "HTTP_ADDR",
        long = "http-addr",
        env = "HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes (larger answers 413).
    #[arg(id = "http_body_limit", value_name = "HTTP_BODY_LIMIT", long = "http-body-limit", env = "HTTP_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Most requests worked on at once; one more is answered 503 at once.
    #[arg(
        long = "http-max-in-flight",
        env = "HTTP_MAX_IN_FLIGHT",
        default_value_t = 512
    )]
    pub max_in_flight: usize,
    /// Longest a request may take; past it, it is answered 503.
    #[arg(long = "http-request-timeout", env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers; then the
    /// connection is closed.
    #[arg(long = "http-header-timeout", env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Most connections open at once; more wait to be accepted.
    #[arg(
        long = "http-max-connections",
        env = "HTTP_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// Requests a minute one client address may make (0: no limit); over it,
    /// 429 with Retry-After.
    #[arg(
        long = "http-rate-limit",
        env = "HTTP_RATE_LIMIT",
        default_value_t = 6000
    )]
    pub rate_limit: u32,
    /// How many requests a client may make at once before the per-minute
    /// rate applies.
    #[arg(
        long = "http-rate-burst",
        env = "HTTP_RATE_BURST",
        default_value_t = 200
    )]
    pub rate_burst: u32,
    /// Addresses of reverse proxies whose X-Forwarded-For is believed (comma
    /// separated). From anyone else the header is ignored: a client could
    /// name any address in it.
    #[arg(
        long = "http-trusted-proxies",
        env = "HTTP_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Opens the dashboard at /admin of `serve` to whoever presents it (at
    /// least 16 characters); unset, the dashboard is closed (401).
    #[arg(
        id = "admin_token",
        value_name = "ADMIN_TOKEN",
        long = "admin-token",
        env = "ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// How often the dashboard page reloads itself.
    #[arg(id = "admin_refresh", value_name = "ADMIN_REFRESH", long = "admin-refresh", env = "ADMIN_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub admin_refresh: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(id = "http_shutdown_grace", value_name = "HTTP_SHUTDOWN_GRACE", long = "http-shutdown-grace", env = "HTTP_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogConfig {
    /// Log line format.
    #[arg(id = "log_format", value_name = "LOG_FORMAT", long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax. Default: "info" for the
    /// services; for the one-shot tools, warnings and their audit lines only
    /// (a drain's line per task would bury its progress).
    #[arg(
        id = "log_filter",
        value_name = "LOG_FILTER",
        long = "log-filter",
        env = "RUST_LOG"
    )]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sign-up")]
pub struct SignupConfig {
    /// argon2id memory cost in KiB (OWASP: 19456).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP: 2).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// argon2id lanes (OWASP: 1).
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Most passwords hashed at once (each takes ARGON2_MEMORY_KIB of memory
    /// and a core). Default: the number of cores.
    #[arg(long, env = "ARGON2_MAX_CONCURRENT")]
    pub argon2_max_concurrent: Option<usize>,
    /// How long a sign-up waits for a hashing slot before it is refused as
    /// busy (503 with Retry-After).
    #[arg(long, env = "ARGON2_QUEUE_WAIT", default_value = "1s", value_parser = parse_duration)]
    pub argon2_queue_wait: Duration,
    /// Queue of the verify-email task.
    #[arg(long, env = "VERIFY_EMAIL_QUEUE", default_value = "critical")]
    pub verify_email_queue: String,
    /// Retries of the verify-email task before it is archived.
    #[arg(long, env = "VERIFY_EMAIL_MAX_RETRY", default_value_t = 10)]
    pub verify_email_max_retry: u32,
    /// Delay between sign-up and the verify-email task.
    #[arg(long, env = "VERIFY_EMAIL_PROCESS_IN", default_value = "10s", value_parser = parse_duration)]
    pub verify_email_process_in: Duration,
    /// Longest one run of the verify-email task may take.
    #[arg(long, env = "VERIFY_EMAIL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub verify_email_timeout: Duration,
    /// How long a verification link works, counted from each email that
    /// carries it.
    #[arg(long, env = "VERIFY_EMAIL_LINK_TTL", default_value = "15m", value_parser = parse_duration)]
    pub verify_email_link_ttl: Duration,
    /// Shortest time between two requests for a new link to one address.
    #[arg(long, env = "VERIFY_EMAIL_RESEND_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub verify_email_resend_interval: Duration,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Operations")]
pub struct AdminConfig {
    /// Where `relay` and `worker` (and `serve`, when set) serve /healthz,
    /// /readyz and /metrics for the orchestrator and Prometheus; unset: no
    /// such listener (`serve` answers them on its API port as well).
    #[arg(
        id = "admin_addr",
        value_name = "ADMIN_ADDR",
        long = "admin-addr",
        env = "ADMIN_ADDR"
    )]
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Relay")]
pub struct RelayConfig {
    /// Outbox rows claimed and forwarded per batch.
    #[arg(
        id = "relay_batch_size",
        value_name = "RELAY_BATCH_SIZE",
        long = "relay-batch-size",
        env = "RELAY_BATCH_SIZE",
        default_value_t = 500
    )]
    pub batch_size: u32,
    /// Batches one relay keeps in flight while draining a backlog: while one
    /// waits on Redis, the next is claimed in Postgres.
    #[arg(id = "relay_parallel_batches", value_name = "RELAY_PARALLEL_BATCHES", long = "relay-parallel-batches", env = "RELAY_PARALLEL_BATCHES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub parallel_batches: u32,
    /// Safety-net poll when no wake-up arrives (lost notification, dropped listener).
    #[arg(id = "relay_poll_interval", value_name = "RELAY_POLL_INTERVAL", long = "relay-poll-interval", env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Longest pause between retries while Redis or Postgres is down.
    #[arg(id = "relay_max_backoff", value_name = "RELAY_MAX_BACKOFF", long = "relay-max-backoff", env = "RELAY_MAX_BACKOFF", default_value = "5s", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// How long dispatched rows are kept (the source for --redeliver-since).
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub outbox_retention: Duration,
    /// Rows deleted per retention batch.
    #[arg(long, env = "OUTBOX_CLEANUP_BATCH", default_value_t = 1000)]
    pub outbox_cleanup_batch: u32,
    /// A relay's /readyz (on ADMIN_ADDR) fails once the oldest undispatched
    /// outbox row is older than this: a stuck relay shows to the orchestrator.
    #[arg(id = "relay_ready_max_age", value_name = "RELAY_READY_MAX_AGE", long = "relay-ready-max-age", env = "RELAY_READY_MAX_AGE", default_value = "5m", value_parser = parse_duration)]
    pub ready_max_age: Duration,
    /// Shortest time between two post-commit pg_notify calls of one process.
    #[arg(id = "relay_notify_coalesce", value_name = "RELAY_NOTIFY_COALESCE", long = "relay-notify-coalesce", env = "RELAY_NOTIFY_COALESCE", default_value = "5ms", value_parser = parse_duration)]
    pub notify_coalesce: Duration,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// Tasks run at once by one worker process.
    #[arg(
        id = "worker_concurrency",
        value_name = "WORKER_CONCURRENCY",
        long = "worker-concurrency",
        env = "WORKER_CONCURRENCY",
        default_value_t = 16
    )]
    pub concurrency: usize,
    /// Queues and their weights, e.g. "critical=10,default=5".
    #[arg(id = "worker_queues", value_name = "WORKER_QUEUES", long = "worker-queues", env = "WORKER_QUEUES", default_value = "critical=10,default=5", value_parser = parse_queues)]
    pub queues: QueueWeights,
    /// Serve queues in strict priority order (highest weight first) instead of by weight.
    #[arg(
        id = "worker_strict_priority",
        long = "worker-strict-priority",
        env = "WORKER_STRICT_PRIORITY",
        default_value_t = false
    )]
    pub strict_priority: bool,
    /// Lease of a running task; the worker extends it, and others take the task once it expires.
    #[arg(id = "worker_lease", value_name = "WORKER_LEASE", long = "worker-lease", env = "WORKER_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// The retry schedule's second: retry n waits n^4 + 15 + rand(0..=30)*(n+1)
    /// of these (asynq's schedule; about 4.5 hours over 10 retries at 1s).
    /// Smaller values compress the schedule, for tests.
    #[arg(id = "worker_retry_unit", value_name = "WORKER_RETRY_UNIT", long = "worker-retry-unit", env = "WORKER_RETRY_UNIT", default_value = "1s", value_parser = parse_duration)]
    pub retry_unit: Duration,
    /// Longest single retry delay.
    #[arg(id = "worker_retry_max", value_name = "WORKER_RETRY_MAX", long = "worker-retry-max", env = "WORKER_RETRY_MAX", default_value = "24h", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// How long running tasks may take to finish at shutdown before they are handed
    /// back. At least SMTP_TIMEOUT + 2s: a send under way is never cut short.
    #[arg(id = "worker_shutdown_grace", value_name = "WORKER_SHUTDOWN_GRACE", long = "worker-shutdown-grace", env = "WORKER_SHUTDOWN_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How long a completed task's id is remembered in Redis, so a repeated enqueue is a no-op.
    #[arg(id = "worker_done_retention", value_name = "WORKER_DONE_RETENTION", long = "worker-done-retention", env = "WORKER_DONE_RETENTION", default_value = "1h", value_parser = parse_duration)]
    pub done_retention: Duration,
    /// How long an archived task (retries used up) is kept for an operator to
    /// read or retry.
    #[arg(id = "worker_archive_max_age", value_name = "WORKER_ARCHIVE_MAX_AGE", long = "worker-archive-max-age", env = "WORKER_ARCHIVE_MAX_AGE", default_value = "90d", value_parser = parse_duration)]
    pub archive_max_age: Duration,
    /// Most archived tasks kept per queue; the oldest go first.
    #[arg(
        id = "worker_archive_max_size",
        value_name = "WORKER_ARCHIVE_MAX_SIZE",
        long = "worker-archive-max-size",
        env = "WORKER_ARCHIVE_MAX_SIZE",
        default_value_t = 10_000
    )]
    pub archive_max_size: u64,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Mail")]
pub struct MailConfig {
    /// SMTP server: smtp://[user:password@]host[:port] (STARTTLS with ?tls=required),
    /// smtps://... (implicit TLS). Unset: messages are written as .eml files into MAIL_DIR.
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Timeout of one SMTP exchange.
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub smtp_timeout: Duration,
    /// Folder of the file mailer.
    #[arg(
        id = "mail_dir",
        value_name = "MAIL_DIR",
        long = "mail-dir",
        env = "MAIL_DIR",
        default_value = ".dev/mail"
    )]
    pub dir: PathBuf,
    /// Sender name.
    #[arg(
        id = "mail_from_name",
        value_name = "MAIL_FROM_NAME",
        long = "mail-from-name",
        env = "MAIL_FROM_NAME",
        default_value = "Simple Bank"
    )]
    pub from_name: String,
    /// Sender address.
    #[arg(
        id = "mail_from_address",
        value_name = "MAIL_FROM_ADDRESS",
        long = "mail-from-address",
        env = "MAIL_FROM_ADDRESS",
        default_value = "no-reply@simplebank.local"
    )]
    pub from_address: String,
    /// Base URL of the links in emails.
    #[arg(long, env = "APP_BASE_URL", default_value = "http://localhost:8080")]
    pub app_base_url: String,
}

/// Queue names and weights, highest weight first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueWeights(pub BTreeMap<String, u32>);

impl QueueWeights {
    /// The queues, highest weight first (ties by name), the order of strict priority.
    pub fn by_priority(&self) -> Vec<QueueWeight> {
        let mut queues: Vec<_> = self
            .0
            .iter()
            .map(|(queue, weight)| QueueWeight {
                queue: queue.clone(),
                weight: *weight,
            })
            .collect();
        queues.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.queue.cmp(&b.queue)));
        queues
    }

    /// Queue names, highest weight first.
    pub fn names(&self) -> Vec<String> {
        self.by_priority().into_iter().map(|q| q.queue).collect()
    }
}

impl RedisConfig {
    /// How the queue crate connects to this Redis.
    pub fn connection(&self) -> RedisSettings {
        RedisSettings {
            url: self.url.clone(),
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        }
    }
}

impl WorkerConfig {
    /// The worker server's settings.
    pub fn server_settings(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.concurrency.max(1),
            queues: self.queues.by_priority(),
            strict_priority: self.strict_priority,
            lease: self.lease,
            retry: RetryPolicy {
                unit: self.retry_unit,
                max: self.retry_max,
            },
            shutdown_grace: self.shutdown_grace,
            done_retention: self.done_retention,
        }
    }
}

impl SignupConfig {
    /// ARGON2_MAX_CONCURRENT, or the number of cores.
    pub fn argon2_max_concurrent(&self) -> usize {
        self.argon2_max_concurrent
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

impl Config {
    /// DATABASE_URL, which every command needs; a clear error when it is missing.
    pub fn database_url(&self) -> anyhow::Result<&str> {
        self.db
            .url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL is not set (see .env.example)"))
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 15m, 24h)"))
}

fn parse_queues(s: &str) -> Result<QueueWeights, String> {
    let mut queues = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not name=weight"))?;
        let name = name.trim();
        if name.is_empty() || name.contains(['{', '}', ':']) {
            return Err(format!("'{name}' is not a valid queue name"));
        }
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("weight of '{name}' is not a positive number"))?;
        if weight == 0 {
            return Err(format!("weight of '{name}' must be at least 1"));
        }
        queues.insert(name.to_owned(), weight);
    }
    if queues.is_empty() {
        return Err("no queue given".into());
    }
    Ok(QueueWeights(queues))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_weights_parse_and_order() {
        let q = parse_queues("default=5, critical=10,low=1").unwrap();
        let names = q.names();
        assert_eq!(names, ["critical", "default", "low"]);
        assert!(parse_queues("critical").is_err());
        assert!(parse_queues("critical=0").is_err());
        assert!(parse_queues("{x}=1").is_err());
        assert!(parse_queues("").is_err());
    }
}
