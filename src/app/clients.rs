//! The clients a process opens: its Postgres pools, all described here, and
//! its Redis broker.

use anyhow::Context;
use sqlx::PgPool;

use crate::{
    config::Config,
    db,
    outbox::relay::Relay,
    queue::{ArchiveLimits, Broker},
};

/// The Postgres pools a process may open. Each holds one kind of work that
/// must never wait behind another kind for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFor {
    /// API requests, the dashboard, the probes, the tools:
    /// DATABASE_MAX_CONNECTIONS.
    Shared,
    /// The relay: one connection per batch in flight (RELAY_PARALLEL_BATCHES),
    /// so however busy the API keeps the shared pool, the relay never waits
    /// behind it.
    Relay,
    /// The worker's handlers: WORKER_CONCURRENCY, at most
    /// [`HANDLERS_POOL_MAX`].
    Handlers,
    /// The ledger record after a run: two, so that a completed run's record
    /// never queues behind sign-ups or handlers' queries.
    Ledger,
    /// The retention loop beside each relay: one, so pruning never takes a
    /// connection from the relay or the API.
    Retention,
}

/// Most connections of the worker's handlers' pool.
const HANDLERS_POOL_MAX: u32 = 8;

impl PoolFor {
    fn size(self, cfg: &Config) -> u32 {
        match self {
            Self::Shared => cfg.db.max_connections,
            Self::Relay => cfg.relay.parallel_batches,
            Self::Handlers => (cfg.worker.concurrency as u32).clamp(1, HANDLERS_POOL_MAX),
            Self::Ledger => 2,
            Self::Retention => 1,
        }
    }

    /// Opens this pool on DATABASE_URL; it connects lazily.
    pub fn open(self, cfg: &Config) -> anyhow::Result<PgPool> {
        db::pool(&cfg.db, cfg.database_url()?, self.size(cfg))
    }
}

/// The clients every component shares.
#[derive(Clone)]
pub struct Clients {
    pub pool: PgPool,
    pub broker: Broker,
}

impl Clients {
    /// Neither connects eagerly: the process starts while either is down.
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let redis = cfg.redis.connection().pool().context("REDIS_URL")?;
        Ok(Self {
            pool: PoolFor::Shared.open(cfg)?,
            broker: broker(cfg, redis),
        })
    }

    /// The relay, on its own pool ([`PoolFor::Relay`]).
    ///
    /// With REDIS_WAIT_REPLICAS, its enqueues and their WAITs go on Redis
    /// connections of their own: a WAIT holds its connection until the
    /// replicas answer, and nothing else may queue behind it.
    pub fn relay(&self, cfg: &Config) -> anyhow::Result<Relay> {
        Ok(Relay::new(
            PoolFor::Relay.open(cfg)?,
            self.replicated_broker(cfg)?,
            cfg.relay.clone(),
        ))
    }

    /// The broker the worker takes and extends its leases with: with
    /// REDIS_WAIT_REPLICAS, its dequeues and extensions wait for the
    /// replicas, on Redis connections of their own (acknowledgements and
    /// hand-backs stay on the shared ones).
    pub fn worker_broker(&self, cfg: &Config) -> anyhow::Result<Broker> {
        self.replicated_broker(cfg)
    }

    /// The shared broker, or with REDIS_WAIT_REPLICAS one whose waited
    /// writes (and their WAITs) go on a Redis pool of their own.
    fn replicated_broker(&self, cfg: &Config) -> anyhow::Result<Broker> {
        Ok(match cfg.redis.wait_replicas {
            0 => self.broker.clone(),
            replicas => self.broker.clone().with_replica_wait(
                cfg.redis.connection().pool().context("REDIS_URL")?,
                replicas,
                cfg.redis.wait_timeout,
            ),
        })
    }
}

/// A broker on `redis` with the archive limits of `cfg`.
fn broker(cfg: &Config, redis: fred::clients::Pool) -> Broker {
    Broker::new(redis, &cfg.redis.key_prefix).with_archive_limits(ArchiveLimits {
        max_age: cfg.worker.archive_max_age,
        max_size: cfg.worker.archive_max_size,
        protect: cfg.worker.archive_protect,
    })
}
