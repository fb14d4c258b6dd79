//! Connecting to Redis: a pool for commands and a subscriber for wake-ups.
//! Both reconnect by themselves forever, so a Redis outage is survived; commands
//! issued meanwhile fail after the command timeout.

use std::time::Duration;

use fred::{
    clients::{Pool, SubscriberClient},
    prelude::*,
    types::config::{Config as FredConfig, ReconnectPolicy},
};

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// redis:// or rediss:// for one server; redis-cluster:// and
    /// redis-sentinel:// (and their TLS forms) as the `fred` crate reads them.
    pub url: String,
    /// Connections in a command pool (at least 1).
    pub pool_size: usize,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The longest one command may take.
    pub command_timeout: Duration,
}

impl RedisSettings {
    /// A connected (or connecting) pool of `pool_size` connections.
    pub fn pool(&self) -> Result<Pool, fred::error::Error> {
        let pool = self.builder()?.build_pool(self.pool_size.max(1))?;
        pool.connect();
        Ok(pool)
    }

    /// A subscriber connection that subscribes again after reconnecting.
    pub fn subscriber(&self) -> Result<SubscriberClient, fred::error::Error> {
        let client = self.builder()?.build_subscriber_client()?;
        client.connect();
        client.manage_subscriptions();
        Ok(client)
    }

    fn builder(&self) -> Result<Builder, fred::error::Error> {
        let mut config = FredConfig::from_url(&self.url)?;
        // Start even when Redis is down; the reconnect policy takes over.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = self.connect_timeout;
                c.internal_command_timeout = self.command_timeout;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = self.command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        Ok(builder)
    }
}
