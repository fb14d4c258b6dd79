//! Configuration: every setting is a flag that also reads its environment
//! variable (and `.env`, loaded by `main` before parsing). `.env.example` lists
//! them all with their defaults. Values are checked when parsed (their type),
//! then each group checks its own ranges and URLs beside its fields, and
//! [`Config::validate`] checks what must agree across groups, so a bad one
//! stops start-up with one line naming it. URL settings never show their
//! values in `--help`.

mod admin;
pub mod check;
mod db;
mod http;
mod log;
mod mail;
mod redis;
mod relay;
pub mod retention;
pub mod scoped;
mod signup;
mod traces;
mod worker;

use std::time::Duration;

use clap::Args;

pub use self::{
    admin::AdminConfig,
    check::InvalidSetting,
    db::DbConfig,
    http::HttpConfig,
    log::{LogConfig, LogFormat},
    mail::MailConfig,
    redis::RedisConfig,
    relay::RelayConfig,
    retention::RetentionConfig,
    signup::{ResendLimits, SignupConfig},
    traces::{OtlpProtocol, SamplerChoice, TracingConfig},
    worker::{QueueWeights, WorkerConfig},
};
use crate::{app::Components, tasks};

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
    pub tracing: TracingConfig,
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
    #[command(flatten)]
    pub retention: RetentionConfig,
}

impl Config {
    /// DATABASE_URL, which every command needs; a clear error when it is missing.
    pub fn database_url(&self) -> anyhow::Result<&str> {
        self.db
            .url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL is not set (see .env.example)"))
    }

    /// Checks the settings of a process that runs `components`: each group's
    /// own, then those that must agree. Returns warnings to log (settings that
    /// are allowed but probably wrong), or the first refusal.
    pub fn validate(&self, components: Components) -> Result<Vec<String>, InvalidSetting> {
        self.db.validate()?;
        self.redis.validate()?;
        self.http.validate()?;
        self.signup.validate()?;
        self.relay.validate()?;
        self.worker.validate()?;
        self.mail.validate()?;
        self.retention.validate()?;
        self.tracing.validate()?;
        // `relay --once` is a tool that relays; other tools keep the
        // relay's defaults, which pass.
        if components.relay || components.is_tool() {
            self.relay_agrees()?;
        }
        // Where the pruning runs.
        if components.relay {
            self.retention_agrees()?;
        }
        match components.worker {
            true => self.worker_agrees(components.api),
            false => Ok(Vec::new()),
        }
    }

    /// What each retention must cover: the ledger and the send log keep a
    /// task from running or sending again for as long as a redelivery can
    /// reach it (OUTBOX_RETENTION), and the send log an unknown outcome for
    /// its delay; an unverified account outlives both, so an old task never
    /// finds a new account under its username.
    fn retention_agrees(&self) -> Result<(), InvalidSetting> {
        let (r, margin) = (&self.retention, retention::MARGIN);
        let redelivery = self.relay.outbox_retention + margin;
        let why = "OUTBOX_RETENTION plus 1h: a redelivery reaches back that far";
        check::at_least("LEDGER_RETENTION", r.ledger_retention, redelivery)
            .map_err(|e| e.because(why))?;
        check::at_least("SEND_LOG_RETENTION", r.send_log_retention, redelivery)
            .map_err(|e| e.because(why))?;
        check::at_least(
            "SEND_LOG_RETENTION",
            r.send_log_retention,
            self.mail.smtp_outcome_unknown_delay + margin,
        )
        .map_err(|e| e.because("SMTP_OUTCOME_UNKNOWN_DELAY plus 1h"))?;
        if !r.unverified_account_ttl.is_zero() {
            check::at_least(
                "UNVERIFIED_ACCOUNT_TTL",
                r.unverified_account_ttl,
                redelivery,
            )
            .map_err(|e| e.because(why))?;
            // A sign-up's key must end before its account can: a key that
            // outlived it could meet a new account under the same name.
            check::at_least(
                "UNVERIFIED_ACCOUNT_TTL",
                r.unverified_account_ttl,
                r.idempotency_ttl + margin,
            )
            .map_err(|e| e.because("IDEMPOTENCY_TTL plus 1h"))?;
        }
        Ok(())
    }

    /// What the relay's session timeout must agree on with Redis: a batch's
    /// transaction idles while Redis answers its enqueue (and the replicas
    /// its WAIT).
    fn relay_agrees(&self) -> Result<(), InvalidSetting> {
        let redis_step = match self.redis.wait_replicas {
            0 => self.redis.command_timeout,
            _ => self.redis.command_timeout + self.redis.wait_timeout,
        };
        if self.relay.session_timeout <= redis_step {
            return Err(check::bad(
                "RELAY_SESSION_TIMEOUT",
                format!(
                    "must be longer than REDIS_COMMAND_TIMEOUT (plus REDIS_WAIT_TIMEOUT with REDIS_WAIT_REPLICAS): {}, or a slow Redis reply ends the batch",
                    humantime::format_duration(redis_step)
                ),
            ));
        }
        Ok(())
    }

    /// What a worker's settings must agree on with the verify-email tasks
    /// (which sign-ups store with their queue and timeout). A process that
    /// also stores them (`stores_tasks`, the API) is refused a mismatch; a
    /// worker alone runs tasks other processes stored, and is warned.
    fn worker_agrees(&self, stores_tasks: bool) -> Result<Vec<String>, InvalidSetting> {
        let (signup, worker) = (&self.signup, &self.worker);
        let mut warnings = Vec::new();
        let mut refuse_or_warn = |e: InvalidSetting, why: &str| match stores_tasks {
            true => Err(e),
            false => {
                warnings.push(format!("{e} {why}"));
                Ok(())
            }
        };
        if !worker.queues.0.contains_key(&signup.verify_email_queue) {
            let e = check::bad(
                "VERIFY_EMAIL_QUEUE",
                format!(
                    "is {:?}, a queue WORKER_QUEUES does not name: its tasks would never run",
                    signup.verify_email_queue
                ),
            );
            refuse_or_warn(e, "here (fine if other workers serve it)")?;
        }
        let effect = tasks::effect_budget(&self.mail);
        // The task's timeout must leave room for the send, or every attempt
        // would stop at its fence and the task end in the archive.
        let room = Duration::from_secs(1);
        if let Err(e) = check::at_least(
            "VERIFY_EMAIL_TIMEOUT",
            signup.verify_email_timeout,
            effect + room,
        ) {
            refuse_or_warn(e, "(tasks stored with it would time out before their send)")?;
        }
        check::at_least("WORKER_SHUTDOWN_GRACE", worker.shutdown_grace, effect).map_err(|e| {
            e.because("SMTP_TIMEOUT plus 2 s, so a shutdown never cuts a send short")
        })?;
        check::at_least("WORKER_LEASE", worker.lease, effect * 2).map_err(|e| {
            e.because("twice SMTP_TIMEOUT plus 2 s, so a run finds enough lease left to send")
        })?;
        Ok(warnings)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 15m, 24h)"))
}
