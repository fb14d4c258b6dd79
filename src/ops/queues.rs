//! `queues`: each queue's counts per state, latency and pause (`--watch` to
//! follow them); `queues pause Q` and `queues resume Q`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Ops, cli_actor, human, print_json, table};
use crate::{
    config::parse_duration,
    queue::{QueueStats, QueueWeight},
};

#[derive(Debug, Clone, Args)]
pub struct QueuesArgs {
    #[command(subcommand)]
    pub action: Option<QueuesAction>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print again every INTERVAL (default 2s) until interrupted.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration, num_args = 0..=1, default_missing_value = "2s")]
    pub watch: Option<Duration>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum QueuesAction {
    /// Stop handing out the queue's tasks (running ones finish).
    Pause { queue: String },
    /// Hand out the queue's tasks again.
    Resume { queue: String },
}

/// One queue's line.
#[derive(Serialize)]
struct QueueLine {
    queue: String,
    weight: u32,
    #[serde(flatten)]
    stats: QueueStats,
}

pub async fn run(ops: &Ops, args: &QueuesArgs) -> anyhow::Result<()> {
    match &args.action {
        Some(QueuesAction::Pause { queue }) => {
            let queue = ops.queue(queue)?;
            let changed = ops.broker.pause(queue, &cli_actor()).await?;
            report(ops, queue, "paused", changed, "was paused already")
        }
        Some(QueuesAction::Resume { queue }) => {
            let queue = ops.queue(queue)?;
            let changed = ops.broker.resume(queue, &cli_actor()).await?;
            report(ops, queue, "resumed", changed, "was not paused")
        }
        None => match args.watch {
            None => show(ops, false).await,
            Some(every) => watch(ops, every).await,
        },
    }
}

/// Shows the queues every `every` until Ctrl-C, which ends a read under
/// way too (Redis may not answer). A failed read is shown and tried again.
async fn watch(ops: &Ops, every: Duration) -> anyhow::Result<()> {
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let pass = async {
            if let Err(e) = show(ops, true).await {
                eprintln!("error: {}", crate::queue::one_line(e.as_ref()));
            }
            tokio::time::sleep(every).await;
        };
        tokio::select! {
            _ = pass => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}

fn report(
    ops: &Ops,
    queue: &str,
    done: &str,
    changed: bool,
    unchanged: &str,
) -> anyhow::Result<()> {
    if ops.json {
        return print_json(
            &serde_json::json!({ "queue": queue, "action": done, "changed": changed }),
        );
    }
    match changed {
        true => println!("queue {queue} {done}"),
        false => println!("queue {queue} {unchanged}: nothing changed"),
    }
    Ok(())
}

async fn show(ops: &Ops, watching: bool) -> anyhow::Result<()> {
    let mut lines = Vec::with_capacity(ops.queues.len());
    for QueueWeight { queue, weight } in &ops.queues {
        lines.push(QueueLine {
            queue: queue.clone(),
            weight: *weight,
            stats: ops.broker.stats(queue).await?,
        });
    }
    if ops.json {
        // One document per refresh, one per line when watching (NDJSON).
        if watching {
            println!("{}", serde_json::to_string(&lines)?);
            return Ok(());
        }
        return print_json(&lines);
    }
    let mut t = table([
        "queue",
        "weight",
        "state",
        "pending",
        "active",
        "scheduled",
        "retry",
        "archived",
        "latency",
    ]);
    for l in &lines {
        let s = &l.stats;
        t.add_row([
            l.queue.clone(),
            l.weight.to_string(),
            match (s.paused, s.held_back) {
                (true, _) => "paused",
                // A worker's breaker: its tasks keep finding what they need down.
                (false, true) => "held back",
                (false, false) => "running",
            }
            .to_owned(),
            s.pending.to_string(),
            s.active.to_string(),
            s.scheduled.to_string(),
            s.retry.to_string(),
            s.archived.to_string(),
            s.latency.map_or("-".to_owned(), human),
        ]);
    }
    if watching && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // Clear the screen and go home, as `watch` does.
        print!("\x1b[2J\x1b[H");
    }
    println!("{t}");
    Ok(())
}
