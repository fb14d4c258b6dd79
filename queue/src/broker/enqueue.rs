//! Enqueueing: the relay's write into the queues, idempotent by task id.

use std::collections::HashMap;

use futures::future::join_all;

use super::{Broker, reply::Reply, scripts::SCRIPTS};
use crate::{QueueError, task::TaskMessage};

impl Broker {
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
        let mut args = Vec::with_capacity(1 + tasks.len() * 9);
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
                t.trace_context.clone().unwrap_or_default(),
            ]);
        }
        let lua = &SCRIPTS.enqueue;
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
                    keys.scheduled,
                    keys.enqueues,
                ],
                args,
            )
            .await?;
        self.wait_for_replicas(client, &slot).await?;
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
}
