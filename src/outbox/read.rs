//! Reading a queue's rows beyond its position (sql/outbox/read.sql).

use sqlx::PgConnection;

use super::{
    OutboxRow,
    position::{ParseError, Position, RowId, Snapshot},
};

/// One batch as read, and what it takes to move the position past it.
#[derive(Debug, Default)]
pub struct ReadBatch {
    pub rows: Vec<OutboxRow>,
    ids: Vec<RowId>,
    /// The read's snapshot; `None` for an empty batch.
    snapshot: Option<Snapshot>,
    /// The batch was cut at its size: more rows may follow.
    pub full: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("postgres: {0}")]
    Parse(#[from] ParseError),
}

impl ReadBatch {
    /// The position once this batch is forwarded.
    pub fn next(&self, from: &Position) -> Position {
        match &self.snapshot {
            Some(s) => from.after(s, &self.ids, self.full),
            None => from.clone(),
        }
    }
}

/// Up to `limit` rows of `queue` that `position` does not cover, in
/// transaction order. Run it in a transaction begun with
/// [`super::session::begin_batch`]: its settings keep the plan to index
/// ranges, which statistics lagging behind the newest rows would not.
pub async fn read(
    conn: &mut PgConnection,
    queue: &str,
    position: &Position,
    limit: u32,
) -> Result<ReadBatch, ReadError> {
    let open: Vec<String> = position.open.iter().map(u64::to_string).collect();
    let (partial_txids, partial_ids) = position.partial_arrays();
    let rows = sqlx::query_file!(
        "sql/outbox/read.sql",
        queue,
        position.xmax.to_string(),
        &open,
        &partial_txids,
        &partial_ids,
        i64::from(limit)
    )
    .fetch_all(conn)
    .await?;
    let mut batch = ReadBatch {
        full: rows.len() >= limit as usize,
        ..ReadBatch::default()
    };
    for r in rows {
        if batch.snapshot.is_none() {
            batch.snapshot = Some(r.snapshot.parse()?);
        }
        batch.ids.push(RowId {
            txid: r.txid.parse().map_err(|_| {
                sqlx::Error::Decode(format!("outbox txid {:?} is not a number", r.txid).into())
            })?,
            id: r.id,
        });
        batch.rows.push(OutboxRow {
            id: r.id,
            kind: r.kind,
            queue: r.queue,
            payload: r.payload,
            max_retry: r.max_retry,
            timeout_ms: r.timeout_ms,
            process_at: r.process_at,
            request_id: r.request_id,
            created_at: r.created_at,
            trace_context: r.trace_context,
        });
    }
    Ok(batch)
}
