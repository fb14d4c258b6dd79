//! `tasks`: list a queue's tasks in a state, show one task everywhere it is
//! recorded (outbox row, Redis, ledger, verify-email row), retry one or
//! every archived task of a queue, delete one.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;

use super::{Ops, cli_actor, confirm, print_json, table};
use crate::{
    config::parse_duration,
    outbox::{position::RowId, positions},
    queue::{QueueWeight, Repair, TaskId, TaskInfo, TaskState},
};

#[derive(Debug, Clone, Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    pub action: TasksAction,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TasksAction {
    /// List the tasks of a queue in one state.
    Ls {
        #[arg(long)]
        queue: String,
        /// scheduled, pending, active, retry or archived.
        #[arg(long)]
        state: TaskState,
        /// Only tasks that last failed, or (never having failed) were
        /// enqueued, within this long, e.g. 1h.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// Only tasks whose last error contains this text.
        #[arg(long)]
        error_contains: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One task: its outbox row, Redis entry, ledger entry and verify-email row.
    Show {
        id: TaskId,
        /// Its queue, when the outbox row is gone (default: searched).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Run a scheduled, retrying or archived task now (an archived one gets
    /// its retries back), or every archived task of a queue.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "archived"])))]
    Retry {
        id: Option<TaskId>,
        /// The task's queue (default: searched); with --archived, the queue.
        #[arg(long)]
        queue: Option<String>,
        /// Every archived task of --queue.
        #[arg(long, requires = "queue")]
        archived: bool,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask before changing more than one task.
        #[arg(long)]
        yes: bool,
    },
    /// Delete a task that is not running.
    Delete {
        id: TaskId,
        /// Its queue (default: searched).
        #[arg(long)]
        queue: Option<String>,
    },
}

pub async fn run(ops: &Ops, args: &TasksArgs) -> anyhow::Result<()> {
    match &args.action {
        TasksAction::Ls {
            queue,
            state,
            since,
            error_contains,
            limit,
        } => {
            let queue = ops.queue(queue)?;
            let filter = Filter {
                since: since.map(|d| Utc::now() - d),
                error_contains: error_contains.as_deref(),
            };
            ls(ops, queue, *state, &filter, *limit).await
        }
        TasksAction::Show { id, queue } => show(ops, *id, queue.as_deref()).await,
        TasksAction::Retry {
            id: Some(id),
            queue,
            dry_run,
            ..
        } => {
            let (queue, task) = locate(ops, *id, queue.as_deref()).await?;
            if *dry_run {
                return report_dry_run(ops, &queue, &[task]);
            }
            let repair = ops.broker.run_now(&queue, *id, &cli_actor()).await?;
            report_repair(ops, &queue, *id, repair, "retried")
        }
        TasksAction::Retry {
            id: None,
            queue,
            dry_run,
            yes,
            ..
        } => {
            let queue = ops.queue(queue.as_deref().context("--archived needs --queue")?)?;
            retry_archived(ops, queue, *dry_run, *yes).await
        }
        TasksAction::Delete { id, queue } => {
            let (queue, _) = locate(ops, *id, queue.as_deref()).await?;
            let repair = crate::tasks::ledger::delete_task(
                &ops.pool,
                &ops.broker,
                &queue,
                *id,
                ops.retention,
                &cli_actor(),
            )
            .await?;
            report_repair(ops, &queue, *id, repair, "deleted")
        }
    }
}

/// What `tasks ls` keeps.
struct Filter<'a> {
    since: Option<DateTime<Utc>>,
    error_contains: Option<&'a str>,
}

impl Filter<'_> {
    fn keeps(&self, t: &TaskInfo) -> bool {
        let when = t.last_failed_at.or(t.enqueued_at);
        self.since
            .is_none_or(|since| when.is_some_and(|w| w >= since))
            && self
                .error_contains
                .is_none_or(|text| t.last_error.as_deref().is_some_and(|e| e.contains(text)))
    }
}

/// Tasks read per round trip while filtering.
const PAGE: u64 = 500;

async fn ls(
    ops: &Ops,
    queue: &str,
    state: TaskState,
    filter: &Filter<'_>,
    limit: usize,
) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut offset = 0;
    while found.len() < limit {
        let page = ops.broker.list(queue, state, offset, PAGE).await?;
        // A page comes back short of PAGE also when a task left between
        // reading the index and its hash: only an empty page is the end.
        if page.is_empty() {
            break;
        }
        found.extend(page.into_iter().filter(|t| filter.keeps(t)));
        offset += PAGE;
    }
    found.truncate(limit);
    if ops.json {
        return print_json(&found);
    }
    let mut t = table([
        "id",
        "kind",
        "retried",
        "enqueued",
        "last failed",
        "last error",
    ]);
    for task in &found {
        t.add_row([
            task.id.to_string(),
            task.kind.clone(),
            format!("{}/{}", task.retried, task.max_retry),
            time(task.enqueued_at),
            time(task.last_failed_at),
            task.last_error.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    println!("{} {state} task(s) of queue {queue}", found.len());
    Ok(())
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".to_owned(), |t| {
        t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
    })
}

/// Where task `id` is in Redis: in `queue` when given, else in its outbox
/// row's queue, else in whichever of WORKER_QUEUES has it. `Err` when it is
/// in none of them, naming where it looked.
async fn locate(ops: &Ops, id: TaskId, queue: Option<&str>) -> anyhow::Result<(String, TaskInfo)> {
    let (found, looked) = find(ops, id, queue).await?;
    found.ok_or_else(|| {
        anyhow::anyhow!(
            "no task {id} in Redis (queues looked in: {})",
            looked.join(", ")
        )
    })
}

/// [`locate`]'s search: the task if found, and the queues looked in.
async fn find(
    ops: &Ops,
    id: TaskId,
    queue: Option<&str>,
) -> anyhow::Result<(Option<(String, TaskInfo)>, Vec<String>)> {
    let mut candidates: Vec<String> = Vec::new();
    match queue {
        Some(q) => candidates.push(ops.queue(q)?.to_owned()),
        None => {
            // The outbox row's queue first: it is where the relay put it,
            // whether or not this shell's WORKER_QUEUES names it.
            if let Some(row) = OutboxEntry::read(ops, id).await? {
                candidates.push(row.queue);
            }
            for QueueWeight { queue: q, .. } in &ops.queues {
                if !candidates.contains(q) {
                    candidates.push(q.clone());
                }
            }
        }
    }
    for queue in &candidates {
        if let Some(task) = ops.broker.task(queue, id).await? {
            return Ok((Some((queue.clone(), task)), candidates));
        }
    }
    Ok((None, candidates))
}

fn report_repair(
    ops: &Ops,
    queue: &str,
    id: TaskId,
    repair: Repair,
    done: &str,
) -> anyhow::Result<()> {
    if ops.json {
        print_json(&serde_json::json!({ "id": id, "queue": queue, "outcome": repair }))?;
    }
    match repair {
        Repair::Done { was } => {
            if !ops.json {
                println!("task {id} of queue {queue} {done} (it was {was})");
            }
            Ok(())
        }
        Repair::NotApplicable { state } => {
            bail!("task {id} of queue {queue} is {state}: nothing changed")
        }
        Repair::Missing => bail!("no task {id} in queue {queue}: nothing changed"),
    }
}

fn report_dry_run(ops: &Ops, queue: &str, tasks: &[TaskInfo]) -> anyhow::Result<()> {
    if ops.json {
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        return print_json(
            &serde_json::json!({ "queue": queue, "dry_run": true, "would_retry": ids }),
        );
    }
    for t in tasks {
        println!(
            "would retry task {} of queue {queue} ({}, {})",
            t.id,
            t.state,
            t.last_error.as_deref().unwrap_or("no error")
        );
    }
    println!("dry run: {} task(s), nothing changed", tasks.len());
    Ok(())
}

async fn retry_archived(ops: &Ops, queue: &str, dry_run: bool, yes: bool) -> anyhow::Result<()> {
    let ids = ops.broker.archived_ids(queue, u64::MAX).await?;
    if dry_run {
        let mut tasks = Vec::with_capacity(ids.len());
        for id in &ids {
            tasks.extend(ops.broker.task(queue, *id).await?);
        }
        return report_dry_run(ops, queue, &tasks);
    }
    confirm(ids.len(), "archived tasks", yes)?;
    let actor = cli_actor();
    let mut retried = Vec::new();
    for id in ids {
        // Another operator (or the trim) may have moved it meanwhile.
        if let Repair::Done { .. } = ops.broker.run_now(queue, id, &actor).await? {
            retried.push(id);
        }
    }
    if ops.json {
        return print_json(&serde_json::json!({ "queue": queue, "retried": retried }));
    }
    println!(
        "retried {} archived task(s) of queue {queue}",
        retried.len()
    );
    Ok(())
}

/// An outbox row as `tasks show` prints it.
#[derive(Serialize)]
struct OutboxEntry {
    kind: String,
    queue: String,
    payload: String,
    max_retry: i32,
    timeout_ms: i64,
    process_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    /// Forwarded to Redis (its queue's position covers it).
    forwarded: bool,
    request_id: Option<String>,
}

impl OutboxEntry {
    async fn read(ops: &Ops, id: TaskId) -> anyhow::Result<Option<Self>> {
        let row = sqlx::query_file!("sql/outbox/by_id.sql", id.get())
            .fetch_optional(&ops.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let position = positions::best_known(&ops.broker, &ops.pool, &r.queue).await?;
        let forwarded = position.covers(RowId {
            txid: r.txid.parse()?,
            id: id.get(),
        });
        Ok(Some(Self {
            kind: r.kind,
            queue: r.queue,
            payload: r.payload,
            max_retry: r.max_retry,
            timeout_ms: r.timeout_ms,
            process_at: r.process_at,
            created_at: r.created_at,
            forwarded,
            request_id: r.request_id,
        }))
    }
}

#[derive(Serialize)]
struct LedgerEntry {
    kind: String,
    completed_at: DateTime<Utc>,
    /// Who deleted the task, when it was deleted rather than run.
    deleted_by: Option<String>,
}

#[derive(Serialize)]
struct VerifyEmailEntry {
    username: String,
    email: String,
    is_used: bool,
    created_at: DateTime<Utc>,
    /// Codes issued, one per send attempt (each kept as a hash).
    codes: i64,
    last_expires_at: Option<DateTime<Utc>>,
}

/// One task everywhere it is recorded.
#[derive(Serialize)]
struct Shown {
    id: TaskId,
    outbox: Option<OutboxEntry>,
    redis: Option<TaskInfo>,
    ledger: Option<LedgerEntry>,
    verify_email: Option<VerifyEmailEntry>,
    /// Every attempt to send its email, and what became of it.
    sends: Vec<crate::tasks::sends::Attempt>,
}

async fn show(ops: &Ops, id: TaskId, queue: Option<&str>) -> anyhow::Result<()> {
    let outbox = OutboxEntry::read(ops, id).await?;
    // A Redis that does not answer is an error, not "no task".
    let redis = find(ops, id, queue).await?.0.map(|(_, task)| task);
    let ledger = sqlx::query_file_as!(LedgerEntry, "sql/ledger/entry.sql", id.get())
        .fetch_optional(&ops.pool)
        .await?;
    let verify_email =
        sqlx::query_file_as!(VerifyEmailEntry, "sql/verify_emails/by_task.sql", id.get())
            .fetch_optional(&ops.pool)
            .await?;
    let sends = crate::tasks::sends::attempts(&ops.pool, id).await?;
    let shown = Shown {
        id,
        outbox,
        redis,
        ledger,
        verify_email,
        sends,
    };
    if shown.outbox.is_none() && shown.redis.is_none() && shown.ledger.is_none() {
        bail!(
            "no task {id}: not in the outbox (kept OUTBOX_RETENTION after dispatch), in Redis or in the ledger"
        );
    }
    if ops.json {
        return print_json(&shown);
    }
    let mut t = table(["record", "field", "value"]);
    for (record, value) in [
        ("outbox row", serde_json::to_value(&shown.outbox)?),
        ("redis task", serde_json::to_value(&shown.redis)?),
        ("ledger", serde_json::to_value(&shown.ledger)?),
        ("verify email", serde_json::to_value(&shown.verify_email)?),
    ] {
        match value {
            serde_json::Value::Object(fields) => {
                for (field, v) in fields {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => "-".to_owned(),
                        other => other.to_string(),
                    };
                    t.add_row([record.to_owned(), field, v]);
                }
            }
            _ => {
                t.add_row([record, "", "(none)"]);
            }
        }
    }
    println!("task {id}");
    println!("{t}");
    if !shown.sends.is_empty() {
        let mut t = table(["attempt", "started", "handed over", "outcome", "detail"]);
        let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or("-".to_owned(), |t| {
                t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
            })
        };
        for send in &shown.sends {
            t.add_row([
                send.attempt.to_string(),
                at(Some(send.started_at)),
                at(send.handed_over_at),
                // No outcome on a handed-over send: still waiting, or its
                // worker stopped waiting.
                send.outcome
                    .clone()
                    .unwrap_or_else(|| "unknown (no reply recorded)".into()),
                send.detail.clone().unwrap_or_default(),
            ]);
        }
        println!("email sends (Message-ID {})", shown.sends[0].message_id);
        println!("{t}");
    }
    Ok(())
}
