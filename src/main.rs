//! The `simplebank` command: serve | relay [--once] | worker | migrate, and
//! the operator's queues | tasks | outbox.

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use simplebank::{
    app::{self, Clients, Components},
    config::{
        Config, LogFormat, parse_duration,
        scoped::{ForMigrate, ForQueues, ForRelay, ForWorker},
    },
    db,
    ops::{self, Ops, outbox::OutboxArgs, queues::QueuesArgs, tasks::TasksArgs},
    telemetry,
};

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
    /// What this command runs: its settings are checked for it, and it
    /// starts them. The rest are one-shot tools, which run none.
    fn components(&self) -> Components {
        match self {
            Command::Serve { .. } => Components::ALL,
            Command::Worker { .. } => Components::WORKER,
            Command::Relay { once: false, .. } => Components::RELAY,
            Command::Relay { once: true, .. }
            | Command::Migrate { .. }
            | Command::Queues { .. }
            | Command::Tasks { .. }
            | Command::Outbox { .. } => Components::NONE,
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
    let warnings = match cfg.validate(cli.command.components()) {
        Ok(warnings) => warnings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry =
        match telemetry::init(&cfg.log, &cfg.tracing, cli.command.components().is_tool()) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {}", simplebank::queue::one_line(e.as_ref()));
                return ExitCode::FAILURE;
            }
        };
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
    let outcome = runtime.block_on(run(cli.command, cfg));
    // Tasks still holding spans end with the runtime; then the last spans
    // go out before the process ends.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: in the log stream where that is JSON for a collector,
            // else plainly on stderr for the person at the terminal.
            let e = simplebank::queue::one_line(e.as_ref());
            if json_logs {
                tracing::error!(error = e, "exiting");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } | Command::Worker { .. } | Command::Relay { once: false, .. } => {
            run_until_signal(&cfg, command.components()).await
        }
        Command::Relay {
            once: true,
            redeliver_since,
            ..
        } => ops::drain::run(&cfg, redeliver_since).await,
        Command::Migrate { .. } => db::migrate(&Clients::new(&cfg)?.pool).await,
        Command::Queues { args, .. } => ops::queues::run(&Ops::new(&cfg, args.json)?, &args).await,
        Command::Tasks { args, .. } => ops::tasks::run(&Ops::new(&cfg, args.json)?, &args).await,
        Command::Outbox { args, .. } => ops::outbox::run(&Ops::new(&cfg, args.json)?, &args).await,
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
