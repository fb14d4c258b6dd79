//! The producer side: enqueue batches of tasks, and look at queues and tasks.

use std::{collections::HashMap, sync::Arc};

use fred::{clients::Pool, prelude::*};
use futures::future::try_join_all;

use super::{QueueError, keys::QueueKeys, scripts, scripts::Scripts, task::TaskMessage};

/// Enqueues tasks and reads queue state. Cheap to clone.
#[derive(Clone)]
pub struct QueueClient {
    pool: Pool,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

/// How many tasks of a queue are in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub pending: u64,
    pub active: u64,
    pub scheduled: u64,
    pub retry: u64,
    pub archived: u64,
}

/// One task as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TaskInfo {
    pub id: i64,
    pub state: String,
    pub kind: String,
    pub retried: u32,
    pub max_retry: u32,
    pub last_error: Option<String>,
}

impl QueueClient {
    pub fn new(pool: Pool, prefix: &str) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
            scripts: Arc::new(Scripts::new()),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    pub fn keys(&self, queue: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, queue)
    }

    /// Enqueues `tasks`, one script call per queue, all in one round trip (the
    /// calls are pipelined on the connection). A task whose id is already known
    /// is left as it is. Returns how many were new.
    pub async fn enqueue(&self, tasks: &[TaskMessage]) -> Result<usize, QueueError> {
        let mut by_queue: HashMap<&str, Vec<&TaskMessage>> = HashMap::new();
        for task in tasks {
            by_queue.entry(task.queue.as_str()).or_default().push(task);
        }
        let calls = by_queue.into_iter().map(|(queue, tasks)| async move {
            let keys = self.keys(queue);
            let mut args = Vec::with_capacity(1 + tasks.len() * 6);
            args.push(keys.wake_channel.clone());
            for t in &tasks {
                args.extend([
                    t.id.to_string(),
                    t.kind.clone(),
                    t.payload.clone(),
                    t.max_retry.to_string(),
                    t.timeout.as_millis().to_string(),
                    t.process_at.timestamp_millis().to_string(),
                ]);
            }
            let flags: Vec<i64> = scripts::run(
                &self.pool,
                &self.scripts.enqueue,
                vec![keys.task_prefix, keys.pending, keys.scheduled],
                args,
            )
            .await?;
            let mut added = 0;
            for (t, flag) in tasks.iter().zip(flags) {
                if flag == 1 {
                    added += 1;
                    tracing::info!(
                        task_id = t.id,
                        r#type = %t.kind,
                        payload = %t.payload,
                        queue = %t.queue,
                        max_retry = t.max_retry,
                        "enqueued task"
                    );
                }
            }
            Ok::<_, QueueError>(added)
        });
        Ok(try_join_all(calls).await?.into_iter().sum())
    }

    /// Task counts of `queue` by state.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let k = self.keys(queue);
        let pipe = self.pool.next().pipeline();
        let _: () = pipe.llen(&k.pending).await?;
        let _: () = pipe.zcard(&k.active).await?;
        let _: () = pipe.zcard(&k.scheduled).await?;
        let _: () = pipe.zcard(&k.retry).await?;
        let _: () = pipe.zcard(&k.archived).await?;
        let (pending, active, scheduled, retry, archived) = pipe.all().await?;
        Ok(QueueStats {
            pending,
            active,
            scheduled,
            retry,
            archived,
        })
    }

    /// One task, or `None` when Redis does not know the id (never enqueued, or
    /// completed longer ago than the retention).
    pub async fn task(&self, queue: &str, id: i64) -> Result<Option<TaskInfo>, QueueError> {
        let fields: HashMap<String, String> = self.pool.hgetall(self.keys(queue).task(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| fields.get(f).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(TaskInfo {
            id,
            state: fields.get("state").cloned().unwrap_or_default(),
            kind: fields.get("kind").cloned().unwrap_or_default(),
            retried: num("retried"),
            max_retry: num("max_retry"),
            last_error: fields.get("last_error").cloned(),
        }))
    }

    /// Ids in the archived set of `queue`, oldest first.
    pub async fn archived_ids(&self, queue: &str) -> Result<Vec<i64>, QueueError> {
        Ok(self
            .pool
            .zrange(self.keys(queue).archived, 0, -1, None, false, None, false)
            .await?)
    }

    /// Round trip to Redis, for readiness checks.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.pool.ping(None).await?;
        Ok(())
    }
}
