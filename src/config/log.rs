//! Logging settings.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogConfig {
    /// Log line format.
    #[arg(id = "log_format", value_name = "LOG_FORMAT", long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax. Default: "info" for the
    /// services; for the one-shot tools, warnings and their audit lines only
    /// (a drain's line per task would bury its progress).
    #[arg(
        id = "log_filter",
        value_name = "LOG_FILTER",
        long = "log-filter",
        env = "RUST_LOG"
    )]
    pub filter: Option<String>,
}
