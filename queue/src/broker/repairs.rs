//! An operator's repairs: pause and resume a queue, run a task now (an
//! archived one gets its retries back), delete a task. Each change logs one
//! audit line naming who asked (`actor`: the CLI's user, or the dashboard
//! and the client's address), whatever tool made it.

use crate::TaskId;
use std::time::Duration;

use fred::prelude::*;

use super::{Broker, scripts::SCRIPTS};
use crate::{QueueError, task::TaskState};

/// What a repair of one task found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Repair {
    /// Done; the task was in this state.
    Done {
        /// The state the task was in before the repair.
        was: TaskState,
    },
    /// Left alone: the task is in a state the repair does not apply to.
    NotApplicable {
        /// The state the task is in, which the repair left alone.
        state: TaskState,
    },
    /// No such task in this queue.
    Missing,
}

impl Broker {
    /// Pauses `queue`: workers dequeue nothing from it until it is resumed.
    /// Tasks running meanwhile finish. Returns whether it was running.
    pub async fn pause(&self, queue: &str, actor: &str) -> Result<bool, QueueError> {
        let k = self.keys(queue);
        let now = chrono::Utc::now().timestamp_millis().to_string();
        let set: Option<String> = self
            .pool
            .set(&k.paused, now, None, Some(SetOptions::NX), false)
            .await?;
        let changed = set.is_some();
        audit(
            actor,
            "pause",
            queue,
            None,
            if changed { "paused" } else { "already paused" },
        );
        Ok(changed)
    }

    /// Notes that a worker's breaker holds `queue` back for `pause` (`None`:
    /// no longer), for the dashboard; the note outlives the pause briefly,
    /// while the probe runs.
    pub async fn note_breaker(
        &self,
        queue: &str,
        pause: Option<Duration>,
    ) -> Result<(), QueueError> {
        let k = self.keys(queue);
        match pause {
            Some(pause) => {
                let px = (pause + Duration::from_secs(10)).as_millis() as i64;
                let _: () = self
                    .pool
                    .set(&k.breaker, 1, Some(Expiration::PX(px)), None, false)
                    .await?;
            }
            None => {
                let _: u64 = self.pool.del(&k.breaker).await?;
            }
        }
        Ok(())
    }

    /// Resumes `queue` and wakes its workers. Returns whether it was paused.
    pub async fn resume(&self, queue: &str, actor: &str) -> Result<bool, QueueError> {
        let k = self.keys(queue);
        let removed: u64 = self.pool.del(&k.paused).await?;
        let _: u64 = self.pool.next().publish(&k.wake_channel, 1).await?;
        let changed = removed > 0;
        audit(
            actor,
            "resume",
            queue,
            None,
            if changed { "resumed" } else { "was not paused" },
        );
        Ok(changed)
    }

    /// Makes task `id` of `queue` pending now, when it is scheduled, waiting
    /// to retry, or archived (which gives it its retries back).
    pub async fn run_now(
        &self,
        queue: &str,
        id: TaskId,
        actor: &str,
    ) -> Result<Repair, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.run_now;
        let reply = self
            .run(
                lua,
                vec![k.task(id), k.pending, k.scheduled, k.retry, k.archived],
                vec![id.to_string(), k.wake_channel],
            )
            .await?;
        let repair = repair_of(lua.name, reply, |state| {
            matches!(
                state,
                TaskState::Scheduled | TaskState::Retry | TaskState::Archived
            )
        })?;
        audit(actor, "retry", queue, Some(id), &outcome_text(repair));
        Ok(repair)
    }

    /// Deletes task `id` of `queue`, unless it is running or completed. A
    /// tombstone is kept for `retention` (WORKER_DONE_RETENTION), so an
    /// enqueue of the id meanwhile does not bring it back.
    pub async fn delete(
        &self,
        queue: &str,
        id: TaskId,
        retention: Duration,
        actor: &str,
    ) -> Result<Repair, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.delete;
        let reply = self
            .run(
                lua,
                vec![k.task(id), k.pending, k.scheduled, k.retry, k.archived],
                vec![id.to_string(), retention.as_millis().to_string()],
            )
            .await?;
        let repair = repair_of(lua.name, reply, |state| {
            !matches!(
                state,
                TaskState::Active | TaskState::Completed | TaskState::Deleted
            )
        })?;
        audit(actor, "delete", queue, Some(id), &outcome_text(repair));
        Ok(repair)
    }

    /// The ids of `queue`'s archived tasks, oldest first, at most `limit`.
    pub async fn archived_ids(&self, queue: &str, limit: u64) -> Result<Vec<TaskId>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = i64::try_from(limit - 1).unwrap_or(i64::MAX);
        let ids: Vec<TaskId> = self
            .pool
            .zrange(
                &self.keys(queue).archived,
                0,
                stop,
                None,
                false,
                None,
                false,
            )
            .await?;
        Ok(ids)
    }
}

/// A repair script's reply: the state the task was in, or "missing".
/// `applies` says which states the script changed.
fn repair_of(
    script: &'static str,
    reply: fred::types::Value,
    applies: impl Fn(TaskState) -> bool,
) -> Result<Repair, QueueError> {
    let bad = |detail: String| QueueError::Reply { script, detail };
    let text = reply
        .as_string()
        .ok_or_else(|| bad(format!("{reply:?} where a state was expected")))?;
    if text == "missing" {
        return Ok(Repair::Missing);
    }
    let state: TaskState = text.parse().map_err(bad)?;
    Ok(match applies(state) {
        true => Repair::Done { was: state },
        false => Repair::NotApplicable { state },
    })
}

fn outcome_text(repair: Repair) -> String {
    match repair {
        Repair::Done { was } => format!("done (was {was})"),
        Repair::NotApplicable { state } => format!("left alone: the task is {state}"),
        Repair::Missing => "left alone: no such task".to_owned(),
    }
}

/// The one line a change leaves, under the target `audit` (so a log
/// pipeline can route it apart).
fn audit(actor: &str, action: &str, queue: &str, task_id: Option<TaskId>, outcome: &str) {
    tracing::info!(target: "audit", actor, action, queue, task_id = task_id.map(TaskId::get), outcome, "audit");
}
