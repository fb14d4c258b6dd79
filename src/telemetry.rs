//! Logging: pretty lines in a terminal, one JSON object per line with
//! `LOG_FORMAT=json`. Spans carry the request id and task id, so every line a
//! request or task causes can be found by it.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.filter)
        .map_err(|e| anyhow::anyhow!("RUST_LOG is not a valid filter: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.format {
        LogFormat::Pretty => registry.with(fmt::layer().compact()).try_init()?,
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()?,
    }
    Ok(())
}
