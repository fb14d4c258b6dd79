//! Redis settings.

use std::time::Duration;

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, bad, in_range, redis_url},
    parse_duration,
};
use crate::queue::RedisSettings;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis URL: redis:// or rediss:// (TLS) for one server, with optional
    /// user, password and DB number; redis-cluster://host:port?node=host:port...
    /// for a Redis Cluster; redis-sentinel://host:port?sentinelServiceName=NAME&node=...
    /// for a primary behind Sentinel (rediss-cluster://, rediss-sentinel:// with TLS).
    #[arg(
        id = "redis_url",
        value_name = "REDIS_URL",
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub url: String,
    /// Connections in the Redis pool.
    #[arg(
        id = "redis_pool_size",
        value_name = "REDIS_POOL_SIZE",
        long = "redis-pool-size",
        env = "REDIS_POOL_SIZE",
        default_value_t = 4
    )]
    pub pool_size: usize,
    /// Timeout for establishing a Redis connection.
    #[arg(id = "redis_connect_timeout", value_name = "REDIS_CONNECT_TIMEOUT", long = "redis-connect-timeout", env = "REDIS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Timeout for one Redis command.
    #[arg(id = "redis_command_timeout", value_name = "REDIS_COMMAND_TIMEOUT", long = "redis-command-timeout", env = "REDIS_COMMAND_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Replicas that must hold the relay's enqueued tasks before their outbox
    /// rows are marked dispatched, and the worker's dequeues and lease
    /// extensions before it counts on them (Redis WAIT): with 1, a primary
    /// that crashes and fails over to its replica loses no task and hands
    /// out no delivery number twice. 0: no wait (a single Redis with an
    /// append-only file needs none).
    #[arg(
        id = "redis_wait_replicas",
        value_name = "REDIS_WAIT_REPLICAS",
        long = "redis-wait-replicas",
        env = "REDIS_WAIT_REPLICAS",
        default_value_t = 0
    )]
    pub wait_replicas: u32,
    /// The longest a write waits for REDIS_WAIT_REPLICAS; beyond, the relay's
    /// rows stay undispatched and are forwarded again (a no-op enqueue)
    /// later, a dequeue's tasks are handed back untried, and an extension
    /// does not count.
    #[arg(id = "redis_wait_timeout", value_name = "REDIS_WAIT_TIMEOUT", long = "redis-wait-timeout", env = "REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
    /// Prefix of every Redis key and channel this service uses.
    #[arg(
        id = "redis_key_prefix",
        value_name = "REDIS_KEY_PREFIX",
        long = "redis-key-prefix",
        env = "REDIS_KEY_PREFIX",
        default_value = "simplebank"
    )]
    pub key_prefix: String,
}

impl RedisConfig {
    /// How the queue crate connects to this Redis.
    pub fn connection(&self) -> RedisSettings {
        RedisSettings {
            url: self.url.clone(),
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        }
    }
}

impl RedisConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        let ms = Duration::from_millis;
        redis_url("REDIS_URL", &self.url)?;
        in_range("REDIS_POOL_SIZE", self.pool_size, 1, 256)?;
        at_least("REDIS_CONNECT_TIMEOUT", self.connect_timeout, ms(10))?;
        at_least("REDIS_COMMAND_TIMEOUT", self.command_timeout, ms(10))?;
        in_range("REDIS_WAIT_REPLICAS", self.wait_replicas, 0, 16)?;
        at_least("REDIS_WAIT_TIMEOUT", self.wait_timeout, ms(10))?;
        if self.wait_replicas > 0 && self.wait_timeout >= self.command_timeout {
            return Err(bad(
                "REDIS_WAIT_TIMEOUT",
                format!(
                    "must be shorter than REDIS_COMMAND_TIMEOUT ({}), or every WAIT times out before Redis answers it",
                    humantime::format_duration(self.command_timeout)
                ),
            ));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(bad(
                "REDIS_KEY_PREFIX",
                "must be non-empty and without { or } (they are Redis Cluster hash tags)",
            ));
        }
        Ok(())
    }
}
