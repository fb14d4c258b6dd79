//! Where each queue's [`Position`] is kept. The live one is the queue's
//! cursor in Redis ([`CURSOR`]), moved by the same script call that enqueues
//! the batch it covers, so the tasks and the position that says they were
//! forwarded cannot part. Postgres gets a copy now and then
//! (`outbox_checkpoints`, insert-only): where a relay starts when Redis lost
//! the cursor, how far back `--redeliver-since` reaches, and what retention
//! may drop. Nothing here is updated in place, so a held snapshot leaves no
//! dead tuples behind.

use std::time::Duration;

use sqlx::PgPool;

use super::position::{ParseError, Position};
use crate::queue::{Broker, QueueError};

/// The outbox relay's cursor name on each queue.
pub const CURSOR: &str = "outbox";

/// How often a relay copies a queue's position to Postgres while it moves.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] QueueError),
    #[error("queue {queue}: the outbox cursor is unreadable: {error}")]
    Unreadable { queue: String, error: ParseError },
}

/// A queue's position and how Redis has it.
#[derive(Debug, Clone)]
pub struct Known {
    pub position: Position,
    /// The cursor's text in Redis; `None` when Redis has none (the position
    /// then came from a checkpoint, or is [`Position::START`]).
    pub stored: Option<String>,
}

/// The cursor's text for `position`: the position, `@`, and a token of the
/// batch that writes it. Two relays that read the same rows compute the same
/// position; the token tells a replay of a relay's own call (its write is
/// there) from the other relay's write.
pub fn cursor_text(position: &Position) -> String {
    format!("{position}@{}", uuid::Uuid::new_v4().simple())
}

/// The position a cursor's (or a checkpoint's) text holds.
pub fn parse(queue: &str, text: &str) -> Result<Position, PositionError> {
    let position = text.split_once('@').map_or(text, |(p, _)| p);
    position.parse().map_err(|error| PositionError::Unreadable {
        queue: queue.to_owned(),
        error,
    })
}

/// Queue `queue`'s position: Redis's cursor, or else its newest checkpoint,
/// or else the start (a queue never forwarded).
pub async fn load(broker: &Broker, pool: &PgPool, queue: &str) -> Result<Known, PositionError> {
    match broker.cursor(queue, CURSOR).await? {
        Some(text) => Ok(Known {
            position: parse(queue, &text)?,
            stored: Some(text),
        }),
        None => Ok(Known {
            position: checkpoint_before(pool, queue, Duration::ZERO)
                .await?
                .unwrap_or(Position::START),
            stored: None,
        }),
    }
}

/// As [`load`], for readers that must answer while Redis is down (the
/// backlog gauge, `outbox stats`): then the newest checkpoint, which is
/// behind the truth and so counts a few rows too many, never too few.
pub async fn best_known(
    broker: &Broker,
    pool: &PgPool,
    queue: &str,
) -> Result<Position, PositionError> {
    match load(broker, pool, queue).await {
        Err(PositionError::Redis(_)) => Ok(checkpoint_before(pool, queue, Duration::ZERO)
            .await?
            .unwrap_or(Position::START)),
        known => known.map(|k| k.position),
    }
}

/// Queue `queue`'s newest checkpoint taken at least `age` ago.
pub async fn checkpoint_before(
    pool: &PgPool,
    queue: &str,
    age: Duration,
) -> Result<Option<Position>, PositionError> {
    let text =
        sqlx::query_file_scalar!("sql/outbox/checkpoint_before.sql", queue, age.as_secs_f64())
            .fetch_optional(pool)
            .await?;
    text.map(|t| parse(queue, &t)).transpose()
}

/// Queue `queue`'s newest checkpoint below transaction id `xmax` (for a
/// database whose ids went back: see the relay).
pub async fn checkpoint_below(
    pool: &PgPool,
    queue: &str,
    xmax: u64,
) -> Result<Option<Position>, PositionError> {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT position FROM outbox_checkpoints \
         WHERE queue = $1 AND split_part(position, ';', 1)::numeric <= $2::numeric \
         ORDER BY taken_at DESC LIMIT 1",
    )
    .bind(queue)
    .bind(xmax.to_string())
    .fetch_optional(pool)
    .await?;
    text.map(|t| parse(queue, &t)).transpose()
}

/// The next transaction id Postgres will hand out.
pub async fn next_xid(pool: &PgPool) -> Result<u64, PositionError> {
    let text: String = sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
        .fetch_one(pool)
        .await?;
    text.parse()
        .map_err(|_| PositionError::Db(sqlx::Error::Decode(format!("xid {text:?}").into())))
}

/// Copies `position` to Postgres, with an asynchronous commit: a copy lost
/// in a crash only leaves an older one, and the relay does not wait for the
/// disk (an fsync under load can take a hundred milliseconds).
pub async fn checkpoint(
    pool: &PgPool,
    queue: &str,
    position: &Position,
) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await?;
    let mut tx = conn
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    sqlx::query_file!("sql/outbox/checkpoint.sql", queue, position.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Every queue's newest checkpoint.
pub async fn checkpoints_on(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<(String, Position)>, PositionError> {
    let rows = sqlx::query_file!("sql/outbox/checkpoints.sql")
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.queue.clone(), parse(&r.queue, &r.position)?)))
        .collect()
}

/// The queues outbox rows are for.
pub async fn queues(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    queues_on(&mut *pool.acquire().await?).await
}

/// [`queues`], on `conn`.
pub async fn queues_on(conn: &mut sqlx::PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_file_scalar!("sql/outbox/queues.sql")
        .fetch_all(conn)
        .await
}
