//! `outbox stats`: the undispatched rows and the age of the oldest (a stuck
//! relay shows here first), and the dispatched rows kept for redelivery.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Ops, human, print_json, table};
use crate::outbox::stats::{self, OutboxStats};

#[derive(Debug, Clone, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub action: OutboxAction,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum OutboxAction {
    /// Undispatched rows, the oldest one's age, dispatched rows kept.
    Stats,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    backlog: OutboxStats,
    /// Dispatched rows still kept (OUTBOX_RETENTION): what
    /// `relay --once --redeliver-since` can send again.
    dispatched_kept: u64,
}

pub async fn run(ops: &Ops, args: &OutboxArgs) -> anyhow::Result<()> {
    match args.action {
        OutboxAction::Stats => {
            let (backlog, dispatched_kept) = tokio::try_join!(
                OutboxStats::read(&ops.pool),
                stats::dispatched_count(&ops.pool)
            )?;
            let report = Report {
                backlog,
                dispatched_kept,
            };
            if ops.json {
                return print_json(&report);
            }
            let mut t = table(["undispatched", "oldest waits", "dispatched, kept"]);
            t.add_row([
                report.backlog.undispatched_text(),
                report.backlog.oldest_age.map_or("-".to_owned(), human),
                report.dispatched_kept.to_string(),
            ]);
            println!("{t}");
            Ok(())
        }
    }
}
