//! Connecting to Redis: a pool for commands and a subscriber for wake-ups.
//! Both reconnect by themselves forever, so a Redis outage is survived; commands
//! issued meanwhile fail after the command timeout.

use fred::{
    clients::{Pool, SubscriberClient},
    prelude::*,
    types::config::{Config as FredConfig, ReconnectPolicy},
};

use crate::config::RedisConfig;

fn builder(cfg: &RedisConfig) -> Result<Builder, fred::error::Error> {
    let mut config = FredConfig::from_url(&cfg.url)?;
    // Start even when Redis is down; the reconnect policy takes over.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = cfg.connect_timeout;
            c.internal_command_timeout = cfg.command_timeout;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = cfg.command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

/// A connected (or connecting) pool of `REDIS_POOL_SIZE` connections.
pub fn pool(cfg: &RedisConfig) -> Result<Pool, fred::error::Error> {
    let pool = builder(cfg)?.build_pool(cfg.pool_size.max(1))?;
    pool.connect();
    Ok(pool)
}

/// A subscriber connection that re-subscribes after reconnecting.
pub fn subscriber(cfg: &RedisConfig) -> Result<SubscriberClient, fred::error::Error> {
    let client = builder(cfg)?.build_subscriber_client()?;
    client.connect();
    client.manage_subscriptions();
    Ok(client)
}
