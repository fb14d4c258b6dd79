//! Waking relays after a commit: both halves, the writer's
//! ([`RelayWaker::wake`], called by [`super::write::OutboxTx::commit`]) and the
//! relay's ([`RelayWaker::wake_ups`]).
//!
//! A NOTIFY inside the sign-up transaction would serialize every commit on
//! Postgres's global notify lock (measured here: about half the commit rate).
//! So the writer wakes relays after its commit instead: the relay of its own
//! process directly, and relays of other processes with one `pg_notify` sent
//! from a background task, coalesced to at most one per `RELAY_NOTIFY_COALESCE`.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::{sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::NOTIFY_CHANNEL;
use crate::queue::Outage;

/// Cheap to clone; call [`RelayWaker::wake`] after committing outbox rows.
#[derive(Clone)]
pub struct RelayWaker {
    /// The relay of this process waits on it.
    local: Arc<Notify>,
    /// The pg_notify sender waits on it.
    remote: Arc<Notify>,
    /// Sent as the notification's payload, so that the relay of this process,
    /// already woken directly, can ignore its own process's notifications.
    origin: Arc<str>,
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

impl RelayWaker {
    /// The relay's half: wake-ups from this process's commits, and from other
    /// processes' through LISTEN on `listen_url` (a direct connection; LISTEN
    /// does not survive transaction-mode poolers), until `shutdown`.
    pub fn wake_ups(
        &self,
        listen_url: String,
        max_backoff: Duration,
        shutdown: CancellationToken,
    ) -> WakeUps {
        let remote = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            listen_url,
            self.origin.clone(),
            remote.clone(),
            max_backoff,
            shutdown,
        ));
        WakeUps {
            local: self.local.clone(),
            remote,
            listener,
        }
    }
}

/// What wakes one relay. Each source keeps one pending permit, so a burst of
/// commits while the relay works costs it one more pass per source at most.
pub struct WakeUps {
    local: Arc<Notify>,
    remote: Arc<Notify>,
    listener: JoinHandle<()>,
}

impl WakeUps {
    /// Resolves at the next wake-up from either source.
    pub async fn next(&self) {
        tokio::select! {
            _ = self.local.notified() => {}
            _ = self.remote.notified() => {}
        }
    }

    /// Waits for the listener to stop (it stops at the shutdown it was given).
    pub async fn stopped(self) {
        let _ = self.listener.await;
    }
}

/// LISTENs for commits of other processes and wakes the relay. Runs on its own
/// direct connection, re-established when lost (the relay is woken then too,
/// since notifications may have been missed meanwhile).
async fn listen(
    url: String,
    own_origin: Arc<str>,
    wake: Arc<Notify>,
    max_backoff: Duration,
    shutdown: CancellationToken,
) {
    let mut listener: Option<PgListener> = None;
    let mut outage = Outage::new(
        "relay listener cannot reach postgres; polling meanwhile",
        "relay listener connected again",
        Duration::from_millis(100),
        max_backoff,
    );
    loop {
        let l = match listener.as_mut() {
            Some(l) => l,
            None => {
                let connected = async {
                    let mut l = PgListener::connect(&url).await?;
                    l.listen(NOTIFY_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match connected.await {
                    Ok(l) => {
                        outage.up();
                        wake.notify_one();
                        listener.insert(l)
                    }
                    Err(e) => {
                        if outage.pause("postgres", &e, &shutdown).await.is_break() {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = l.try_recv() => match msg {
                // This process's own commits woke the relay directly already.
                Ok(Some(n)) if n.payload() == &*own_origin => {}
                Ok(Some(_)) => wake.notify_one(),
                // The connection dropped; the next try_recv reconnects.
                Ok(None) => wake.notify_one(),
                Err(e) => {
                    // Reconnect at once; failures to do so back off.
                    outage.down("postgres", &e);
                    listener = None;
                }
            },
        }
    }
}
