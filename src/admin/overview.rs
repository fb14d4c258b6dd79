//! The dashboard's page: what it reads from the queues and the outbox, and
//! how it shows it. A part that cannot be read is named on the page, and
//! the rest is shown all the same.

use std::time::Duration;

use askama::Template;
use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Deserialize;

use super::{ARCHIVED_SHOWN, Dashboard, Shared, page, render, unauthorized};
use crate::{
    outbox::stats::OutboxStats,
    queue::{QueueStats, QueueWeight, TaskId, TaskState},
};

/// One queue's line.
struct QueueRow {
    name: String,
    weight: u32,
    paused: bool,
    /// A worker's breaker holds it back: its tasks kept finding the mail
    /// provider (or whatever they need) refusing.
    held_back: bool,
    counts: [u64; 5],
    latency: String,
}

/// One archived task.
struct ArchivedRow {
    queue: String,
    id: TaskId,
    kind: String,
    retried: String,
    failed_at: String,
    error: String,
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
struct DashboardPage {
    refresh: u64,
    csrf: String,
    notice: Option<String>,
    problems: Vec<String>,
    queues: Vec<QueueRow>,
    archived: Vec<ArchivedRow>,
    undispatched: String,
    oldest: String,
    relay: &'static str,
    relay_max_age: String,
    now: String,
}

/// Where a change redirects to: what was done, as known words only (a link
/// cannot make the page say something of an attacker's choosing).
#[derive(Deserialize, Default)]
pub(super) struct Done {
    done: Option<String>,
    queue: Option<String>,
    task: Option<TaskId>,
}

impl Done {
    fn notice(&self, d: &Dashboard) -> Option<String> {
        let verb = match self.done.as_deref()? {
            v @ ("retried" | "deleted" | "paused" | "resumed" | "unchanged") => v,
            _ => return None,
        };
        let queue = self.queue.as_deref().filter(|q| d.knows_queue(q))?;
        Some(match (verb, self.task) {
            ("unchanged", Some(id)) => format!("Task {id} of {queue}: nothing to change."),
            ("unchanged", None) => format!("Queue {queue}: nothing to change."),
            (verb, Some(id)) => format!("Task {id} of {queue} {verb}."),
            (verb, None) => format!("Queue {queue} {verb}."),
        })
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

pub(super) async fn index(
    State(d): Shared,
    headers: HeaderMap,
    Query(done): Query<Done>,
) -> Response {
    let Some(session) = d.session(&headers) else {
        return unauthorized(&d, None);
    };
    let mut problems = Vec::new();
    let mut queues = Vec::new();
    let mut archived = Vec::new();
    for q in &d.queues {
        let stats = match d.broker.stats(&q.queue).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(queue = %q.queue, error = %e, "dashboard: cannot read the queue");
                problems.push(format!("Queue {}: Redis did not answer.", q.queue));
                continue;
            }
        };
        match archived_rows(&d, &q.queue, stats.archived).await {
            Some(rows) => archived.extend(rows),
            None => problems.push(format!(
                "Queue {}: its archived tasks could not be read.",
                q.queue
            )),
        }
        queues.push(QueueRow::new(q, &stats));
    }
    let outbox = OutboxLine::read(&d).await;
    if outbox.is_none() {
        problems.push("The outbox could not be read: Postgres did not answer.".into());
    }
    let outbox = outbox.unwrap_or(OutboxLine {
        undispatched: "?".into(),
        oldest: "?".into(),
        relay: "unknown",
    });
    let html = render(&DashboardPage {
        refresh: d.refresh.as_secs(),
        csrf: session.csrf,
        notice: done.notice(&d),
        problems,
        queues,
        archived,
        undispatched: outbox.undispatched,
        oldest: outbox.oldest,
        relay: outbox.relay,
        relay_max_age: human(d.relay_max_age),
        now: chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
    });
    page(StatusCode::OK, html)
}

impl QueueRow {
    fn new(q: &QueueWeight, stats: &QueueStats) -> Self {
        Self {
            name: q.queue.clone(),
            weight: q.weight,
            paused: stats.paused,
            held_back: stats.held_back,
            counts: [
                stats.pending,
                stats.active,
                stats.scheduled,
                stats.retry,
                stats.archived,
            ],
            latency: stats.latency.map_or("-".into(), human),
        }
    }
}

/// The newest [`ARCHIVED_SHOWN`] of `queue`'s `archived` tasks, newest
/// first; `None` when Redis did not answer (logged).
async fn archived_rows(d: &Dashboard, queue: &str, archived: u64) -> Option<Vec<ArchivedRow>> {
    let from = archived.saturating_sub(ARCHIVED_SHOWN);
    let tasks = match d
        .broker
        .list(queue, TaskState::Archived, from, ARCHIVED_SHOWN)
        .await
    {
        Ok(tasks) => tasks,
        Err(e) => {
            tracing::warn!(queue = %queue, error = %e, "dashboard: cannot list archived tasks");
            return None;
        }
    };
    Some(
        tasks
            .into_iter()
            .rev()
            .map(|t| ArchivedRow {
                queue: queue.to_owned(),
                id: t.id,
                kind: t.kind,
                retried: format!("{}/{}", t.retried, t.max_retry),
                failed_at: t
                    .last_failed_at
                    .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                error: t.last_error.unwrap_or_default(),
            })
            .collect(),
    )
}

/// The outbox's line on the page.
struct OutboxLine {
    undispatched: String,
    oldest: String,
    relay: &'static str,
}

impl OutboxLine {
    /// `None` when Postgres did not answer (logged).
    async fn read(d: &Dashboard) -> Option<Self> {
        match OutboxStats::read(&d.pool, &d.broker).await {
            Ok(s) => Some(Self {
                undispatched: s.undispatched_text(),
                oldest: s.oldest_age.map_or("-".into(), human),
                relay: match s.stalled(d.relay_max_age) {
                    Some(_) => "stalled",
                    None => "flowing",
                },
            }),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot read the outbox");
                None
            }
        }
    }
}
