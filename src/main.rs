//! The `simplebank` command: serve | relay [--once] | worker | migrate, and
//! the operator's queues | tasks | outbox.

use std::{io::IsTerminal, process::ExitCode, time::Duration, time::Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use simplebank::{
    app::{self, Clients, Components},
    config::{
        Config, LogFormat, parse_duration,
        scoped::{ForMigrate, ForQueues, ForRelay, ForWorker},
        validate::Role,
    },
    db,
    ops::{self, Ops, outbox::OutboxArgs, queues::QueuesArgs, tasks::TasksArgs},
    telemetry,
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "simplebank",
    version,
    about = "Sign-up service with a transactional outbox to Redis task queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the outbox relay and the worker in one process (migrates first).
    Serve {
        #[command(flatten)]
        cfg: Box<Config>,
    },
    /// Forward committed outbox rows to Redis.
    Relay {
        #[command(flatten)]
        cfg: Box<ForRelay>,
        /// Forward everything undispatched, print a summary and exit (the recovery tool).
        #[arg(long)]
        once: bool,
        /// With --once: also re-forward the rows dispatched in this window (e.g. 15m),
        /// after Redis lost data. Tasks that already ran are skipped by the ledger.
        #[arg(long, requires = "once", value_parser = parse_duration)]
        redeliver_since: Option<Duration>,
    },
    /// Run the task worker alone.
    Worker {
        #[command(flatten)]
        cfg: Box<ForWorker>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        cfg: ForMigrate,
    },
    /// Task counts, latency and pause per queue; pause or resume a queue.
    Queues {
        #[command(flatten)]
        args: QueuesArgs,
        #[command(flatten)]
        cfg: Box<ForQueues>,
    },
    /// List, show, retry or delete tasks.
    Tasks {
        #[command(flatten)]
        args: TasksArgs,
        #[command(flatten)]
        cfg: Box<ForQueues>,
    },
    /// The outbox's backlog.
    Outbox {
        #[command(flatten)]
        args: OutboxArgs,
        #[command(flatten)]
        cfg: Box<ForQueues>,
    },
}

impl Command {
    /// What this command runs, for the settings it must allow.
    fn role(&self) -> Role {
        match self {
            Command::Serve { .. } => Role::Serve,
            Command::Worker { .. } => Role::Worker,
            Command::Relay { once: false, .. } => Role::Relay,
            Command::Relay { once: true, .. }
            | Command::Migrate { .. }
            | Command::Queues { .. }
            | Command::Tasks { .. }
            | Command::Outbox { .. } => Role::Tool,
        }
    }

    /// The settings this command runs with: its own, the rest at defaults.
    fn config(&self) -> Config {
        match self {
            Command::Serve { cfg } => (**cfg).clone(),
            Command::Relay { cfg, .. } => (**cfg).clone().into(),
            Command::Worker { cfg } => (**cfg).clone().into(),
            Command::Migrate { cfg } => cfg.clone().into(),
            Command::Queues { cfg, .. }
            | Command::Tasks { cfg, .. }
            | Command::Outbox { cfg, .. } => (**cfg).clone().into(),
        }
    }
}

fn main() -> ExitCode {
    // A .env file is optional; one that does not parse is an error worth a line.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: .env: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let cfg = cli.command.config();
    let json_logs = cfg.log.format == LogFormat::Json;
    // A bad setting: one line naming it, and exit code 2, as for a setting
    // the parser refused.
    let warnings = match cfg.validate(cli.command.role()) {
        Ok(warnings) => warnings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(&cfg.log, cli.command.role() == Role::Tool) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: in the log stream where that is JSON for a collector,
            // else plainly on stderr for the person at the terminal.
            let e = error_chain(&e);
            if json_logs {
                tracing::error!(error = e, "exiting");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Many errors print their source as
/// part of their own message (sqlx's do), so a cause already contained in
/// the message before it is left out rather than repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if !previous.contains(&msg) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&msg);
        }
        previous = msg;
    }
    line
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => run_until_signal(&cfg, Components::ALL).await,
        Command::Worker { .. } => {
            run_until_signal(
                &cfg,
                Components {
                    api: false,
                    relay: false,
                    worker: true,
                },
            )
            .await
        }
        Command::Relay { once: false, .. } => {
            run_until_signal(
                &cfg,
                Components {
                    api: false,
                    relay: true,
                    worker: false,
                },
            )
            .await
        }
        Command::Relay {
            once: true,
            redeliver_since,
            ..
        } => {
            let clients = Clients::new(&cfg)?;
            let relay = clients.relay(&cfg)?;
            let started = Instant::now();
            // On a terminal, a line that shows the drain going on.
            let progress = match std::io::stderr().is_terminal() {
                true => Some(Progress::start(relay.clone(), &clients.pool).await),
                false => None,
            };
            // A failed batch rolls back: what was not forwarded stays in the
            // outbox for the next run, which the message says.
            let drained = relay.drain(&CancellationToken::new()).await;
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
        Command::Migrate { .. } => db::migrate(&Clients::new(&cfg)?.pool).await,
        Command::Queues { args, .. } => ops::queues::run(&Ops::new(&cfg, args.json)?, &args).await,
        Command::Tasks { args, .. } => ops::tasks::run(&Ops::new(&cfg, args.json)?, &args).await,
        Command::Outbox { args, .. } => ops::outbox::run(&Ops::new(&cfg, args.json)?, &args).await,
    }
}

/// A long drain's progress on the terminal, on one line rewritten twice a
/// second: rows forwarded, the rate, and how long the rest should take.
/// Dropped, it stops and ends its line.
struct Progress(tokio::task::JoinHandle<()>);

impl Progress {
    async fn start(relay: simplebank::outbox::relay::Relay, pool: &sqlx::PgPool) -> Self {
        let backlog = simplebank::outbox::stats::OutboxStats::read(pool)
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

/// Runs `components` until SIGINT or SIGTERM, then shuts them down gracefully.
async fn run_until_signal(cfg: &Config, components: Components) -> anyhow::Result<()> {
    // Listen before starting: a signal during start-up (say, a long migration)
    // ends the process cleanly too, instead of killing it.
    let mut signal = Box::pin(shutdown_signal()?);
    let running = tokio::select! {
        running = app::start(cfg, components) => running?,
        _ = &mut signal => {
            tracing::info!("shutdown signal received during start-up");
            return Ok(());
        }
    };
    let stop = running.shutdown_token();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutdown signal received");
        stop.cancel();
    });
    running.wait().await
}

/// Resolves on the first SIGINT or SIGTERM; the handlers are installed on call.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
