//! What the outbox holds: the backlog a stuck relay leaves behind (the one
//! figure that shows any stall of the pipeline), and the forwarded rows kept
//! for `--redeliver-since`.
//!
//! The backlog is each queue's rows beyond its position, so reading it costs
//! the rows waiting, not the rows kept.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use super::{
    legacy,
    positions::{self, PositionError},
};
use crate::queue::Broker;

/// Undispatched rows are counted up to this many: a count costs a read of
/// each row, and a backlog this large is news enough.
pub const COUNT_LIMIT: u64 = 1_000_000;

/// The undispatched rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutboxStats {
    /// At most [`COUNT_LIMIT`].
    pub undispatched: u64,
    /// How long the oldest undispatched row has waited; `None` when none waits.
    #[serde(rename = "oldest_age_seconds", serialize_with = "as_seconds")]
    pub oldest_age: Option<Duration>,
}

impl OutboxStats {
    /// The backlog of every queue, from its position in Redis (or, while
    /// Redis does not answer, its last checkpoint: a few rows too many),
    /// and the rows the upgrade's old table still holds.
    pub async fn read(pool: &PgPool, broker: &Broker) -> Result<Self, PositionError> {
        let mut stats = Self {
            undispatched: legacy::undispatched(pool, COUNT_LIMIT).await?,
            oldest_age: None,
        };
        for queue in positions::queues(pool).await? {
            let position = positions::best_known(broker, pool, &queue).await?;
            let open: Vec<String> = position.open.iter().map(u64::to_string).collect();
            let (ptxids, pids) = position.partial_arrays();
            let row = sqlx::query_file!(
                "sql/outbox/backlog.sql",
                queue,
                position.xmax.to_string(),
                &open,
                &ptxids,
                &pids,
                COUNT_LIMIT as i64
            )
            .fetch_one(pool)
            .await?;
            stats.undispatched = (stats.undispatched + row.waiting.max(0) as u64).min(COUNT_LIMIT);
            let age = row
                .oldest_age_seconds
                .map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX));
            stats.oldest_age = stats.oldest_age.max(age);
        }
        Ok(stats)
    }
}

impl OutboxStats {
    /// How long the oldest row has waited, when that is longer than
    /// `max_age` (RELAY_READY_MAX_AGE): the relay is stalled.
    pub fn stalled(&self, max_age: Duration) -> Option<Duration> {
        self.oldest_age.filter(|age| *age > max_age)
    }

    /// The count for people: "1000000+" once it reached the limit.
    pub fn undispatched_text(&self) -> String {
        match self.undispatched >= COUNT_LIMIT {
            true => format!("{COUNT_LIMIT}+"),
            false => self.undispatched.to_string(),
        }
    }
}

/// About how many rows the outbox keeps (Postgres's estimate, as of the
/// last ANALYZE), forwarded or not: counting them would cost a read of
/// every row kept.
pub async fn kept_estimate(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let n: f64 = sqlx::query_scalar(
        "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8 FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'outbox'::regclass",
    )
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// A duration as seconds (fractional), for JSON.
pub fn as_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
