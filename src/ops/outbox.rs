//! `outbox stats`: the undispatched rows and the age of the oldest (a stuck
//! relay shows here first), and about how many rows are kept for
//! redelivery.

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
    /// Undispatched rows, the oldest one's age, about how many rows are kept.
    Stats,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    backlog: OutboxStats,
    /// About how many rows are kept (OUTBOX_RETENTION), forwarded or not:
    /// what `relay --once --redeliver-since` can send again. Postgres's
    /// estimate as of its last ANALYZE; a count would read every row.
    kept_estimate: u64,
}

pub async fn run(ops: &Ops, args: &OutboxArgs) -> anyhow::Result<()> {
    match args.action {
        OutboxAction::Stats => {
            let backlog = OutboxStats::read(&ops.pool, &ops.broker).await?;
            let kept_estimate = stats::kept_estimate(&ops.pool).await?;
            let report = Report {
                backlog,
                kept_estimate,
            };
            if ops.json {
                return print_json(&report);
            }
            let mut t = table(["undispatched", "oldest waits", "kept (about)"]);
            t.add_row([
                report.backlog.undispatched_text(),
                report.backlog.oldest_age.map_or("-".to_owned(), human),
                report.kept_estimate.to_string(),
            ]);
            println!("{t}");
            Ok(())
        }
    }
}
