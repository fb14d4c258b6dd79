//! Postgres settings.

use std::time::Duration;

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, in_range, postgres_url},
    parse_duration,
};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Postgres")]
pub struct DbConfig {
    /// Postgres URL (postgres://user:password@host:port/db).
    #[arg(
        id = "database_url",
        value_name = "DATABASE_URL",
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// Size of the connection pool.
    #[arg(
        id = "database_max_connections",
        value_name = "DATABASE_MAX_CONNECTIONS",
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering 503.
    #[arg(id = "database_acquire_timeout", value_name = "DATABASE_ACQUIRE_TIMEOUT", long = "database-acquire-timeout", env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub acquire_timeout: Duration,
    /// A direct (not transaction-pooled) URL for the relay's LISTEN connection.
    /// LISTEN does not survive transaction-mode poolers such as PgBouncer.
    /// Defaults to DATABASE_URL.
    #[arg(
        id = "database_listen_url",
        value_name = "DATABASE_LISTEN_URL",
        long = "database-listen-url",
        env = "DATABASE_LISTEN_URL",
        hide_env_values = true
    )]
    pub listen_url: Option<String>,
}

impl DbConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        if let Some(url) = &self.url {
            postgres_url("DATABASE_URL", url)?;
        }
        if let Some(url) = &self.listen_url {
            postgres_url("DATABASE_LISTEN_URL", url)?;
        }
        in_range("DATABASE_MAX_CONNECTIONS", self.max_connections, 1, 10_000)?;
        at_least(
            "DATABASE_ACQUIRE_TIMEOUT",
            self.acquire_timeout,
            Duration::from_millis(10),
        )
    }
}
