//! `relay --once`: the recovery drain. Forwards everything undispatched
//! (and, with `--redeliver-since`, re-forwards what was dispatched in a
//! window, after Redis lost data), prints a summary and exits.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::{
    app::Clients,
    config::Config,
    outbox::{relay::Relay, stats::OutboxStats},
};

/// Drains the outbox once; `redeliver_since` also re-forwards the rows
/// dispatched in that window. Tasks that already ran are skipped by the
/// workers' ledger.
pub async fn run(cfg: &Config, redeliver_since: Option<Duration>) -> anyhow::Result<()> {
    let clients = Clients::new(cfg)?;
    let relay = clients.relay(cfg)?;
    let started = Instant::now();
    // On a terminal, a line that shows the drain going on.
    let progress = match std::io::stderr().is_terminal() {
        true => Some(Progress::start(relay.clone(), &clients).await),
        false => None,
    };
    // A failed batch rolls back: what was not forwarded stays in the
    // outbox for the next run, which the message says.
    let drained = relay.drain(&CancellationToken::new()).await;
    // Where it got to, for retention and later redeliveries.
    relay.checkpoint().await;
    drop(progress);
    let drained = drained.context("forwarding stopped; the rest stays in the outbox")?;
    let forwarded = drained.forwarded;
    if let Some(e) = drained.failed {
        return Err(anyhow::Error::new(e).context(format!(
            "forwarded {forwarded} rows, but a queue refused its rows; they stay in the outbox"
        )));
    }
    let redelivered = match redeliver_since {
        Some(window) => relay
            .redeliver_since(window)
            .await
            .context("redelivery stopped; run it again")?,
        None => 0,
    };
    let took = started.elapsed();
    println!(
        "relay: forwarded {forwarded} rows, redelivered {redelivered} in {:.3}s ({:.0} rows/s)",
        took.as_secs_f64(),
        (forwarded + redelivered) as f64 / took.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// A long drain's progress on the terminal, on one line rewritten twice a
/// second: rows forwarded, the rate, and how long the rest should take.
/// Dropped, it stops and ends its line.
struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    async fn start(relay: Relay, clients: &Clients) -> Self {
        let backlog = OutboxStats::read(&clients.pool, &clients.broker)
            .await
            .ok()
            .map(|s| s.undispatched);
        match backlog {
            Some(total) => eprint!("relay: {total} undispatched rows to forward"),
            None => eprint!("relay: forwarding"),
        }
        let started = Instant::now();
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let done = relay.forwarded_so_far();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
                let left = match backlog {
                    Some(total) if rate > 0.0 => {
                        let left = total.saturating_sub(done);
                        format!(
                            ", about {left} of {total} left (~{:.0}s)",
                            left as f64 / rate
                        )
                    }
                    _ => String::new(),
                };
                eprint!("\r\x1b[Krelay: {done} rows forwarded, {rate:.0} rows/s{left}");
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
        eprintln!();
    }
}
