//! The Redis key layout of one queue.
//!
//! Every key of queue `q` starts with `<prefix>:{q}:`; the braces are a Redis
//! Cluster hash tag, so one queue lives in one slot and its Lua scripts touch a
//! single slot.
//!
//! | key                          | type   | holds                                              |
//! |------------------------------|--------|----------------------------------------------------|
//! | `<prefix>:{q}:t:<id>`        | hash   | one task: kind, payload, max_retry, timeout_ms, process_at, retried, deliveries, state, last_error, ... |
//! | `<prefix>:{q}:pending`       | list   | ids ready to run; new ids LPUSH, workers RPOP (FIFO) |
//! | `<prefix>:{q}:active`        | zset   | ids being run, scored by lease deadline (ms)        |
//! | `<prefix>:{q}:scheduled`     | zset   | ids waiting for their process_at (ms)               |
//! | `<prefix>:{q}:retry`         | zset   | ids waiting for their next attempt (ms)             |
//! | `<prefix>:{q}:archived`      | zset   | ids that will not run again, scored by when (ms)    |
//! | `<prefix>:{q}:deliveries`    | string | counter numbering every hand-out; never goes back (on replicas: with a replica wait) |
//! | `<prefix>:{q}:paused`        | string | present while the queue is paused (when, in ms)    |
//! | `<prefix>:{q}:breaker`       | string | present while a worker's breaker holds the queue back (expires with the pause) |
//! | `<prefix>:{q}:enqueues`      | string | counter of enqueue calls (each writes, for WAIT)   |
//! | `<prefix>:{q}:cursor:<name>` | string | a producer's position in its source, moved only with an enqueue ([`crate::Cursor`]) |
//! | `<prefix>:{q}:wake` (channel)| pubsub | published when ids become pending or due times change |
//!
//! The task id is the producer's (the service uses its outbox row id). A completed task's hash is kept (without
//! its payload) for a retention time so that a repeated enqueue stays a no-op.

use crate::TaskId;

/// The keys of one queue.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    /// The queue's name, as it appears in the hash tag.
    pub name: String,
    pub(crate) task_prefix: String,
    /// The list of ids ready to run (LPUSH to add, RPOP to take).
    pub pending: String,
    pub(crate) active: String,
    pub(crate) scheduled: String,
    pub(crate) retry: String,
    pub(crate) archived: String,
    pub(crate) deliveries: String,
    pub(crate) paused: String,
    pub(crate) breaker: String,
    pub(crate) enqueues: String,
    base: String,
    /// The pub/sub channel published on when tasks become pending or due times change.
    pub wake_channel: String,
}

impl QueueKeys {
    pub(crate) fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:{{{queue}}}:");
        Self {
            name: queue.to_owned(),
            task_prefix: format!("{base}t:"),
            pending: format!("{base}pending"),
            active: format!("{base}active"),
            scheduled: format!("{base}scheduled"),
            retry: format!("{base}retry"),
            archived: format!("{base}archived"),
            deliveries: format!("{base}deliveries"),
            paused: format!("{base}paused"),
            breaker: format!("{base}breaker"),
            enqueues: format!("{base}enqueues"),
            wake_channel: format!("{base}wake"),
            base,
        }
    }

    /// The key of producer `name`'s cursor ([`crate::Cursor`]).
    pub fn cursor(&self, name: &str) -> String {
        format!("{}cursor:{name}", self.base)
    }

    /// The key of the hash holding task `id`.
    pub fn task(&self, id: impl Into<TaskId>) -> String {
        format!("{}{}", self.task_prefix, id.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_queue_shares_its_hash_tag() {
        let k = QueueKeys::new("sb", "critical");
        for key in [
            &k.pending,
            &k.active,
            &k.scheduled,
            &k.retry,
            &k.archived,
            &k.breaker,
            &k.deliveries,
            &k.paused,
            &k.enqueues,
            &k.task(TaskId::from(7)),
            &k.cursor("outbox"),
        ] {
            assert!(key.starts_with("sb:{critical}:"), "{key}");
        }
        assert_eq!(k.task(TaskId::from(7)), "sb:{critical}:t:7");
    }
}
