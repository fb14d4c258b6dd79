//! The outbox's partitions: ranges of `txid`, created ahead of use and
//! dropped whole, so that no row is ever deleted one by one.
//!
//! A partition is named for its range, `outbox_p<from>_<to>` (from 0: no
//! lower bound). Every relay runs the upkeep; each step is a transaction
//! that first takes an advisory lock for the transaction (nothing to leak
//! when a relay vanishes, and it works through PgBouncer), so one relay at a
//! time does a step, and the others skip it. The upkeep keeps:
//! - one partition ahead: once the newest is in use, the next is created,
//!   wide enough for about a quarter of OUTBOX_RETENTION at the rate
//!   transaction ids were used since the last look;
//! - partitions behind: one is dropped once no transaction of its range is
//!   running, every row in it is covered by its queue's newest checkpoint,
//!   and none was written within OUTBOX_RETENTION (kept for
//!   `--redeliver-since`). The check and the drop are one transaction that
//!   holds the partition's lock, so no row can arrive in between;
//! - the default partition, `outbox_overflow`, which takes rows no range
//!   covers should the next partition be late: emptied (TRUNCATE) on the
//!   same terms;
//! - the table an upgrade left (`outbox_legacy`): dropped once nothing in it
//!   waits and its last row was dispatched more than OUTBOX_RETENTION ago;
//! - checkpoints older than retention, except each queue's newest.
//!
//! DDL waits at most [`LOCK_TIMEOUT`] for its lock, then gives up until the
//! next round: a writer queued behind a DROP that waits on a long reader
//! (pg_dump) would otherwise wait as long.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};

use super::positions;

/// How long partition DDL waits for its lock before giving up the round.
const LOCK_TIMEOUT: &str = "100ms";

/// The advisory lock that keeps each upkeep step to one relay at a time.
const UPKEEP_LOCK: i64 = 0x5b0_0b0c;

/// The width of a new partition when no rate is known yet.
const DEFAULT_WIDTH: u64 = 10_000_000;
const MIN_WIDTH: u64 = 10_000;
const MAX_WIDTH: u64 = 1 << 31;

/// How far above the next transaction id a partition starts when the ranges
/// fell behind (rows went to the overflow partition meanwhile).
const CATCH_UP_MARGIN: u64 = 1_000_000;

/// One range partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub from: u64,
    pub to: u64,
}

impl Partition {
    fn parse(name: &str) -> Option<Self> {
        let (from, to) = name.strip_prefix("outbox_p")?.split_once('_')?;
        Some(Self {
            name: name.to_owned(),
            from: from.parse().ok()?,
            to: to.parse().ok()?,
        })
    }

    fn name_for(from: u64, to: u64) -> String {
        format!("outbox_p{from}_{to}")
    }
}

/// What one round of upkeep did.
#[derive(Debug, Default)]
pub struct Maintained {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    pub overflow_emptied: bool,
    pub legacy_dropped: bool,
}

impl Maintained {
    pub fn log(&self) {
        for p in &self.created {
            tracing::info!(partition = %p, "created the next outbox partition");
        }
        for p in &self.dropped {
            tracing::info!(partition = %p, "dropped an outbox partition past retention");
        }
        if self.overflow_emptied {
            tracing::info!("emptied the outbox overflow partition, past retention");
        }
        if self.legacy_dropped {
            tracing::info!("dropped outbox_legacy: every row forwarded and past retention");
        }
    }
}

/// The upkeep; see the module doc.
#[derive(Debug)]
pub struct Partitions {
    retention: Duration,
    /// The next transaction id at the last round, and when: the rate.
    last: Option<(u64, Instant)>,
}

/// The range partitions, by `from`.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Partition>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'outbox'::regclass",
    )
    .fetch_all(conn)
    .await?;
    let mut parts: Vec<Partition> = names.iter().filter_map(|n| Partition::parse(n)).collect();
    parts.sort_by_key(|p| p.from);
    Ok(parts)
}

async fn next_xid(conn: &mut PgConnection) -> Result<(u64, u64), sqlx::Error> {
    let (xmin, xmax): (String, String) = sqlx::query_as(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, \
                pg_snapshot_xmax(pg_current_snapshot())::text",
    )
    .fetch_one(conn)
    .await?;
    let number = |s: String| {
        s.parse::<u64>()
            .map_err(|_| sqlx::Error::Decode(format!("transaction id {s:?}").into()))
    };
    Ok((number(xmin)?, number(xmax)?))
}

impl Partitions {
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            last: None,
        }
    }

    /// How many transaction ids the next partition spans: a quarter of the
    /// retention at the rate since the last round (at most six hours).
    fn width(&self, next: u64) -> u64 {
        let Some((before, at)) = self.last else {
            return DEFAULT_WIDTH;
        };
        let secs = at.elapsed().as_secs_f64();
        if secs < 1.0 || next <= before {
            return DEFAULT_WIDTH;
        }
        let rate = (next - before) as f64 / secs;
        let span = (self.retention.as_secs_f64() / 4.0).clamp(60.0, 6.0 * 3600.0);
        ((rate * span) as u64).clamp(MIN_WIDTH, MAX_WIDTH)
    }

    /// One round; see the module doc. A step another relay is doing is
    /// skipped.
    pub async fn maintain(&mut self, pool: &PgPool) -> Result<Maintained, sqlx::Error> {
        let mut done = Maintained::default();
        let mut conn = pool.acquire().await?;
        self.maintain_on(&mut conn, &mut done).await?;
        Ok(done)
    }

    async fn maintain_on(
        &mut self,
        conn: &mut PgConnection,
        done: &mut Maintained,
    ) -> Result<(), sqlx::Error> {
        let (xmin, next) = next_xid(conn).await?;
        let mut parts = list(conn).await?;
        if let Some(newest) = parts.last()
            && next >= newest.from
        {
            let from = match next >= newest.to {
                false => newest.to,
                true => next + CATCH_UP_MARGIN,
            };
            let to = from + self.width(next);
            let name = Partition::name_for(from, to);
            let sql = format!(
                "CREATE TABLE {name} PARTITION OF outbox FOR VALUES FROM ('{from}') TO ('{to}')"
            );
            if ddl(conn, &sql).await? {
                done.created.push(name.clone());
                parts.push(Partition { name, from, to });
            }
        }
        self.last = Some((next, Instant::now()));

        // The newest two stay whatever their state: one in use, one ahead.
        let old = parts.len().saturating_sub(2);
        for p in &parts[..old] {
            if p.to > xmin {
                break;
            }
            if self.retire(conn, &p.name, false).await? {
                done.dropped.push(p.name.clone());
            } else {
                break;
            }
        }
        done.overflow_emptied = self.retire(conn, "outbox_overflow", true).await?;
        done.legacy_dropped = self.retire_legacy(conn).await?;
        let Some(mut tx) = upkeep_tx(conn).await? else {
            return Ok(());
        };
        sqlx::query(
            "DELETE FROM outbox_checkpoints c \
             WHERE taken_at < now() - make_interval(secs => $1) \
               AND taken_at < (SELECT max(taken_at) FROM outbox_checkpoints n WHERE n.queue = c.queue)",
        )
        .bind(self.retention.as_secs_f64() + 3600.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drops (or, for the overflow, empties) `table` if nothing in it is
    /// needed any more. Whether it was.
    async fn retire(
        &self,
        conn: &mut PgConnection,
        table: &str,
        truncate: bool,
    ) -> Result<bool, sqlx::Error> {
        let checkpoints = match positions::checkpoints_on(conn).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbox retention: unreadable checkpoints");
                return Ok(false);
            }
        };
        let Some(mut tx) = upkeep_tx(conn).await? else {
            return Ok(false);
        };
        // Held to the end: no writer can add a row between the checks and
        // the drop, and none that wrote one is still running.
        if let Err(e) = sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await
        {
            return lock_given_up(e);
        }
        let recent: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE created_at > now() - make_interval(secs => $1))"
        ))
        .bind(self.retention.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        if recent {
            return Ok(false);
        }
        let queues: Vec<String> = sqlx::query_scalar(&queues_in(table))
            .fetch_all(&mut *tx)
            .await?;
        if queues.is_empty() && truncate {
            return Ok(false);
        }
        for queue in &queues {
            let Some(position) = checkpoints.iter().find(|(q, _)| q == queue).map(|(_, p)| p)
            else {
                return Ok(false);
            };
            let open: Vec<String> = position.open.iter().map(u64::to_string).collect();
            let (ptxids, pids) = position.partial_arrays();
            // Three index probes, as read.sql's three ranges: none reads
            // the partition's rows.
            let uncovered: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {table} WHERE queue = $1 AND txid = ANY($2::text[]::xid8[])) \
                 OR EXISTS (SELECT 1 FROM {table} WHERE queue = $1 AND txid >= $5::text::xid8) \
                 OR EXISTS (SELECT 1 FROM unnest($3::text[]::xid8[], $4::int8[]) AS p(txid, after) \
                            WHERE EXISTS (SELECT 1 FROM {table} o WHERE o.queue = $1 \
                                          AND o.txid = p.txid AND o.id > p.after))"
            ))
            .bind(queue)
            .bind(&open)
            .bind(&ptxids)
            .bind(&pids)
            .bind(position.xmax.to_string())
            .fetch_one(&mut *tx)
            .await?;
            if uncovered {
                return Ok(false);
            }
        }
        let sql = match truncate {
            true => format!("TRUNCATE {table}"),
            false => format!("DROP TABLE {table}"),
        };
        if let Err(e) = sqlx::query(&sql).execute(&mut *tx).await {
            return lock_given_up(e);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn retire_legacy(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('outbox_legacy') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
        if !exists {
            return Ok(false);
        }
        let Some(mut tx) = upkeep_tx(conn).await? else {
            return Ok(false);
        };
        if let Err(e) = sqlx::query("LOCK TABLE outbox_legacy IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
        {
            return lock_given_up(e);
        }
        let needed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox_legacy WHERE dispatched_at IS NULL \
                            OR dispatched_at > now() - make_interval(secs => $1))",
        )
        .bind(self.retention.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        if needed {
            return Ok(false);
        }
        sqlx::query("DROP TABLE outbox_legacy")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The distinct queues of `table`, one index descent each.
fn queues_in(table: &str) -> String {
    format!(
        "WITH RECURSIVE q AS ( \
           (SELECT queue FROM {table} ORDER BY queue LIMIT 1) \
           UNION ALL \
           SELECT (SELECT o.queue FROM {table} o WHERE o.queue > q.queue ORDER BY o.queue LIMIT 1) \
           FROM q WHERE q.queue IS NOT NULL) \
         SELECT queue FROM q WHERE queue IS NOT NULL"
    )
}

/// A transaction for one upkeep step: its DDL waits at most
/// [`LOCK_TIMEOUT`] for a lock, and it holds [`UPKEEP_LOCK`] to its end.
/// `None` when another relay holds that lock (it is doing the step).
async fn upkeep_tx(
    conn: &mut PgConnection,
) -> Result<Option<sqlx::Transaction<'_, sqlx::Postgres>>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(UPKEEP_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    Ok(got.then_some(tx))
}

/// Runs `sql` under [`LOCK_TIMEOUT`]: whether it ran (false when its lock
/// was not had in time, or a concurrent round made the same partition).
async fn ddl(conn: &mut PgConnection, sql: &str) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = upkeep_tx(conn).await? else {
        return Ok(false);
    };
    match sqlx::query(sql).execute(&mut *tx).await {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(e) => lock_given_up(e),
    }
}

/// A lock not had within the timeout (SQLSTATE 55P03) ends the round
/// quietly; anything else is an error.
fn lock_given_up(e: sqlx::Error) -> Result<bool, sqlx::Error> {
    match e.as_database_error().and_then(|d| d.code()).as_deref() {
        Some("55P03") => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_named_for_its_range() {
        let p = Partition::parse(&Partition::name_for(100, 250)).unwrap();
        assert_eq!((p.from, p.to), (100, 250));
        assert_eq!(p.name, "outbox_p100_250");
        assert!(Partition::parse("outbox_overflow").is_none());
        assert!(Partition::parse("outbox_p1").is_none());
    }
}
