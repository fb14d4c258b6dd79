//! The queue broker: the one place that runs a Lua script or names a Redis key.
//!
//! Every state change of a task is one script (in `scripts/`), run by one
//! method ([`enqueue`], [`runs`], [`upkeep`], [`repairs`]), touching the keys of one queue only ([`keys`]),
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

mod enqueue;
mod keys;
mod reads;
mod repairs;
mod reply;
mod runs;
mod scripts;
mod upkeep;

use std::{sync::Arc, time::Duration};

use fred::{clients::Pool, prelude::*};

use super::QueueError;

pub use enqueue::{Cursor, CursorEnqueue};
pub use keys::QueueKeys;
pub use reads::QueueStats;
pub use repairs::Repair;
pub use runs::{AckOutcome, FailOutcome, RequeueOutcome};
pub use upkeep::Promoted;

/// How much of a queue's archive is kept (asynq's defaults: 90 days, 10,000
/// tasks). An archived task keeps its payload and error for an operator to
/// retry or read; past these limits it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// An archived task older than this is deleted.
    pub max_age: Duration,
    /// Most archived tasks kept; the oldest beyond it are deleted, except
    /// those archived within [`ArchiveLimits::protect`].
    pub max_size: u64,
    /// A task archived within this is never deleted for the size limit: a
    /// burst of failures larger than the limit is kept whole until it is
    /// this old (only the age limit removes it sooner, when shorter).
    pub protect: Duration,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(90 * 24 * 3600),
            max_size: 10_000,
            protect: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Runs queue operations on a Redis pool. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    pool: Pool,
    prefix: Arc<str>,
    archive: ArchiveLimits,
    /// Replicas the waited writes must reach ([`Broker::with_replica_wait`]).
    replica_wait: Option<ReplicaWait>,
}

/// The replica wait: its own connections, how many replicas, how long.
#[derive(Clone)]
struct ReplicaWait {
    pool: Pool,
    replicas: u32,
    timeout: Duration,
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

    /// Enqueues, dequeues and lease extensions count as done only once
    /// `replicas` replicas hold them (Redis WAIT, within `timeout`), so that
    /// a primary failing over to a replica loses no task the relay marked
    /// dispatched, hands out no delivery number a second time, and brings
    /// back no shorter lease. A dequeue no replica acknowledged hands its
    /// tasks back untried and fails; an extension fails (the lease as last
    /// acknowledged still counts). Acknowledgements are not waited for: a
    /// failover can undo one, which runs the task again, and the ledger
    /// catches a run already recorded. 0: no wait.
    ///
    /// WAIT holds its connection until the replicas answer, so the waited
    /// writes and their WAITs go on `pool`, connections of their own: an
    /// acknowledgement or a hand-back never queues behind a WAIT.
    pub fn with_replica_wait(mut self, pool: Pool, replicas: u32, timeout: Duration) -> Self {
        self.replica_wait = (replicas > 0).then_some(ReplicaWait {
            pool,
            replicas,
            timeout,
        });
        self
    }

    /// The connection for a write that is waited for: one of the wait's own
    /// when there is a wait.
    fn waited_client(&self) -> &fred::clients::Client {
        match &self.replica_wait {
            Some(wait) => wait.pool.next(),
            None => self.pool.next(),
        }
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

    /// A round trip to Redis, for readiness checks.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let _: String = self.pool.ping(None).await?;
        Ok(())
    }
}
