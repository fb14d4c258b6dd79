//! Worker settings, and the queue weights they name.

use std::{collections::BTreeMap, time::Duration};

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, bad, in_range},
    parse_duration,
};
use crate::queue::{BreakerSettings, QueueWeight, RetryPolicy, WorkerSettings};

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
    /// A task archived within this is never deleted to keep to
    /// WORKER_ARCHIVE_MAX_SIZE: an outage that archives more than the cap
    /// keeps every task for an operator to retry, over the cap until then.
    #[arg(id = "worker_archive_protect", value_name = "WORKER_ARCHIVE_PROTECT", long = "worker-archive-protect", env = "WORKER_ARCHIVE_PROTECT", default_value = "7d", value_parser = parse_duration)]
    pub archive_protect: Duration,
    /// Runs in a row that find what their task needs down (the mail provider
    /// refusing the sender) before the worker stops taking that queue's tasks
    /// for a while (1 to 1000; such tasks are handed back without counting an
    /// attempt).
    #[arg(
        id = "worker_breaker_failures",
        value_name = "WORKER_BREAKER_FAILURES",
        long = "worker-breaker-failures",
        env = "WORKER_BREAKER_FAILURES",
        default_value_t = 3
    )]
    pub breaker_failures: u32,
    /// The first such pause; each probe that finds the dependency still down doubles it.
    #[arg(id = "worker_breaker_pause", value_name = "WORKER_BREAKER_PAUSE", long = "worker-breaker-pause", env = "WORKER_BREAKER_PAUSE", default_value = "5s", value_parser = parse_duration)]
    pub breaker_pause: Duration,
    /// The longest pause.
    #[arg(id = "worker_breaker_max_pause", value_name = "WORKER_BREAKER_MAX_PAUSE", long = "worker-breaker-max-pause", env = "WORKER_BREAKER_MAX_PAUSE", default_value = "5m", value_parser = parse_duration)]
    pub breaker_max_pause: Duration,
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
            breaker: BreakerSettings {
                failures: self.breaker_failures,
                first_pause: self.breaker_pause,
                max_pause: self.breaker_max_pause,
            },
        }
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        in_range("WORKER_CONCURRENCY", self.concurrency, 1, 10_000)?;
        if let Some((q, w)) = self.queues.0.iter().find(|(_, w)| **w > 1_000) {
            return Err(bad(
                "WORKER_QUEUES",
                format!("weights must be from 1 to 1000 (queue {q} has {w})"),
            ));
        }
        at_least("WORKER_LEASE", self.lease, Duration::from_secs(1))?;
        // A repeated enqueue of a completed or deleted id (a relay's retry
        // after a lost reply) must find it; the ledger stops what comes later.
        at_least(
            "WORKER_DONE_RETENTION",
            self.done_retention,
            Duration::from_secs(60),
        )?;
        at_least(
            "WORKER_RETRY_UNIT",
            self.retry_unit,
            Duration::from_millis(1),
        )?;
        at_least("WORKER_RETRY_MAX", self.retry_max, self.retry_unit)?;
        at_least(
            "WORKER_ARCHIVE_MAX_AGE",
            self.archive_max_age,
            Duration::from_secs(60),
        )?;
        // 0 would hand a task back uncounted, and take it again, in a loop.
        in_range("WORKER_BREAKER_FAILURES", self.breaker_failures, 1, 1_000)?;
        at_least(
            "WORKER_BREAKER_PAUSE",
            self.breaker_pause,
            Duration::from_millis(100),
        )?;
        at_least(
            "WORKER_BREAKER_MAX_PAUSE",
            self.breaker_max_pause,
            self.breaker_pause,
        )?;
        if self.archive_protect > self.archive_max_age {
            return Err(bad(
                "WORKER_ARCHIVE_PROTECT",
                format!(
                    "must be at most WORKER_ARCHIVE_MAX_AGE ({})",
                    humantime::format_duration(self.archive_max_age)
                ),
            ));
        }
        Ok(())
    }
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
