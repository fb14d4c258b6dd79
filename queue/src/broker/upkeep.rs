//! Upkeep the workers do between runs: promoting due tasks, trimming the
//! archive to its limits.

use std::time::Duration;

use super::{Broker, reply::Reply, scripts::SCRIPTS};
use crate::QueueError;

/// Most archived tasks one trim removes.
const TRIM_BATCH: u32 = 100;

/// What one promote pass over a queue did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Promoted {
    /// Scheduled, retry and recovered tasks that became pending.
    pub moved: u64,
    /// Tasks whose lease had expired (each counted as a failed attempt).
    pub recovered: u64,
    /// When the earliest scheduled, retry or lease deadline falls due; `None`
    /// when the queue has none.
    pub next_due: Option<Duration>,
    /// The kinds of the recovered tasks that were archived (retries used up),
    /// one entry per task.
    pub expired_archived: Vec<String>,
    /// The kinds of the recovered tasks that will be retried, one entry per task.
    pub expired_retried: Vec<String>,
}

impl Broker {
    /// Moves due scheduled and retry tasks of `queue` to pending and recovers
    /// expired leases, at most `limit` per set.
    pub async fn promote(&self, queue: &str, limit: u32) -> Result<Promoted, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.promote;
        let reply = self
            .run(
                lua,
                vec![
                    k.task_prefix,
                    k.pending,
                    k.scheduled,
                    k.retry,
                    k.active,
                    k.archived,
                    k.deliveries,
                ],
                vec![k.wake_channel, limit.to_string()],
            )
            .await?;
        let mut reply = Reply::new(lua.name, reply)?;
        let promoted = Promoted {
            moved: reply.count("moved")?,
            recovered: reply.count("recovered")?,
            next_due: reply.opt_count("next due")?.map(Duration::from_millis),
            expired_archived: reply.texts("archived kinds")?,
            expired_retried: reply.texts("retried kinds")?,
        };
        reply.end()?;
        // Some of the recovered may have been archived.
        if promoted.recovered > 0 {
            self.trim_archive_quietly(queue).await;
        }
        Ok(promoted)
    }

    /// Deletes archived tasks of `queue` past the archive limits, at most a
    /// batch per call; returns how many.
    pub async fn trim_archive(&self, queue: &str) -> Result<u64, QueueError> {
        let k = self.keys(queue);
        let lua = &SCRIPTS.trim_archive;
        let reply = self
            .run(
                lua,
                vec![k.task_prefix, k.archived],
                vec![
                    self.archive.max_age.as_millis().to_string(),
                    self.archive.max_size.to_string(),
                    TRIM_BATCH.to_string(),
                    self.archive.protect.as_millis().to_string(),
                ],
            )
            .await?;
        reply
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| QueueError::Reply {
                script: lua.name,
                detail: format!("{reply:?} where a count was expected"),
            })
    }

    /// Trims after archiving; the archive having happened, a failed trim is
    /// only logged (the next archiving trims again).
    pub(super) async fn trim_archive_quietly(&self, queue: &str) {
        match self.trim_archive(queue).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(queue, removed = n, "archive trimmed to its limits"),
            Err(e) => tracing::warn!(queue, error = %e, "could not trim the archive"),
        }
    }
}
