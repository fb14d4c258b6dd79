//! Relay settings.

use std::time::Duration;

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, bad, in_range},
    parse_duration,
};

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
    /// How long outbox rows are kept (the source for --redeliver-since);
    /// they are dropped a partition at a time.
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub outbox_retention: Duration,
    /// No longer used: retention drops whole partitions. Accepted so that
    /// existing settings still start.
    #[arg(long, env = "OUTBOX_CLEANUP_BATCH", default_value_t = 1000)]
    pub outbox_cleanup_batch: u32,
    /// A relay's /readyz (on ADMIN_ADDR) fails once the oldest undispatched
    /// outbox row is older than this: a stuck relay shows to the orchestrator.
    #[arg(id = "relay_ready_max_age", value_name = "RELAY_READY_MAX_AGE", long = "relay-ready-max-age", env = "RELAY_READY_MAX_AGE", default_value = "5m", value_parser = parse_duration)]
    pub ready_max_age: Duration,
    /// Longest a relay's batch transaction may sit idle, or one of its
    /// statements run, before Postgres ends it (set per transaction, so it
    /// works through PgBouncer, with TCP keepalives of the same order): a
    /// relay host that vanished mid-batch without closing its connection
    /// frees its rows within about this. Longer than REDIS_COMMAND_TIMEOUT
    /// plus REDIS_WAIT_TIMEOUT, the Redis step a batch waits for.
    #[arg(id = "relay_session_timeout", value_name = "RELAY_SESSION_TIMEOUT", long = "relay-session-timeout", env = "RELAY_SESSION_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Shortest time between two post-commit pg_notify calls of one process.
    #[arg(id = "relay_notify_coalesce", value_name = "RELAY_NOTIFY_COALESCE", long = "relay-notify-coalesce", env = "RELAY_NOTIFY_COALESCE", default_value = "5ms", value_parser = parse_duration)]
    pub notify_coalesce: Duration,
}

impl RelayConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        let s = Duration::from_secs;
        in_range("RELAY_BATCH_SIZE", self.batch_size, 1, 10_000)?;
        at_least(
            "RELAY_POLL_INTERVAL",
            self.poll_interval,
            Duration::from_millis(10),
        )?;
        at_least(
            "RELAY_MAX_BACKOFF",
            self.max_backoff,
            Duration::from_millis(100),
        )?;
        at_least("OUTBOX_RETENTION", self.outbox_retention, s(60))?;
        at_least("RELAY_READY_MAX_AGE", self.ready_max_age, s(1))?;
        at_least("RELAY_SESSION_TIMEOUT", self.session_timeout, s(1))?;
        // Postgres takes these timeouts in whole milliseconds, as an int.
        if self.session_timeout > s(24 * 3600) {
            return Err(bad("RELAY_SESSION_TIMEOUT", "must be at most 24h"));
        }
        in_range(
            "OUTBOX_CLEANUP_BATCH",
            self.outbox_cleanup_batch,
            1,
            100_000,
        )
    }
}
