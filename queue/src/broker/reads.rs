//! Reading queue state, for the operator tools and the tests: counts per
//! state, one task, the tasks of a queue in one state. Plain commands, no
//! scripts: a read changes nothing, so a snapshot that is a moment old is
//! fine.

use crate::TaskId;
use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use fred::{cmd, prelude::*};

use super::Broker;
use crate::{
    QueueError,
    task::{TaskInfo, TaskState},
};

/// How many tasks of a queue are in each state (completed tasks are not
/// counted: they are only remembered, one key each, until their retention
/// ends), how long the oldest pending task has waited, and whether the queue
/// is paused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Tasks ready to run, waiting for a worker.
    pub pending: u64,
    /// Tasks being run under a lease.
    pub active: u64,
    /// Tasks waiting for their process_at.
    pub scheduled: u64,
    /// Failed tasks waiting for their next attempt.
    pub retry: u64,
    /// Tasks that will not run again (retries used up or skipped).
    pub archived: u64,
    /// The age of the oldest pending task (Redis's clock); `None` when none
    /// is pending.
    #[serde(rename = "latency_seconds", serialize_with = "as_seconds")]
    pub latency: Option<Duration>,
    /// Whether workers are kept from dequeuing from the queue.
    pub paused: bool,
    /// Whether a worker's breaker holds the queue back: its tasks kept
    /// finding what they need down (see [`crate::BreakerSettings`]).
    pub held_back: bool,
}

impl QueueStats {
    /// The count of `state`; `None` for completed and deleted tasks, which
    /// are not counted.
    pub fn count(&self, state: TaskState) -> Option<u64> {
        match state {
            TaskState::Pending => Some(self.pending),
            TaskState::Active => Some(self.active),
            TaskState::Scheduled => Some(self.scheduled),
            TaskState::Retry => Some(self.retry),
            TaskState::Archived => Some(self.archived),
            TaskState::Completed | TaskState::Deleted => None,
        }
    }
}

impl Broker {
    /// Task counts of `queue` by state, its latency and pause, in two round
    /// trips (the second reads when the oldest pending task became pending).
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let k = self.keys(queue);
        let client = self.pool.next();
        let pipe = client.pipeline();
        let _: () = pipe.llen(&k.pending).await?;
        let _: () = pipe.zcard(&k.active).await?;
        let _: () = pipe.zcard(&k.scheduled).await?;
        let _: () = pipe.zcard(&k.retry).await?;
        let _: () = pipe.zcard(&k.archived).await?;
        let _: () = pipe.exists(&k.paused).await?;
        let _: () = pipe.exists(&k.breaker).await?;
        // The oldest pending id is at the right end (ids are pushed left).
        let _: () = pipe.lindex(&k.pending, -1).await?;
        let (pending, active, scheduled, retry, archived, paused, held_back, oldest): (
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            Option<TaskId>,
        ) = pipe.all().await?;
        let latency = match oldest {
            Some(id) => {
                let pipe = client.pipeline();
                let _: () = pipe
                    .hmget(k.task(id), vec!["pending_since", "enqueued_at"])
                    .await?;
                let _: () = pipe.custom(cmd!("TIME"), Vec::<String>::new()).await?;
                let (since, now): (Vec<Option<i64>>, (i64, i64)) = pipe.all().await?;
                let now_ms = now.0 * 1000 + now.1 / 1000;
                // A task enqueued before pending_since was kept has its
                // enqueue time; one taken meanwhile, neither (no latency).
                since
                    .into_iter()
                    .flatten()
                    .next()
                    .map(|ms| Duration::from_millis(now_ms.saturating_sub(ms).max(0) as u64))
            }
            None => None,
        };
        Ok(QueueStats {
            pending,
            active,
            scheduled,
            retry,
            archived,
            latency,
            paused: paused > 0,
            held_back: held_back > 0,
        })
    }

    /// One task, or `None` when Redis does not know the id (never enqueued, or
    /// completed longer ago than the retention).
    pub async fn task(
        &self,
        queue: &str,
        id: impl Into<TaskId>,
    ) -> Result<Option<TaskInfo>, QueueError> {
        let id = id.into();
        let fields: HashMap<String, String> = self.pool.hgetall(self.keys(queue).task(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        task_info(queue, id, fields).map(Some)
    }

    /// Up to `limit` tasks of `queue` in `state`, skipping `offset`, in the
    /// order of their index: pending next to run first; scheduled and retry
    /// by due time; archived oldest first; active by lease deadline.
    /// Completed tasks have no index and cannot be listed.
    pub async fn list(
        &self,
        queue: &str,
        state: TaskState,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<TaskInfo>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let k = self.keys(queue);
        // Redis indexes are i64; beyond that there is nothing to list anyway.
        let start = i64::try_from(offset).unwrap_or(i64::MAX);
        let stop = start.saturating_add(i64::try_from(limit - 1).unwrap_or(i64::MAX));
        let ids: Vec<TaskId> = match state {
            // New ids are pushed on the left and taken from the right.
            TaskState::Pending => self.pool.lrange(&k.pending, -1 - stop, -1 - start).await?,
            TaskState::Active | TaskState::Scheduled | TaskState::Retry | TaskState::Archived => {
                let set = match state {
                    TaskState::Active => &k.active,
                    TaskState::Scheduled => &k.scheduled,
                    TaskState::Retry => &k.retry,
                    _ => &k.archived,
                };
                self.pool
                    .zrange(set, start, stop, None, false, None, false)
                    .await?
            }
            TaskState::Completed | TaskState::Deleted => {
                return Err(QueueError::NotListable(state));
            }
        };
        let ids: Vec<TaskId> = match state {
            TaskState::Pending => ids.into_iter().rev().collect(),
            _ => ids,
        };
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.pool.next().pipeline();
        for id in &ids {
            let _: () = pipe.hgetall(k.task(*id)).await?;
        }
        let hashes: Vec<HashMap<String, String>> = pipe.all().await?;
        ids.into_iter()
            .zip(hashes)
            // A task deleted between the two reads is left out.
            .filter(|(_, f)| !f.is_empty())
            .map(|(id, fields)| task_info(queue, id, fields))
            .collect()
    }
}

/// A task hash decoded; a field of the wrong form is an error, not a default.
fn task_info(
    queue: &str,
    id: TaskId,
    mut fields: HashMap<String, String>,
) -> Result<TaskInfo, QueueError> {
    let bad = |detail: String| QueueError::Reply {
        script: "HGETALL task",
        detail: format!("task {id}: {detail}"),
    };
    let mut take = |f: &str| fields.remove(f);
    let num = |f: &str, v: Option<String>| -> Result<u32, QueueError> {
        v.ok_or_else(|| bad(format!("no {f}")))?
            .parse()
            .map_err(|_| bad(format!("{f} is not a count")))
    };
    let time = |f: &str, v: Option<String>| -> Result<Option<DateTime<Utc>>, QueueError> {
        v.map(|v| {
            v.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
                .ok_or_else(|| bad(format!("{f} {v:?} is not a time in ms")))
        })
        .transpose()
    };
    let state = take("state").ok_or_else(|| bad("no state".into()))?;
    Ok(TaskInfo {
        id,
        queue: queue.to_owned(),
        state: state.parse().map_err(bad)?,
        kind: take("kind").ok_or_else(|| bad("no kind".into()))?,
        payload: take("payload"),
        retried: num("retried", take("retried"))?,
        max_retry: num("max_retry", take("max_retry"))?,
        last_error: take("last_error"),
        last_failed_at: time("last_failed_at", take("last_failed_at"))?,
        enqueued_at: time("enqueued_at", take("enqueued_at"))?,
        created_at: time("created_at", take("created_at"))?,
        request_id: take("request_id").filter(|id| !id.is_empty()),
    })
}

/// A duration as fractional seconds, for JSON.
fn as_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&d.map(|d| d.as_secs_f64()), s)
}
