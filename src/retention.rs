//! Retention: every table the service writes has an end. A loop of its own
//! (in each relay process) deletes, table by table and in small batches,
//! what nothing needs any more:
//!
//! | table                | deleted                                              | setting                  |
//! |----------------------|------------------------------------------------------|--------------------------|
//! | `outbox`             | dispatched rows (in the relay's own cleanup)         | `OUTBOX_RETENTION`       |
//! | `task_ledger`        | completed tasks, once no redelivery can reach them   | `LEDGER_RETENTION`       |
//! | `email_sends`        | send attempts, likewise                              | `SEND_LOG_RETENTION`     |
//! | `verify_email_codes` | codes that expired                                   | `VERIFY_EMAIL_RETENTION` |
//! | `verify_emails`      | rows used, or of a verified user, whose codes expired| `VERIFY_EMAIL_RETENTION` |
//! | `users`              | accounts still unverified (with their rows above)    | `UNVERIFIED_ACCOUNT_TTL` |
//! | `idempotency_keys`   | keys of sign-ups past their time                     | `IDEMPOTENCY_TTL`        |
//! | `verify_email_resend_limits` | mailboxes past their window (at each request) | `VERIFY_EMAIL_RESEND_WINDOW` |
//!
//! Each statement deletes at most `RETENTION_BATCH` rows and skips rows
//! another transaction holds, so pruning never waits on, or holds up, a
//! sign-up, a verification or the relay.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;

/// One kind of row the loop deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Ledger,
    SendLog,
    Codes,
    VerifyEmails,
    UnverifiedAccounts,
    IdempotencyKeys,
}

impl Table {
    /// In this order: codes before the rows they belong to (whose deletion
    /// waits for their codes to expire), accounts last.
    pub const ALL: [Table; 6] = [
        Self::Ledger,
        Self::SendLog,
        Self::Codes,
        Self::VerifyEmails,
        Self::UnverifiedAccounts,
        Self::IdempotencyKeys,
    ];

    /// The metric label and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ledger => "task_ledger",
            Self::SendLog => "email_sends",
            Self::Codes => "verify_email_codes",
            Self::VerifyEmails => "verify_emails",
            Self::UnverifiedAccounts => "users_unverified",
            Self::IdempotencyKeys => "idempotency_keys",
        }
    }
}

/// What one pass deleted, per table.
pub type Pruned = Vec<(Table, u64)>;

#[derive(Clone)]
pub struct Retention {
    pool: PgPool,
    cfg: RetentionConfig,
}

impl Retention {
    pub fn new(pool: PgPool, cfg: RetentionConfig) -> Self {
        Self { pool, cfg }
    }

    /// How long `table` keeps a row; `None`: for ever.
    fn keep(&self, table: Table) -> Option<Duration> {
        let c = &self.cfg;
        match table {
            Table::Ledger => Some(c.ledger_retention),
            Table::SendLog => Some(c.send_log_retention),
            Table::Codes | Table::VerifyEmails => Some(c.verify_email_retention),
            Table::UnverifiedAccounts => {
                Some(c.unverified_account_ttl).filter(|ttl| !ttl.is_zero())
            }
            Table::IdempotencyKeys => Some(c.idempotency_ttl),
        }
    }

    /// One batch of `table`: how many rows it deleted.
    async fn batch(&self, table: Table, keep: Duration) -> Result<u64, sqlx::Error> {
        let (secs, n) = (keep.as_secs_f64(), i64::from(self.cfg.retention_batch));
        let done = match table {
            Table::Ledger => {
                sqlx::query_file!("sql/retention/ledger.sql", secs, n)
                    .execute(&self.pool)
                    .await?
            }
            Table::SendLog => {
                sqlx::query_file!("sql/retention/send_log.sql", secs, n)
                    .execute(&self.pool)
                    .await?
            }
            Table::Codes => {
                sqlx::query_file!("sql/retention/codes.sql", secs, n)
                    .execute(&self.pool)
                    .await?
            }
            Table::VerifyEmails => {
                sqlx::query_file!("sql/retention/verify_emails.sql", secs, n)
                    .execute(&self.pool)
                    .await?
            }
            Table::UnverifiedAccounts => {
                sqlx::query_file!("sql/retention/unverified_accounts.sql", secs, n)
                    .execute(&self.pool)
                    .await?
            }
            Table::IdempotencyKeys => {
                sqlx::query_file!("sql/retention/idempotency_keys.sql", secs, n)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }

    /// Deletes, table by table, everything past its retention, batch after
    /// batch until a batch comes back short or `shutdown`. A table that
    /// fails does not stop the others; the first error is returned after.
    pub async fn prune(&self, shutdown: &CancellationToken) -> Result<Pruned, sqlx::Error> {
        let mut pruned = Vec::new();
        let mut failed = None;
        for table in Table::ALL {
            let Some(keep) = self.keep(table) else {
                continue;
            };
            let mut total = 0;
            while !shutdown.is_cancelled() {
                match self.batch(table, keep).await {
                    Ok(done) => {
                        total += done;
                        crate::metrics::retention_deleted(table.as_str(), done);
                        if done < u64::from(self.cfg.retention_batch) {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(table = table.as_str(), error = %e, "pruning a table failed");
                        failed.get_or_insert(e);
                        break;
                    }
                }
            }
            pruned.push((table, total));
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(pruned),
        }
    }

    /// Runs [`Retention::prune`] every `RETENTION_INTERVAL` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.prune(&shutdown).await {
                Ok(pruned) => {
                    for (table, n) in pruned.into_iter().filter(|(_, n)| *n > 0) {
                        tracing::info!(
                            table = table.as_str(),
                            deleted = n,
                            "deleted rows past their retention"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.retention_interval) => {}
            }
        }
    }
}
