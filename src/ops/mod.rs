//! The operator's commands: `queues` (counts, latency, pause and resume),
//! `tasks` (list, show, retry, delete), `outbox stats`, and the recovery
//! drain `relay --once` ([`drain`]). Human tables by
//! default, `--json` for scripts. Every change goes through the queue
//! broker, which logs one audit line naming the user who asked.

pub mod drain;
pub mod outbox;
pub mod queues;
pub mod tasks;

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use comfy_table::Table;
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    app::Clients,
    config::Config,
    queue::{Broker, QueueWeight},
};

/// What every operator command works with.
pub struct Ops {
    pub pool: PgPool,
    pub broker: Broker,
    /// WORKER_QUEUES, highest weight first: the queues a command may name.
    pub queues: Vec<QueueWeight>,
    /// `--json`: one JSON document on stdout instead of a table.
    pub json: bool,
    /// How long a deleted task's tombstone stays (WORKER_DONE_RETENTION).
    pub retention: std::time::Duration,
}

impl Ops {
    pub fn new(cfg: &Config, json: bool) -> anyhow::Result<Self> {
        let clients = Clients::new(cfg)?;
        Ok(Self {
            pool: clients.pool,
            broker: clients.broker,
            queues: cfg.worker.queues.by_priority(),
            json,
            retention: cfg.worker.done_retention,
        })
    }

    /// `name`, when it is one of WORKER_QUEUES: a typo must not pause, or
    /// search, a queue no worker serves.
    pub fn queue<'a>(&self, name: &'a str) -> anyhow::Result<&'a str> {
        if self.queues.iter().any(|q| q.queue == name) {
            return Ok(name);
        }
        let known: Vec<&str> = self.queues.iter().map(|q| q.queue.as_str()).collect();
        bail!(
            "queue {name:?} is not one of WORKER_QUEUES ({})",
            known.join(", ")
        )
    }
}

/// Who asks, for the audit lines: the user at the terminal.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// `value` as pretty JSON on stdout.
fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A table with `header`, for people.
fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut t = Table::new();
    t.set_header(header);
    t
}

/// Asks before changing `n` things at once; `yes` answers for the user.
/// Without a terminal to ask on, refuses rather than assume.
fn confirm(n: usize, what: &str, yes: bool) -> anyhow::Result<()> {
    if yes || n <= 1 {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("{n} {what} would change; pass --yes to confirm (no terminal to ask on)");
    }
    eprint!("{n} {what} will change. Go on? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("nothing changed");
    }
    Ok(())
}

/// A duration as people read it: 2m 5s, 340ms.
fn human(d: std::time::Duration) -> String {
    let rounded = match d.as_secs() {
        0 => std::time::Duration::from_millis(d.as_millis() as u64),
        _ => std::time::Duration::from_secs(d.as_secs()),
    };
    humantime::format_duration(rounded).to_string()
}
