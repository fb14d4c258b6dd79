//! Settings checked at start, after parsing: the ranges a type cannot say,
//! the settings that must agree, and the URLs (checked here rather than by
//! the parser, which would echo a bad value, password and all). Each refusal
//! is one line naming the variable and what it accepts; `main` prints it and
//! exits with code 2.

use std::time::Duration;

use super::Config;

/// A setting refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var} {problem}")]
pub struct InvalidSetting {
    pub var: &'static str,
    pub problem: String,
}

/// What the starting process runs: what its settings must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API, relay and worker.
    Serve,
    Relay,
    Worker,
    /// One-shot commands (migrate, queues, relay --once).
    Tool,
}

/// Time after an effect for its ledger record; see `tasks::LEDGER_ALLOWANCE`.
const LEDGER_ALLOWANCE: Duration = crate::tasks::LEDGER_ALLOWANCE;

fn bad(var: &'static str, problem: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        var,
        problem: problem.into(),
    }
}

fn at_least(var: &'static str, value: Duration, min: Duration) -> Result<(), InvalidSetting> {
    if value < min {
        return Err(bad(
            var,
            format!(
                "must be at least {} (is {})",
                humantime::format_duration(min),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    var: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), InvalidSetting> {
    if value < min || value > max {
        return Err(bad(
            var,
            format!("must be from {min} to {max} (is {value})"),
        ));
    }
    Ok(())
}

/// `url` with any password replaced, for messages: the user's, and query
/// parameters that carry one (Sentinel's `sentinelPassword`).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let secret = |k: &str| k.to_ascii_lowercase().contains("password");
            if u.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Unparsable: show its scheme at most.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://..."),
            None => "(not a URL)".to_owned(),
        },
    }
}

fn postgres_url(var: &'static str, url: &str) -> Result<(), InvalidSetting> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad(
            var,
            format!("must be a postgres:// URL (is {})", redact(url)),
        ));
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map(|_| ())
        .map_err(|_| {
            bad(
                var,
                format!("is not a valid Postgres URL ({})", redact(url)),
            )
        })
}

/// The URL schemes REDIS_URL may have: one server, a cluster, Sentinel;
/// each plain or TLS.
const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
    "rediss-sentinel://",
];

fn redis_url(var: &'static str, url: &str) -> Result<(), InvalidSetting> {
    if !REDIS_SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(bad(
            var,
            format!(
                "must be a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL (is {})",
                redact(url)
            ),
        ));
    }
    fred::types::config::Config::from_url(url)
        .map(|_| ())
        .map_err(|_| bad(var, format!("is not a valid Redis URL ({})", redact(url))))
}

impl Config {
    /// Checks the settings a process of `role` uses. Returns warnings to log
    /// (settings that are allowed but probably wrong), or the first refusal.
    pub fn validate(&self, role: Role) -> Result<Vec<String>, InvalidSetting> {
        let mut warnings = Vec::new();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;

        if let Some(url) = &self.db.url {
            postgres_url("DATABASE_URL", url)?;
        }
        if let Some(url) = &self.db.listen_url {
            postgres_url("DATABASE_LISTEN_URL", url)?;
        }
        in_range(
            "DATABASE_MAX_CONNECTIONS",
            self.db.max_connections,
            1,
            10_000,
        )?;
        at_least("DATABASE_ACQUIRE_TIMEOUT", self.db.acquire_timeout, ms(10))?;

        redis_url("REDIS_URL", &self.redis.url)?;
        in_range("REDIS_POOL_SIZE", self.redis.pool_size, 1, 256)?;
        at_least("REDIS_CONNECT_TIMEOUT", self.redis.connect_timeout, ms(10))?;
        at_least("REDIS_COMMAND_TIMEOUT", self.redis.command_timeout, ms(10))?;
        in_range("REDIS_WAIT_REPLICAS", self.redis.wait_replicas, 0, 16)?;
        at_least("REDIS_WAIT_TIMEOUT", self.redis.wait_timeout, ms(10))?;
        if self.redis.wait_replicas > 0 && self.redis.wait_timeout >= self.redis.command_timeout {
            return Err(bad(
                "REDIS_WAIT_TIMEOUT",
                format!(
                    "must be shorter than REDIS_COMMAND_TIMEOUT ({}), or every WAIT times out before Redis answers it",
                    humantime::format_duration(self.redis.command_timeout)
                ),
            ));
        }
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(bad(
                "REDIS_KEY_PREFIX",
                "must be non-empty and without { or } (they are Redis Cluster hash tags)",
            ));
        }

        in_range("HTTP_BODY_LIMIT", self.http.body_limit, 1024, 64 << 20)?;
        in_range("HTTP_MAX_IN_FLIGHT", self.http.max_in_flight, 1, 100_000)?;
        at_least("HTTP_REQUEST_TIMEOUT", self.http.request_timeout, ms(100))?;
        at_least("HTTP_HEADER_TIMEOUT", self.http.header_timeout, ms(100))?;
        in_range(
            "HTTP_MAX_CONNECTIONS",
            self.http.max_connections,
            1,
            1_000_000,
        )?;
        if self.http.rate_limit > 0 {
            in_range("HTTP_RATE_BURST", self.http.rate_burst, 1, 1_000_000)?;
        }

        let signup = &self.signup;
        argon2::Params::new(
            signup.argon2_memory_kib,
            signup.argon2_iterations,
            signup.argon2_parallelism,
            None,
        )
        .map_err(|e| {
            bad(
                "ARGON2_MEMORY_KIB",
                format!("and its siblings are not valid argon2 parameters: {e}"),
            )
        })?;
        if let Some(n) = signup.argon2_max_concurrent {
            in_range("ARGON2_MAX_CONCURRENT", n, 1, 1024)?;
        }
        at_least("ARGON2_QUEUE_WAIT", signup.argon2_queue_wait, ms(1))?;
        in_range(
            "VERIFY_EMAIL_MAX_RETRY",
            signup.verify_email_max_retry,
            0,
            100,
        )?;
        at_least("VERIFY_EMAIL_TIMEOUT", signup.verify_email_timeout, ms(100))?;
        at_least("VERIFY_EMAIL_LINK_TTL", signup.verify_email_link_ttl, s(60))?;
        at_least(
            "VERIFY_EMAIL_RESEND_INTERVAL",
            signup.verify_email_resend_interval,
            s(1),
        )?;

        let relay = &self.relay;
        in_range("RELAY_BATCH_SIZE", relay.batch_size, 1, 10_000)?;
        at_least("RELAY_POLL_INTERVAL", relay.poll_interval, ms(10))?;
        at_least("RELAY_MAX_BACKOFF", relay.max_backoff, ms(100))?;
        at_least("OUTBOX_RETENTION", relay.outbox_retention, s(60))?;
        at_least("RELAY_READY_MAX_AGE", relay.ready_max_age, s(1))?;
        in_range(
            "OUTBOX_CLEANUP_BATCH",
            relay.outbox_cleanup_batch,
            1,
            100_000,
        )?;

        let worker = &self.worker;
        in_range("WORKER_CONCURRENCY", worker.concurrency, 1, 10_000)?;
        if let Some((q, w)) = worker.queues.0.iter().find(|(_, w)| **w > 1_000) {
            return Err(bad(
                "WORKER_QUEUES",
                format!("weights must be from 1 to 1000 (queue {q} has {w})"),
            ));
        }
        at_least("WORKER_LEASE", worker.lease, s(1))?;
        at_least("WORKER_RETRY_UNIT", worker.retry_unit, ms(1))?;
        at_least("WORKER_RETRY_MAX", worker.retry_max, worker.retry_unit)?;
        at_least("WORKER_ARCHIVE_MAX_AGE", worker.archive_max_age, s(60))?;

        at_least("ADMIN_REFRESH", self.http.admin_refresh, s(1))?;
        // A token an attacker could guess opens every repair to them.
        if let Some(token) = &self.http.admin_token
            && token.chars().count() < 16
        {
            return Err(bad(
                "ADMIN_TOKEN",
                "must be at least 16 characters (or unset, which closes the dashboard)",
            ));
        }

        let mail = &self.mail;
        if let Some(url) = &mail.smtp_url
            && lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).is_err()
        {
            return Err(bad(
                "SMTP_URL",
                format!("is not a valid smtp:// or smtps:// URL ({})", redact(url)),
            ));
        }
        at_least("SMTP_TIMEOUT", mail.smtp_timeout, ms(100))?;

        if matches!(role, Role::Serve | Role::Worker) {
            let served = worker.queues.0.contains_key(&signup.verify_email_queue);
            if !served {
                let problem = format!(
                    "is {:?}, a queue WORKER_QUEUES does not name: its tasks would never run",
                    signup.verify_email_queue
                );
                match role {
                    Role::Serve => return Err(bad("VERIFY_EMAIL_QUEUE", problem)),
                    _ => warnings.push(format!(
                        "VERIFY_EMAIL_QUEUE {problem} here (fine if other workers serve it)"
                    )),
                }
            }
            let effect = crate::mail::send_limit(mail) + LEDGER_ALLOWANCE;
            // The verify-email task's timeout (stored with each task at
            // sign-up) must leave room for the send, or every attempt would
            // stop at its fence and the task end in the archive.
            let room = at_least(
                "VERIFY_EMAIL_TIMEOUT",
                signup.verify_email_timeout,
                effect + s(1),
            );
            match (role, room) {
                (Role::Serve, room) => room?,
                // A worker runs tasks other processes stored: say so.
                (_, Err(e)) => warnings.push(format!(
                    "{} {} (tasks stored with it would time out before their send)",
                    e.var, e.problem
                )),
                _ => {}
            }
            at_least("WORKER_SHUTDOWN_GRACE", worker.shutdown_grace, effect).map_err(|e| {
                bad(
                    e.var,
                    format!(
                        "{} (SMTP_TIMEOUT plus 2 s, so a shutdown never cuts a send short)",
                        e.problem
                    ),
                )
            })?;
            at_least("WORKER_LEASE", worker.lease, effect * 2).map_err(|e| {
                bad(
                    e.var,
                    format!("{} (twice SMTP_TIMEOUT plus 2 s, so a run finds enough lease left to send)", e.problem),
                )
            })?;
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert!(!redact("redis://:hunter2@[::1").contains("hunter2"));
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        let sentinel = redact(
            "redis-sentinel://u:pw1@10.0.0.1:26379?sentinelServiceName=m&sentinelPassword=pw2&node=10.0.0.2:26379",
        );
        assert!(
            !sentinel.contains("pw1") && !sentinel.contains("pw2"),
            "{sentinel}"
        );
        assert!(sentinel.contains("node=10.0.0.2"), "{sentinel}");
    }
}
