//! Wiring and lifecycle: builds the shared clients, starts the chosen
//! components on one `TaskTracker` under one `CancellationToken`, and stops them
//! in order.

mod clients;
mod components;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::{
    clients::{Clients, PoolFor},
    components::Components,
};
use crate::{
    admin::Dashboard,
    config::Config,
    db, events,
    http::{self, health::Probes},
    mail::Mailer,
    metrics::{self, Scrape},
    outbox::{Outbox, wake::RelayWaker},
    queue::WorkerServer,
    tasks::{self, ledger::PgLedger},
    users::{password::PasswordHasher, signup::SignUps},
};

/// A started process; stop it with [`RunningApp::shutdown`] and [`RunningApp::wait`].
pub struct RunningApp {
    /// Where the API listens, when it runs.
    pub http_addr: Option<SocketAddr>,
    /// Where /healthz, /readyz and /metrics are served, when ADMIN_ADDR is set.
    pub admin_addr: Option<SocketAddr>,
    pub clients: Clients,
    pub waker: RelayWaker,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

/// Starts `components`, one after the other. `serve` migrates first, so a
/// fresh database just works.
pub async fn start(cfg: &Config, components: Components) -> anyhow::Result<RunningApp> {
    // Checked before anything starts (main checked already; tests and other
    // embedders start here).
    for warning in cfg.validate(components)? {
        tracing::warn!("{warning}");
    }
    // Installed before anything is counted.
    metrics::handle();
    let mut app = RunningApp::new(cfg, Clients::new(cfg)?);
    match start_components(&mut app, cfg, components).await {
        Ok(()) => Ok(app),
        Err(e) => {
            // What started before the failure stops with it.
            app.shutdown();
            Err(e)
        }
    }
}

/// Starts `components` on `app`, one after the other.
async fn start_components(
    app: &mut RunningApp,
    cfg: &Config,
    components: Components,
) -> anyhow::Result<()> {
    let scrape = Scrape::new(
        components
            .relay
            .then(|| (app.clients.pool.clone(), app.clients.broker.clone())),
        components
            .worker
            .then(|| (app.clients.broker.clone(), cfg.worker.queues.names())),
    );
    // Built before any listener binds: a bad mail setting stops the start.
    let worker = components
        .worker
        .then(|| worker(cfg, &app.clients))
        .transpose()?;
    if components.api {
        app.http_addr = Some(app.start_api(cfg, &scrape).await?);
    }
    if let Some(addr) = cfg.admin.addr {
        // A relay process is not ready while the outbox does not flow. A
        // serve process stays ready: taking it out of the load balancer
        // would stop the sign-ups the outbox keeps safe while Redis is away
        // (the outbox alert says it instead).
        let outbox_max_age =
            (components.relay && !components.api).then_some(cfg.relay.ready_max_age);
        app.admin_addr = Some(app.start_admin(cfg, addr, outbox_max_age, scrape).await?);
    }
    if components.relay {
        app.start_relay(cfg)?;
    }
    if let Some(worker) = worker {
        app.tracker.spawn(worker.run(app.shutdown.clone()));
    }
    app.tracker.close();
    Ok(())
}

/// The worker server with this service's handlers, ledger and metrics.
fn worker(cfg: &Config, clients: &Clients) -> anyhow::Result<WorkerServer> {
    let mailer = Mailer::from_config(&cfg.mail)?;
    let registry = tasks::registry(PoolFor::Handlers.open(cfg)?, mailer, cfg);
    let subscriber = cfg.redis.connection().subscriber()?;
    Ok(WorkerServer::new(
        clients.worker_broker(cfg)?,
        subscriber,
        cfg.worker.server_settings(),
        registry,
    )
    .with_ledger(PgLedger::new(PoolFor::Ledger.open(cfg)?))
    .with_observer(Arc::new(events::Announced)))
}

impl RunningApp {
    fn new(cfg: &Config, clients: Clients) -> Self {
        Self {
            http_addr: None,
            admin_addr: None,
            clients,
            waker: RelayWaker::new(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            grace: cfg.http.shutdown_grace.max(cfg.worker.shutdown_grace) + Duration::from_secs(5),
        }
    }

    /// Migrates, then serves the API and sends the relays' pg_notify.
    async fn start_api(&self, cfg: &Config, scrape: &Scrape) -> anyhow::Result<SocketAddr> {
        let Clients { pool, broker } = &self.clients;
        db::migrate(pool).await?;
        let outbox = Outbox::new(pool.clone(), self.waker.clone());
        let state = http::AppState {
            pool: pool.clone(),
            broker: broker.clone(),
            signups: SignUps::new(
                outbox,
                PasswordHasher::new(&cfg.signup)?,
                cfg.signup.clone(),
                cfg.retention.idempotency_ttl,
            ),
            // With ADMIN_ADDR set, /metrics is served there only: queue
            // names and counts are no business of the public port.
            scrape: cfg.admin.addr.is_none().then(|| scrape.clone()),
        };
        let listener = tokio::net::TcpListener::bind(cfg.http.addr)
            .await
            .with_context(|| format!("binding HTTP_ADDR {}", cfg.http.addr))?;
        let addr = listener.local_addr()?;
        let dashboard = Dashboard::new(cfg, broker.clone(), pool.clone());
        let router = http::router(state, &cfg.http, Some(dashboard));
        let (stop, http_cfg) = (self.shutdown.clone(), cfg.http.clone());
        self.tracker.spawn(async move {
            tracing::info!(%addr, "start HTTP server");
            http::serve::serve(listener, router, &http_cfg, stop).await;
            tracing::info!("HTTP server stopped");
        });
        self.tracker.spawn(self.waker.clone().run_notifier(
            pool.clone(),
            cfg.relay.notify_coalesce,
            self.shutdown.clone(),
        ));
        Ok(addr)
    }

    /// Serves /healthz, /readyz and /metrics on `addr` (ADMIN_ADDR); /readyz
    /// also fails once the oldest outbox row is older than `outbox_max_age`.
    async fn start_admin(
        &self,
        cfg: &Config,
        addr: SocketAddr,
        outbox_max_age: Option<Duration>,
        scrape: Scrape,
    ) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding ADMIN_ADDR {addr}"))?;
        let addr = listener.local_addr()?;
        let mut probes = Probes::new(self.clients.pool.clone(), self.clients.broker.clone());
        if let Some(max_age) = outbox_max_age {
            probes = probes.with_outbox_max_age(max_age);
        }
        let router = http::ops::router(probes, scrape);
        let (stop, http_cfg) = (self.shutdown.clone(), cfg.http.clone());
        self.tracker.spawn(async move {
            tracing::info!(%addr, "start admin listener (/healthz, /readyz, /metrics)");
            http::serve::serve(listener, router, &http_cfg, stop).await;
        });
        Ok(addr)
    }

    /// Forwards the outbox, woken by this process's commits and by LISTEN on
    /// DATABASE_LISTEN_URL (DATABASE_URL when unset).
    fn start_relay(&self, cfg: &Config) -> anyhow::Result<()> {
        let listen_url = match &cfg.db.listen_url {
            Some(url) => url.clone(),
            None => cfg.database_url()?.to_owned(),
        };
        let relay = self.clients.relay(cfg)?;
        self.tracker
            .spawn(relay.run(self.waker.clone(), listen_url, self.shutdown.clone()));
        // Pruning beside the relay, in a loop of its own: slow deletes never
        // hold up forwarding.
        let retention =
            crate::retention::Retention::new(PoolFor::Retention.open(cfg)?, cfg.retention.clone());
        self.tracker.spawn(retention.run(self.shutdown.clone()));
        Ok(())
    }

    /// Asks every component to stop: HTTP stops accepting, the relay finishes
    /// its batch, the worker finishes or hands back its tasks.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token cancelled at shutdown, for callers that add their own loops.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every component stopped; gives up after the grace period.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .map_err(|_| anyhow::anyhow!("components did not stop within {:?}", self.grace))?;
        // Waits for borrowed connections to come back; bounded, so a stuck
        // query cannot keep the process from exiting.
        if tokio::time::timeout(Duration::from_secs(5), self.clients.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still in use at exit");
        }
        Ok(())
    }
}
