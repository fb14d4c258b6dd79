//! Settings of the operations listener.

use std::net::SocketAddr;

use clap::Args;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Operations")]
pub struct AdminConfig {
    /// Where `relay` and `worker` (and `serve`, when set) serve /healthz,
    /// /readyz and /metrics for the orchestrator and Prometheus; unset: no
    /// such listener (`serve` answers them on its API port as well).
    #[arg(
        id = "admin_addr",
        value_name = "ADMIN_ADDR",
        long = "admin-addr",
        env = "ADMIN_ADDR"
    )]
    pub addr: Option<SocketAddr>,
}
