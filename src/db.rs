//! The Postgres pool and the embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgPool, migrate::Migrator, postgres::PgPoolOptions};

use crate::config::DbConfig;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// A connection idle longer than this is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A lazily connecting pool of up to `max_connections`: the process starts even
/// while Postgres is down, and requests that need it answer 503 until it is
/// back.
///
/// A connection is checked with a ping only when it sat idle for a while
/// (when a restart or a dropped link may have killed it unnoticed). Under
/// load connections go straight back to work, and a ping per request would
/// be one more round trip beside the four of a sign-up.
pub fn pool(cfg: &DbConfig, url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(cfg.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy(url)?)
}

/// Applies pending migrations. Safe to run from several processes at once:
/// sqlx serialises them with an advisory lock.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.with_context(|| {
        // sqlx's pool time-out does not say where it tried to connect.
        let at = pool.connect_options();
        format!(
            "migrating the database at {}:{}",
            at.get_host(),
            at.get_port()
        )
    })?;
    tracing::info!("db migrated successfully");
    Ok(())
}
