//! Enqueueing: the relay's write into the queues, idempotent by task id.

use std::collections::HashMap;

use futures::future::join_all;

use fred::{prelude::KeysInterface, types::Value};

use super::{Broker, reply::Reply, scripts::SCRIPTS};
use crate::{QueueError, task::TaskMessage};

/// A producer's position in its own source (the outbox relay's: which rows
/// it forwarded), kept in Redis beside the queue and moved only by an
/// enqueue ([`Broker::enqueue_at`]) that says where it was: tasks and
/// position are written together, and of two producers that read the same
/// position only one moves it.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    /// Whose cursor: one queue can have several producers.
    pub name: &'a str,
    /// Where the producer read from: `None` when it found no cursor.
    pub expected: Option<&'a str>,
    /// Where the enqueue leaves it.
    pub next: &'a str,
}

/// What [`Broker::enqueue_at`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorEnqueue {
    /// The tasks are in (this many new) and the cursor moved.
    Enqueued(usize),
    /// The cursor was elsewhere (here; `None` when there is none): another
    /// producer moved it, or Redis lost it. Nothing was written.
    Moved(Option<String>),
}

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
            let added = match self.enqueue_one(queue, &tasks, None).await {
                Ok(CursorEnqueue::Enqueued(n)) => Ok(n),
                Ok(CursorEnqueue::Moved(_)) => unreachable!("no cursor was checked"),
                Err(e) => Err(e),
            };
            (queue.to_owned(), added)
        });
        join_all(calls).await
    }

    /// Enqueues `tasks` (all of `queue`) and moves `cursor`, both or
    /// neither; see [`Cursor`].
    pub async fn enqueue_at(
        &self,
        queue: &str,
        tasks: &[TaskMessage],
        cursor: Cursor<'_>,
    ) -> Result<CursorEnqueue, QueueError> {
        debug_assert!(tasks.iter().all(|t| t.queue == queue));
        let tasks: Vec<&TaskMessage> = tasks.iter().collect();
        match self.enqueue_one(queue, &tasks, Some(cursor)).await? {
            // The script ran twice (a reply lost, the call sent again): the
            // first run moved the cursor to where this one would have.
            CursorEnqueue::Moved(Some(at)) if at == cursor.next => Ok(CursorEnqueue::Enqueued(0)),
            done => Ok(done),
        }
    }

    /// Producer `name`'s cursor on `queue`, `None` when there is none.
    pub async fn cursor(&self, queue: &str, name: &str) -> Result<Option<String>, QueueError> {
        Ok(self.pool.get(self.keys(queue).cursor(name)).await?)
    }

    async fn enqueue_one(
        &self,
        queue: &str,
        tasks: &[&TaskMessage],
        cursor: Option<Cursor<'_>>,
    ) -> Result<CursorEnqueue, QueueError> {
        let keys = self.keys(queue);
        let mut args = Vec::with_capacity(4 + tasks.len() * 9);
        args.push(keys.wake_channel.clone());
        let cursor_key = keys.cursor(cursor.map_or("", |c| c.name));
        match cursor {
            None => args.extend(["none".into(), String::new(), String::new()]),
            Some(c) => args.extend([
                match c.expected {
                    None => "absent".into(),
                    Some(_) => "is".into(),
                },
                c.expected.unwrap_or_default().to_owned(),
                c.next.to_owned(),
            ]),
        }
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
                    cursor_key,
                ],
                args,
            )
            .await?;
        // Waited for either way: a cursor found moved is acted on (read
        // from, checkpointed) only once the replicas hold it too.
        self.wait_for_replicas(client, &slot).await?;
        if let Value::Array(items) = &reply
            && items.first().and_then(Value::as_i64) == Some(-1)
        {
            let mut reply = Reply::new(lua.name, reply)?;
            reply.int("cursor flag")?;
            let at = reply.opt_text("cursor")?;
            reply.end()?;
            return Ok(CursorEnqueue::Moved(at));
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
        Ok(CursorEnqueue::Enqueued(added))
    }
}
