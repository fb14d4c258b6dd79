//! What the outbox holds: the backlog a stuck relay leaves behind (the one
//! figure that shows any stall of the pipeline), and the dispatched rows kept
//! for `--redeliver-since`.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

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
    pub async fn read(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let row = sqlx::query_file!("sql/outbox/backlog.sql", COUNT_LIMIT as i64)
            .fetch_one(pool)
            .await?;
        Ok(Self {
            undispatched: row.undispatched.max(0) as u64,
            oldest_age: row
                .oldest_age_seconds
                .map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)),
        })
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

/// Dispatched rows still kept (within `OUTBOX_RETENTION`).
pub async fn dispatched_count(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let n = sqlx::query_file_scalar!("sql/outbox/dispatched_count.sql")
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

/// A duration as seconds (fractional), for JSON.
pub fn as_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
