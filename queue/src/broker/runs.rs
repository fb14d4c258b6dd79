//! A run's life in Redis: dequeue, lease extension, and the scripts that
//! settle it (complete, fail, requeue, settle).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use super::{Broker, reply::Reply, scripts::SCRIPTS};
use crate::{
    QueueError, TaskId,
    fence::{Renewal, RunGuard},
    task::{Delivery, Task},
};

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

impl Broker {
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
        // One connection for the script and its WAIT.
        let client = self.waited_client();
        let slot = keys.pending.clone();
        let reply = self
            .run_on(
                client,
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
        let mut tasks = Vec::with_capacity(reply.remaining() / 12);
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
            let trace_context = reply.opt_text("trace")?;
            let first_hand_out = reply.int("first")? == 1;
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
                trace_context,
                first_hand_out,
                guard: Arc::new(RunGuard::new(sent_at + lease).with_renewal(renewal)),
            });
        }
        if tasks.len() > n {
            return Err(reply.unexpected(format!(
                "{} tasks where at most {n} were asked",
                tasks.len()
            )));
        }
        if !tasks.is_empty()
            && let Err(e) = self.wait_for_replicas(client, &slot).await
        {
            self.hand_back_unreplicated(&tasks).await;
            return Err(e);
        }
        Ok(tasks)
    }

    /// Tasks whose dequeue no replica acknowledged are handed back untried:
    /// a failover could promote a replica that never saw their delivery
    /// numbers and hand them out again. The hand-back is not waited for; a
    /// failover that loses it leaves them pending all the same. One that
    /// cannot be handed back waits for its lease to run out.
    async fn hand_back_unreplicated(&self, tasks: &[Task]) {
        for task in tasks {
            if let Err(e) = self.requeue(task).await {
                tracing::warn!(task_id = task.id.get(), error = %e, "could not hand back a task whose dequeue no replica acknowledged; its lease will run out");
            }
        }
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

    /// Extends to `lease` the leases of runs of `queue` this worker holds,
    /// given as (id, delivery). Returns the ids whose lease was lost to
    /// another delivery; with a replica wait, an extension the replicas did
    /// not acknowledge is an error ([`QueueError::NotReplicated`]).
    pub async fn extend(
        &self,
        queue: &str,
        lease: Duration,
        runs: &[(TaskId, Delivery)],
    ) -> Result<Vec<TaskId>, QueueError> {
        let (lost, unreplicated) = self.extend_leases(queue, lease, runs).await?;
        match unreplicated {
            Some(e) => Err(e),
            None => Ok(lost),
        }
    }

    /// [`Broker::extend`], with the runs Redis reported lost even when the
    /// new deadline did not reach the replicas (the second value): those
    /// runs must stop either way, and the others keep their lease as last
    /// acknowledged.
    pub(crate) async fn extend_leases(
        &self,
        queue: &str,
        lease: Duration,
        runs: &[(TaskId, Delivery)],
    ) -> Result<(Vec<TaskId>, Option<QueueError>), QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.extend;
        // One connection for the script and its WAIT: an extension no
        // replica holds is none (a failover would bring back the old
        // deadline, and another worker could be handed the task early).
        let client = self.waited_client();
        let slot = k.active.clone();
        let reply = self
            .run_on(
                client,
                lua,
                vec![k.task_prefix, k.active],
                runs_args(lease, runs),
            )
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let mut lost = Vec::with_capacity(reply.remaining());
        while reply.remaining() > 0 {
            lost.push(TaskId::from(reply.int("lost id")?));
        }
        let unreplicated = self.wait_for_replicas(client, &slot).await.err();
        Ok((lost, unreplicated))
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
