//! The outbox table an upgrade left behind (`outbox_legacy`, see migration
//! 15): rows written before the upgrade and marked `dispatched_at` when
//! forwarded. Its undispatched rows are forwarded with the old
//! claim-and-mark, so each goes exactly once, however many relays run; then
//! a relay never reads it again, and retention drops it
//! ([`super::partitions`]).
//!
//! The table is gone on a fresh database, so these queries are not checked
//! at build time.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sqlx::{Connection, PgPool};

use super::{OutboxRow, relay::RelayError};
use crate::queue::{Broker, TaskMessage};

const COLUMNS: &str = "id, kind, queue, payload::text AS payload, max_retry, timeout_ms, \
                       process_at, request_id, created_at, trace_context";

/// Whether the old table is there (it is dropped once done with).
pub async fn exists(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass('outbox_legacy') IS NOT NULL")
        .fetch_one(pool)
        .await
}

/// Rows of the old table waiting to be forwarded, counted up to `limit`.
pub async fn undispatched(pool: &PgPool, limit: u64) -> Result<u64, sqlx::Error> {
    if !exists(pool).await? {
        return Ok(0);
    }
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM outbox_legacy WHERE dispatched_at IS NULL LIMIT $1) w",
    )
    .bind(limit as i64)
    .fetch_one(pool)
    .await?;
    Ok(n.max(0) as u64)
}

/// One relay's view of the old table.
#[derive(Debug, Default)]
pub struct Legacy {
    /// Nothing waits in it (or it is gone): never read again.
    done: AtomicBool,
}

impl Legacy {
    /// Whether rows may wait in the old table. Rows another relay has
    /// claimed count as waiting: should it die mid-batch, they are this
    /// relay's to forward. Once none waits, it is never asked again.
    pub async fn waiting(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        if self.done.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let waiting = undispatched(pool, 1).await? > 0;
        if !waiting {
            self.done.store(true, Ordering::Relaxed);
        }
        Ok(waiting)
    }

    /// Forwards one batch of the old table's undispatched rows on `conn`,
    /// in a transaction begun with `begin` (the relay's bounded session)
    /// that claims (SKIP LOCKED), enqueues and marks. Returns the rows.
    pub async fn batch(
        &self,
        conn: &mut sqlx::PgConnection,
        broker: &Broker,
        batch: u32,
        begin: &str,
    ) -> Result<usize, RelayError> {
        let claim = format!(
            "SELECT {COLUMNS} FROM outbox_legacy WHERE dispatched_at IS NULL \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let mut tx = conn.begin_with(begin.to_owned()).await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(&claim)
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let tasks: Vec<TaskMessage> = rows.into_iter().map(Into::into).collect();
        broker.enqueue(&tasks).await?;
        sqlx::query("UPDATE outbox_legacy SET dispatched_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    /// Enqueues again the old table's rows dispatched in the last `window`.
    pub async fn redeliver_since(
        &self,
        pool: &PgPool,
        broker: &Broker,
        window: Duration,
        batch: u32,
    ) -> Result<u64, RelayError> {
        if !exists(pool).await? {
            return Ok(0);
        }
        let page = format!(
            "SELECT {COLUMNS} FROM outbox_legacy \
             WHERE dispatched_at >= now() - make_interval(secs => $1) AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        let (mut after, mut total) = (0i64, 0u64);
        loop {
            let rows: Vec<OutboxRow> = sqlx::query_as(&page)
                .bind(window.as_secs_f64())
                .bind(after)
                .bind(i64::from(batch))
                .fetch_all(pool)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let tasks: Vec<TaskMessage> = rows.into_iter().map(Into::into).collect();
            total += tasks.len() as u64;
            broker.enqueue(&tasks).await?;
        }
        Ok(total)
    }
}
