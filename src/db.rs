//! The Postgres pool and the embedded migrations.

use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};

use crate::config::DbConfig;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A lazily connecting pool: the process starts even while Postgres is down, and
/// requests that need it answer 503 until it is back.
pub fn pool(cfg: &DbConfig, url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(cfg.database_max_connections)
        .acquire_timeout(cfg.database_acquire_timeout)
        .connect_lazy(url)?)
}

/// Applies pending migrations. Safe to run from several processes at once:
/// sqlx serialises them with an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    tracing::info!("db migrated successfully");
    Ok(())
}
