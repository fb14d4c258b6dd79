//! HTTP settings, the dashboard's among them.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, bad, in_range},
    parse_duration,
};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    #[arg(
        id = "http_addr",
        value_name = "HTTP_ADDR",
        long = "http-addr",
        env = "HTTP_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes (larger answers 413).
    #[arg(id = "http_body_limit", value_name = "HTTP_BODY_LIMIT", long = "http-body-limit", env = "HTTP_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// Most requests worked on at once; one more is answered 503 at once.
    #[arg(
        long = "http-max-in-flight",
        env = "HTTP_MAX_IN_FLIGHT",
        default_value_t = 512
    )]
    pub max_in_flight: usize,
    /// Longest a request may take; past it, it is answered 503.
    #[arg(long = "http-request-timeout", env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers; then the
    /// connection is closed.
    #[arg(long = "http-header-timeout", env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Most connections open at once; more wait to be accepted.
    #[arg(
        long = "http-max-connections",
        env = "HTTP_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// Requests a minute one client address may make (0: no limit); over it,
    /// 429 with Retry-After.
    #[arg(
        long = "http-rate-limit",
        env = "HTTP_RATE_LIMIT",
        default_value_t = 6000
    )]
    pub rate_limit: u32,
    /// How many requests a client may make at once before the per-minute
    /// rate applies.
    #[arg(
        long = "http-rate-burst",
        env = "HTTP_RATE_BURST",
        default_value_t = 200
    )]
    pub rate_burst: u32,
    /// Sign-ups and requests for a new verification link (together) an hour
    /// one client address may make (0: no limit); over it, 429 with
    /// Retry-After. Each can send an email: this bounds what one client can
    /// send to addresses of its choosing, far below HTTP_RATE_LIMIT.
    #[arg(
        long = "http-signup-rate-limit",
        env = "HTTP_SIGNUP_RATE_LIMIT",
        default_value_t = 60
    )]
    pub signup_rate_limit: u32,
    /// How many of those a client may make at once before the hourly rate
    /// applies.
    #[arg(
        long = "http-signup-rate-burst",
        env = "HTTP_SIGNUP_RATE_BURST",
        default_value_t = 10
    )]
    pub signup_rate_burst: u32,
    /// Addresses of reverse proxies whose X-Forwarded-For is believed (comma
    /// separated). From anyone else the header is ignored: a client could
    /// name any address in it.
    #[arg(
        long = "http-trusted-proxies",
        env = "HTTP_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Opens the dashboard at /admin of `serve` to whoever presents it (at
    /// least 16 characters); unset, the dashboard is closed (401).
    #[arg(
        id = "admin_token",
        value_name = "ADMIN_TOKEN",
        long = "admin-token",
        env = "ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// How often the dashboard page reloads itself.
    #[arg(id = "admin_refresh", value_name = "ADMIN_REFRESH", long = "admin-refresh", env = "ADMIN_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub admin_refresh: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(id = "http_shutdown_grace", value_name = "HTTP_SHUTDOWN_GRACE", long = "http-shutdown-grace", env = "HTTP_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        let ms = Duration::from_millis;
        in_range("HTTP_BODY_LIMIT", self.body_limit, 1024, 64 << 20)?;
        in_range("HTTP_MAX_IN_FLIGHT", self.max_in_flight, 1, 100_000)?;
        at_least("HTTP_REQUEST_TIMEOUT", self.request_timeout, ms(100))?;
        at_least("HTTP_HEADER_TIMEOUT", self.header_timeout, ms(100))?;
        in_range("HTTP_MAX_CONNECTIONS", self.max_connections, 1, 1_000_000)?;
        if self.rate_limit > 0 {
            in_range("HTTP_RATE_BURST", self.rate_burst, 1, 1_000_000)?;
        }
        if self.signup_rate_limit > 0 {
            in_range("HTTP_SIGNUP_RATE_BURST", self.signup_rate_burst, 1, 100_000)?;
        }
        at_least("ADMIN_REFRESH", self.admin_refresh, Duration::from_secs(1))?;
        // A token an attacker could guess opens every repair to them.
        if let Some(token) = &self.admin_token
            && token.chars().count() < 16
        {
            return Err(bad(
                "ADMIN_TOKEN",
                "must be at least 16 characters (or unset, which closes the dashboard)",
            ));
        }
        Ok(())
    }
}
