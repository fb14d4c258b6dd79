//! Logging: pretty lines in a terminal, one JSON object per line with
//! `LOG_FORMAT=json`. Spans carry the request id and task id, so every line a
//! request or task causes can be found by it.

use tracing_subscriber::{
    EnvFilter, fmt, fmt::writer::BoxMakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat};

/// What a service logs when RUST_LOG does not say.
const SERVICE_FILTER: &str = "info";
/// What a one-shot tool logs when RUST_LOG does not say: warnings, the
/// audit line of each change, and the migration's outcome.
const TOOL_FILTER: &str = "warn,audit=info,simplebank::db=info";

/// Sets up logging. A service logs to stdout, where its collector reads;
/// a one-shot `tool` (`queues --json`, `relay --once`) logs to stderr, so
/// that its stdout is only its output, and by default less.
pub fn init(cfg: &LogConfig, tool: bool) -> anyhow::Result<()> {
    let to_stderr = tool;
    let default = if tool { TOOL_FILTER } else { SERVICE_FILTER };
    let filter = EnvFilter::try_new(cfg.filter.as_deref().unwrap_or(default))
        .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let writer = BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        match to_stderr {
            true => Box::new(std::io::stderr()),
            false => Box::new(std::io::stdout()),
        }
    });
    match cfg.format {
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_writer(writer))
            .try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()?,
    }
    Ok(())
}
