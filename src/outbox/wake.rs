//! Waking relays after a commit.
//!
//! A NOTIFY inside the sign-up transaction would serialize every commit on
//! Postgres's global notify lock (measured here: about half the commit rate).
//! So the writer wakes relays after its commit instead: the relay of its own
//! process directly, and relays of other processes with one `pg_notify` sent
//! from a background task, coalesced to at most one per `RELAY_NOTIFY_COALESCE`.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::NOTIFY_CHANNEL;

/// Cheap to clone; call [`RelayWaker::wake`] after committing outbox rows.
#[derive(Clone)]
pub struct RelayWaker {
    /// The relay of this process waits on it.
    pub(crate) local: Arc<Notify>,
    /// The pg_notify sender waits on it.
    remote: Arc<Notify>,
    /// Sent as the notification's payload, so that the relay of this process,
    /// already woken directly, can ignore its own process's notifications.
    pub(crate) origin: Arc<str>,
}

impl Default for RelayWaker {
    fn default() -> Self {
        Self {
            local: Arc::default(),
            remote: Arc::default(),
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }
}

impl RelayWaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the local relay and schedules one coalesced pg_notify. Never
    /// blocks: `Notify` keeps one pending permit, so a burst of commits costs
    /// one wake-up.
    pub fn wake(&self) {
        self.local.notify_one();
        self.remote.notify_one();
    }

    /// Sends the coalesced pg_notify until `shutdown`. A failed notify is only
    /// logged: the relays' poll picks the rows up anyway.
    pub async fn run_notifier(self, pool: PgPool, coalesce: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.remote.notified() => {}
            }
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(&*self.origin)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "pg_notify failed; relays will poll");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(coalesce) => {}
            }
        }
    }
}
