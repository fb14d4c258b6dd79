//! The queue broker: the one place that runs a Lua script or names a Redis key.
//!
//! Every state change of a task is one script (in `scripts/`, next to the
//! method here that runs it), touching the keys of one queue only ([`keys`]),
//! so each change is atomic and stays in one Redis Cluster slot. Replies are
//! decoded into types ([`reply`]); a reply of the wrong shape is an error
//! naming its script. The worker, the relay and the operator tools call these
//! methods and nothing below them.
//!
//! Scripts run by hash (EVALSHA) and are loaded again after a Redis restart
//! forgot them. The Redis client re-sends a command whose connection dropped
//! before the reply came; that is right for a script that is the same run
//! twice (enqueue by id, extend, promote, settle) and wrong for dequeue (a
//! second run takes other tasks, and the first ones wait for their lease to
//! run out). The scripts that settle a run (complete, fail, requeue) refuse a
//! run that is no longer active, so a repeat changes nothing; they are sent
//! once all the same (`Replay::Never` in `scripts.rs`), so that their caller learns what the
//! first run did, not what a repeat found: a lost reply is an error, and the
//! caller asks again or lets the lease settle the task.

mod keys;
mod reads;
mod repairs;
mod reply;
mod scripts;

use crate::TaskId;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fred::{
    clients::Pool,
    prelude::*,
    types::{ClusterHash, CustomCommand},
};
use futures::future::join_all;

use self::{reply::Reply, scripts::SCRIPTS};
use super::{
    QueueError,
    fence::{Renewal, RunGuard},
    task::{Delivery, Task, TaskMessage},
};

pub use keys::QueueKeys;
pub use reads::QueueStats;
pub use repairs::Repair;

/// What became of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The run is recorded as completed.
    Completed,
    /// The delivery number moved on: another worker has the task now.
    LeaseLost,
}

/// What became of a failed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// It runs again at `at`.
    Retry {
        /// When the next attempt falls due.
        at: DateTime<Utc>,
    },
    /// Retries used up (or skipped): it stays in the archive with its error.
    Archived,
    /// The delivery number moved on: another worker has the task now.
    LeaseLost,
}

/// What became of a task handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// At the front of the pending list.
    Pending,
    /// The delivery number moved on: another worker has the task now.
    LeaseLost,
}

/// What one promote pass over a queue did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Promoted {
    /// Scheduled, retry and recovered tasks that became pending.
    pub moved: u64,
    /// Tasks whose lease had expired (each counted as a failed attempt).
    pub recovered: u64,
    /// When the earliest scheduled, retry or lease deadline falls due; `None`
    /// when the queue has none.
    pub next_due: Option<Duration>,
    /// The kinds of the recovered tasks that were archived (retries used up),
    /// one entry per task.
    pub expired_archived: Vec<String>,
    /// The kinds of the recovered tasks that will be retried, one entry per task.
    pub expired_retried: Vec<String>,
}

/// How much of a queue's archive is kept (asynq's defaults: 90 days, 10,000
/// tasks). An archived task keeps its payload and error for an operator to
/// retry or read; past these limits it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// An archived task older than this is deleted.
    pub max_age: Duration,
    /// Most archived tasks kept; the oldest beyond it are deleted.
    pub max_size: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(90 * 24 * 3600),
            max_size: 10_000,
        }
    }
}

/// Most archived tasks one trim removes.
const TRIM_BATCH: u32 = 100;

/// Runs queue operations on a Redis pool. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
    prefix: Arc<str>,
    archive: ArchiveLimits,
    /// Replicas an enqueue must reach, and how long to wait for them.
    replica_wait: Option<(u32, Duration)>,
}

impl Broker {
    /// A broker for the queues under `prefix` (REDIS_KEY_PREFIX).
    pub fn new(pool: Pool, prefix: &str) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
            archive: ArchiveLimits::default(),
            replica_wait: None,
        }
    }

    /// Enqueues count as done only once `replicas` replicas hold them
    /// (Redis WAIT, within `timeout`), so that a primary failing over to a
    /// replica loses no task the relay marked dispatched. 0: no wait.
    pub fn with_replica_wait(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_wait = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Keeps archives within `limits` instead of the defaults.
    pub fn with_archive_limits(mut self, limits: ArchiveLimits) -> Self {
        self.archive = limits;
        self
    }

    /// The key layout of `queue`, for tests and tools that look at Redis
    /// directly (say, to simulate Redis losing data).
    pub fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, queue)
    }

    /// The channels the enqueue and state-change scripts publish wake-ups on.
    pub fn wake_channels<'a>(&self, queues: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        queues
            .into_iter()
            .map(|q| self.keys(q).wake_channel)
            .collect()
    }

    /// Enqueues `tasks`, one script call per queue, the calls side by side.
    /// A task whose id is already known is left as it is. Returns how many
    /// were new, or the first queue's error.
    pub async fn enqueue(&self, tasks: &[TaskMessage]) -> Result<usize, QueueError> {
        let mut added = 0;
        for (_, outcome) in self.enqueue_each(tasks).await {
            added += outcome?;
        }
        Ok(added)
    }

    /// [`Broker::enqueue`], with each queue's outcome on its own: the tasks
    /// of a queue that answered are in Redis even if another queue failed.
    pub async fn enqueue_each(
        &self,
        tasks: &[TaskMessage],
    ) -> Vec<(String, Result<usize, QueueError>)> {
        let mut by_queue: HashMap<&str, Vec<&TaskMessage>> = HashMap::new();
        for task in tasks {
            by_queue.entry(task.queue.as_str()).or_default().push(task);
        }
        let calls = by_queue.into_iter().map(|(queue, tasks)| async move {
            (queue.to_owned(), self.enqueue_one(queue, &tasks).await)
        });
        join_all(calls).await
    }

    async fn enqueue_one(&self, queue: &str, tasks: &[&TaskMessage]) -> Result<usize, QueueError> {
        let keys = self.keys(queue);
        let mut args = Vec::with_capacity(1 + tasks.len() * 8);
        args.push(keys.wake_channel.clone());
        for t in tasks {
            args.extend([
                t.id.to_string(),
                t.kind.clone(),
                t.payload.clone(),
                t.max_retry.to_string(),
                t.timeout.as_millis().to_string(),
                t.process_at.timestamp_millis().to_string(),
                t.request_id.clone().unwrap_or_default(),
                t.created_at.timestamp_millis().to_string(),
            ]);
        }
        let lua = &SCRIPTS.enqueue;
        // One connection for the script and its WAIT.
        let client = self.pool.next();
        let slot = fred::types::Key::from(keys.pending.as_str()).cluster_hash();
        let reply = self
            .run_on(
                client,
                lua,
                vec![
                    keys.task_prefix,
                    keys.pending,
                    keys.scheduled,
                    keys.enqueues,
                ],
                args,
            )
            .await?;
        if let Some((replicas, timeout)) = self.replica_wait {
            // Waits for every write this connection made so far, ours among
            // them; sent to the primary of the queue's slot.
            let acked: i64 = client
                .custom(
                    CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false),
                    vec![i64::from(replicas), timeout.as_millis() as i64],
                )
                .await?;
            if acked < i64::from(replicas) {
                return Err(QueueError::NotReplicated {
                    wanted: replicas,
                    got: acked.max(0) as u32,
                    within: timeout,
                });
            }
        }
        let mut reply = Reply::new(lua.name, reply)?;
        let mut added = 0;
        for t in tasks {
            if reply.int("new-task flag")? == 1 {
                added += 1;
                tracing::info!(
                    task_id = t.id.get(),
                    r#type = %t.kind,
                    payload = %t.payload,
                    queue = %t.queue,
                    max_retry = t.max_retry,
                    "enqueued task"
                );
            }
        }
        reply.end()?;
        Ok(added)
    }

    /// Takes up to `n` pending tasks of `queue`, each under a lease of `lease`.
    pub async fn dequeue(
        &self,
        queue: &str,
        n: usize,
        lease: Duration,
    ) -> Result<Vec<Task>, QueueError> {
        let keys = self.keys(queue);
        // The lease counts from when Redis runs the script, later than this.
        let sent_at = Instant::now();
        let lua = &SCRIPTS.dequeue;
        let reply = self
            .run(
                lua,
                vec![
                    keys.task_prefix,
                    keys.pending,
                    keys.active,
                    keys.deliveries,
                    keys.paused,
                ],
                vec![n.to_string(), lease.as_millis().to_string()],
            )
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let mut tasks = Vec::with_capacity(reply.remaining() / 10);
        while reply.remaining() > 0 {
            let id = TaskId::from(reply.int("id")?);
            let kind = reply.text("kind")?;
            let payload = reply.text("payload")?;
            let retried = u32::try_from(reply.count("retried")?)
                .map_err(|_| reply.unexpected("retried is out of range".into()))?;
            let max_retry = u32::try_from(reply.count("max_retry")?)
                .map_err(|_| reply.unexpected("max_retry is out of range".into()))?;
            let timeout = Duration::from_millis(reply.count("timeout_ms")?.max(1));
            let request_id = reply.opt_text("request_id")?;
            let ms = |n: u64| DateTime::from_timestamp_millis(n.try_into().ok()?);
            let created_at = reply.opt_count("created_at")?.and_then(ms);
            let process_at = reply.count("process_at").map(ms)?;
            let delivery = Delivery(reply.count("delivery")?);
            let renewal = Renewal {
                broker: self.clone(),
                queue: queue.to_owned(),
                id,
                delivery,
                lease,
            };
            tasks.push(Task {
                id,
                kind,
                queue: queue.to_owned(),
                payload,
                attempt: retried.saturating_add(1),
                max_retry,
                timeout,
                delivery,
                request_id,
                created_at,
                process_at,
                guard: Arc::new(RunGuard::new(sent_at + lease).with_renewal(renewal)),
            });
        }
        if tasks.len() > n {
            return Err(reply.unexpected(format!(
                "{} tasks where at most {n} were asked",
                tasks.len()
            )));
        }
        Ok(tasks)
    }

    /// Marks runs of `queue` completed, given as (id, delivery); the answers
    /// come in the same order. A completed task's hash is kept, without its
    /// payload, for `retention`, so that enqueuing the id again stays a no-op.
    pub async fn complete(
        &self,
        queue: &str,
        retention: Duration,
        runs: &[(TaskId, Delivery)],
    ) -> Result<Vec<AckOutcome>, QueueError> {
        let keys = self.keys(queue);
        let lua = &SCRIPTS.complete;
        let reply = self
            .run(
                lua,
                vec![keys.task_prefix, keys.active],
                runs_args(retention, runs),
            )
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let outcomes = runs
            .iter()
            .map(|_| match reply.int("completed flag")? {
                1 => Ok(AckOutcome::Completed),
                0 => Ok(AckOutcome::LeaseLost),
                n => Err(reply.unexpected(format!("completed flag {n}"))),
            })
            .collect::<Result<_, _>>()?;
        reply.end()?;
        Ok(outcomes)
    }

    /// Records a failed run of `task`: retried after `delay`, or archived with
    /// `error` once its retries are used up, or at once when `skip_retry`.
    pub async fn fail(
        &self,
        task: &Task,
        error: &str,
        delay: Duration,
        skip_retry: bool,
    ) -> Result<FailOutcome, QueueError> {
        let keys = self.keys(&task.queue);
        let lua = &SCRIPTS.fail;
        let reply = self
            .run(
                lua,
                vec![keys.task(task.id), keys.active, keys.retry, keys.archived],
                vec![
                    task.id.to_string(),
                    task.delivery.to_string(),
                    error.to_owned(),
                    delay.as_millis().to_string(),
                    if skip_retry { "1" } else { "0" }.to_owned(),
                    keys.wake_channel,
                ],
            )
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let outcome = match reply.text("outcome")?.as_str() {
            "retry" => {
                let at = reply.int("retry time")?;
                FailOutcome::Retry {
                    at: DateTime::from_timestamp_millis(at)
                        .ok_or_else(|| reply.unexpected(format!("retry time {at}")))?,
                }
            }
            "archived" => {
                reply.int("archive time")?;
                self.trim_archive_quietly(&task.queue).await;
                FailOutcome::Archived
            }
            "lost" => FailOutcome::LeaseLost,
            other => return Err(reply.unexpected(format!("outcome {other:?}"))),
        };
        reply.end()?;
        Ok(outcome)
    }

    /// Hands a running task back to the front of its pending list (shutdown),
    /// without counting the interrupted run as a retry.
    pub async fn requeue(&self, task: &Task) -> Result<RequeueOutcome, QueueError> {
        let keys = self.keys(&task.queue);
        let lua = &SCRIPTS.requeue;
        let reply = self
            .run(
                lua,
                vec![keys.task(task.id), keys.active, keys.pending],
                vec![
                    task.id.to_string(),
                    task.delivery.to_string(),
                    keys.wake_channel,
                ],
            )
            .await?;
        match reply.as_i64() {
            Some(1) => Ok(RequeueOutcome::Pending),
            Some(0) => Ok(RequeueOutcome::LeaseLost),
            _ => Err(QueueError::Reply {
                script: lua.name,
                detail: format!("{reply:?} where 0 or 1 was expected"),
            }),
        }
    }

    /// Marks `task` completed after its run succeeded but its lease was lost
    /// before the acknowledgement: unless another worker holds it now, it is
    /// taken out of pending, retry or the archive. Returns whether it was.
    pub async fn settle(&self, task: &Task, retention: Duration) -> Result<bool, QueueError> {
        let k = self.keys(&task.queue);
        let lua = &SCRIPTS.settle;
        let reply = self
            .run(
                lua,
                vec![k.task(task.id), k.pending, k.scheduled, k.retry, k.archived],
                vec![task.id.to_string(), retention.as_millis().to_string()],
            )
            .await?;
        match reply.as_i64() {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(QueueError::Reply {
                script: lua.name,
                detail: format!("{reply:?} where 0 or 1 was expected"),
            }),
        }
    }

    /// Moves due scheduled and retry tasks of `queue` to pending and recovers
    /// expired leases, at most `limit` per set.
    pub async fn promote(&self, queue: &str, limit: u32) -> Result<Promoted, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.promote;
        let reply = self
            .run(
                lua,
                vec![
                    k.task_prefix,
                    k.pending,
                    k.scheduled,
                    k.retry,
                    k.active,
                    k.archived,
                    k.deliveries,
                ],
                vec![k.wake_channel, limit.to_string()],
            )
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let promoted = Promoted {
            moved: reply.count("moved")?,
            recovered: reply.count("recovered")?,
            next_due: reply.opt_count("next due")?.map(Duration::from_millis),
            expired_archived: reply.texts("archived kinds")?,
            expired_retried: reply.texts("retried kinds")?,
        };
        reply.end()?;
        // Some of the recovered may have been archived.
        if promoted.recovered > 0 {
            self.trim_archive_quietly(queue).await;
        }
        Ok(promoted)
    }

    /// Extends to `lease` the leases of runs of `queue` this worker holds,
    /// given as (id, delivery). Returns the ids whose lease was lost to
    /// another delivery.
    pub async fn extend(
        &self,
        queue: &str,
        lease: Duration,
        runs: &[(TaskId, Delivery)],
    ) -> Result<Vec<TaskId>, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.extend;
        let reply = self
            .run(lua, vec![k.task_prefix, k.active], runs_args(lease, runs))
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let mut lost = Vec::with_capacity(reply.remaining());
        while reply.remaining() > 0 {
            lost.push(TaskId::from(reply.int("lost id")?));
        }
        Ok(lost)
    }

    /// Deletes archived tasks of `queue` past the archive limits, at most a
    /// batch per call; returns how many.
    pub async fn trim_archive(&self, queue: &str) -> Result<u64, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.trim_archive;
        let reply = self
            .run(
                lua,
                vec![k.task_prefix, k.archived],
                vec![
                    self.archive.max_age.as_millis().to_string(),
                    self.archive.max_size.to_string(),
                    TRIM_BATCH.to_string(),
                ],
            )
            .await?;
        reply
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| QueueError::Reply {
                script: lua.name,
                detail: format!("{reply:?} where a count was expected"),
            })
    }

    /// Trims after archiving; the archive having happened, a failed trim is
    /// only logged (the next archiving trims again).
    async fn trim_archive_quietly(&self, queue: &str) {
        match self.trim_archive(queue).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(queue, removed = n, "archive trimmed to its limits"),
            Err(e) => tracing::warn!(queue, error = %e, "could not trim the archive"),
        }
    }

    /// A round trip to Redis, for readiness checks.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.pool.ping(None).await?;
        Ok(())
    }
}

/// The arguments of the scripts that take a time and a list of runs:
/// the time in ms, then id and delivery per run.
fn runs_args(ms: Duration, runs: &[(TaskId, Delivery)]) -> Vec<String> {
    let mut args = Vec::with_capacity(1 + 2 * runs.len());
    args.push(ms.as_millis().to_string());
    for (id, delivery) in runs {
        args.extend([id.to_string(), delivery.to_string()]);
    }
    args
}
