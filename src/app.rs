//! Wiring and lifecycle: builds the shared clients, starts the chosen
//! components on one `TaskTracker` under one `CancellationToken`, and stops them
//! in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::Dashboard,
    config::{Config, validate::Role},
    db,
    http::{self, health::Probes},
    mail::Mailer,
    metrics::{self, Scrape},
    outbox::{relay::Relay, wake::RelayWaker},
    queue::{ArchiveLimits, Broker, WorkerServer},
    tasks::{self, ledger::PgLedger},
    users::password::PasswordHasher,
};

/// Which components a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Components {
    pub api: bool,
    pub relay: bool,
    pub worker: bool,
}

impl Components {
    pub const ALL: Self = Self {
        api: true,
        relay: true,
        worker: true,
    };

    /// What the settings of a process running these must allow.
    pub fn role(self) -> Role {
        match self {
            Self {
                worker: true,
                api: true,
                ..
            } => Role::Serve,
            Self { worker: true, .. } => Role::Worker,
            Self { relay: true, .. } => Role::Relay,
            _ => Role::Tool,
        }
    }
}

/// The clients every component shares.
#[derive(Clone)]
pub struct Clients {
    pub pool: PgPool,
    pub queue: Broker,
}

impl Clients {
    /// Neither connects eagerly: the process starts while either is down.
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let pool = db::pool(&cfg.db, cfg.database_url()?, cfg.db.max_connections)?;
        let redis = cfg.redis.connection().pool().context("REDIS_URL")?;
        Ok(Self {
            pool,
            queue: broker(cfg, redis),
        })
    }

    /// The relay, on a pool of its own: one connection per batch in flight, so
    /// that however busy the API keeps the shared pool, the relay never waits
    /// behind it.
    ///
    /// With REDIS_WAIT_REPLICAS, on Redis connections of its own as well: a
    /// WAIT holds its connection until the replicas answer, and the
    /// worker's dequeues and acknowledgements must not queue behind it.
    pub fn relay(&self, cfg: &Config) -> anyhow::Result<Relay> {
        let pool = db::pool(&cfg.db, cfg.database_url()?, cfg.relay.parallel_batches)?;
        let queue = match cfg.redis.wait_replicas {
            0 => self.queue.clone(),
            replicas => broker(cfg, cfg.redis.connection().pool().context("REDIS_URL")?)
                .with_replica_wait(replicas, cfg.redis.wait_timeout),
        };
        Ok(Relay::new(pool, queue, cfg.relay.clone()))
    }
}

/// A broker on `redis` with the archive limits of `cfg`.
fn broker(cfg: &Config, redis: fred::clients::Pool) -> Broker {
    Broker::new(redis, &cfg.redis.key_prefix).with_archive_limits(ArchiveLimits {
        max_age: cfg.worker.archive_max_age,
        max_size: cfg.worker.archive_max_size,
    })
}

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

/// Starts `components`. `serve` migrates first, so a fresh database just works.
pub async fn start(cfg: &Config, components: Components) -> anyhow::Result<RunningApp> {
    // Checked before anything starts (main checked already; tests and other
    // embedders start here).
    for warning in cfg.validate(components.role())? {
        tracing::warn!("{warning}");
    }
    let mailer = match components.worker {
        true => Some(Mailer::from_config(&cfg.mail)?),
        false => None,
    };
    let clients = Clients::new(cfg)?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let waker = RelayWaker::new();
    let mut http_addr = None;
    // Installed before anything is counted.
    metrics::handle();
    let scrape = Scrape::new(
        components.relay.then(|| clients.pool.clone()),
        components
            .worker
            .then(|| (clients.queue.clone(), cfg.worker.queues.names())),
    );

    if components.api {
        db::migrate(&clients.pool).await?;
        let state = http::AppState {
            pool: clients.pool.clone(),
            queue: clients.queue.clone(),
            hasher: PasswordHasher::new(&cfg.signup)?,
            signup: cfg.signup.clone(),
            waker: waker.clone(),
            // With ADMIN_ADDR set, /metrics is served there only: queue
            // names and counts are no business of the public port.
            scrape: cfg.admin.addr.is_none().then(|| scrape.clone()),
        };
        let listener = tokio::net::TcpListener::bind(cfg.http.addr)
            .await
            .with_context(|| format!("binding HTTP_ADDR {}", cfg.http.addr))?;
        let addr = listener.local_addr()?;
        http_addr = Some(addr);
        let dashboard = Dashboard::new(cfg, clients.queue.clone(), clients.pool.clone());
        let router = http::router(state, &cfg.http, Some(dashboard));
        let (stop, http_cfg) = (shutdown.clone(), cfg.http.clone());
        tracker.spawn(async move {
            tracing::info!(%addr, "start HTTP server");
            http::serve::serve(listener, router, &http_cfg, stop).await;
            tracing::info!("HTTP server stopped");
        });
        tracker.spawn(waker.clone().run_notifier(
            clients.pool.clone(),
            cfg.relay.notify_coalesce,
            shutdown.clone(),
        ));
    }

    let admin_addr = match cfg.admin.addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding ADMIN_ADDR {addr}"))?;
            let addr = listener.local_addr()?;
            let mut probes = Probes::new(clients.pool.clone(), clients.queue.clone());
            // A relay process is not ready while the outbox does not flow.
            // A serve process stays ready: taking it out of the load
            // balancer would stop the sign-ups the outbox keeps safe while
            // Redis is away (the outbox alert says it instead).
            if components.relay && !components.api {
                probes = probes.with_outbox_max_age(cfg.relay.ready_max_age);
            }
            let router = http::ops::router(probes, scrape.clone());
            let (stop, http_cfg) = (shutdown.clone(), cfg.http.clone());
            tracker.spawn(async move {
                tracing::info!(%addr, "start admin listener (/healthz, /readyz, /metrics)");
                http::serve::serve(listener, router, &http_cfg, stop).await;
            });
            Some(addr)
        }
        None => None,
    };

    if components.relay {
        let listen_url = cfg
            .db
            .listen_url
            .clone()
            .unwrap_or(cfg.database_url()?.to_owned());
        tracker.spawn(
            clients
                .relay(cfg)?
                .run(waker.clone(), listen_url, shutdown.clone()),
        );
    }

    if components.worker {
        let mailer = mailer.expect("built above for every worker");
        // A pool of its own: however busy the API keeps the shared one, a
        // completed run's ledger record does not queue behind sign-ups.
        let pool = db::pool(
            &cfg.db,
            cfg.database_url()?,
            (cfg.worker.concurrency as u32).clamp(1, WORKER_POOL_MAX),
        )?;
        let registry = tasks::registry(pool.clone(), mailer, cfg);
        let subscriber = cfg.redis.connection().subscriber()?;
        let server = WorkerServer::new(
            clients.queue.clone(),
            subscriber,
            cfg.worker.server_settings(),
            registry,
        )
        // The ledger record after a send never waits behind handlers' queries.
        .with_ledger(PgLedger::new(db::pool(&cfg.db, cfg.database_url()?, 2)?))
        .with_observer(Arc::new(metrics::TaskMetrics));
        tracker.spawn(server.run(shutdown.clone()));
    }

    tracker.close();
    Ok(RunningApp {
        http_addr,
        admin_addr,
        clients,
        waker,
        shutdown,
        tracker,
        grace: cfg.http.shutdown_grace.max(cfg.worker.shutdown_grace) + Duration::from_secs(5),
    })
}

/// Most connections of the worker's own Postgres pool.
const WORKER_POOL_MAX: u32 = 8;

impl RunningApp {
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
