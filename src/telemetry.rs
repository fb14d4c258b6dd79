//! Logging: pretty lines in a terminal, one JSON object per line with
//! `LOG_FORMAT=json`. Spans carry the request id and task id, so every line a
//! request or task causes can be found by it.

use tracing_subscriber::{
    EnvFilter, fmt, fmt::writer::BoxMakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::{LogConfig, LogFormat};

/// Sets up logging. A service logs to stdout, where its collector reads;
/// a one-shot tool (`queues --json`, `relay --once`) logs to stderr, so
/// that its stdout is only its output.
pub fn init(cfg: &LogConfig, to_stderr: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.filter)
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
