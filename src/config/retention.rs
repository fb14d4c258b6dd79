//! Retention settings: how long each table keeps what it no longer needs.

use std::time::Duration;

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, in_range},
    parse_duration,
};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionConfig {
    /// How long a completed task's ledger row is kept. It keeps a redelivered
    /// task from running again, so at least OUTBOX_RETENTION (how far
    /// `relay --once --redeliver-since` reaches back) plus an hour.
    #[arg(long, env = "LEDGER_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub ledger_retention: Duration,
    /// How long a send attempt's row (`email_sends`, shown by `tasks show`) is
    /// kept. It keeps a send whose outcome is unknown, or that went out, from
    /// being repeated, so at least OUTBOX_RETENTION and
    /// SMTP_OUTCOME_UNKNOWN_DELAY, each plus an hour.
    #[arg(long, env = "SEND_LOG_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub send_log_retention: Duration,
    /// A verification code is deleted this long after it expired, and a
    /// verification row (used, or its user verified) this long after its last
    /// code did; until then a click on an old link is told "expired" or "used".
    #[arg(long, env = "VERIFY_EMAIL_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub verify_email_retention: Duration,
    /// An account whose address is still unverified this long after sign-up
    /// is deleted, with its verification rows: its username and address are
    /// free again. 0 keeps such accounts.
    #[arg(long, env = "UNVERIFIED_ACCOUNT_TTL", default_value = "7d", value_parser = parse_duration)]
    pub unverified_account_ttl: Duration,
    /// How long an Idempotency-Key on POST /v1/create_user answers its
    /// retries with the first answer; then it is deleted.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
    /// How often the pruning runs (in every relay process).
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub retention_interval: Duration,
    /// Rows deleted per statement: small, so no delete holds locks or WAL long.
    #[arg(long, env = "RETENTION_BATCH", default_value_t = 1000)]
    pub retention_batch: u32,
}

/// What every retention keeps beyond the horizon it must cover.
pub const MARGIN: Duration = Duration::from_secs(3600);

impl RetentionConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        let s = Duration::from_secs;
        at_least(
            "VERIFY_EMAIL_RETENTION",
            self.verify_email_retention,
            s(3600),
        )?;
        at_least("RETENTION_INTERVAL", self.retention_interval, s(1))?;
        at_least("IDEMPOTENCY_TTL", self.idempotency_ttl, s(60))?;
        in_range("RETENTION_BATCH", self.retention_batch, 1, 100_000)
    }
}
