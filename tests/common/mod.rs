//! Test support shared by the test binaries (`it`, `faults`, `crowd`), one
//! module per job:
//! - [`env`]: a fresh database and Redis key prefix per test, the real app
//!   on port 0, and the fixtures tests build input from;
//! - [`wait`]: bounded waits for what the app does;
//! - [`process`]: servers started as child processes (redis-server, SMTP);
//! - [`ports`]: the ports those children listen on;
//! - [`link`]: links a test can cut or make lose replies;
//! - [`metrics`]: a process's /metrics, read and summed.

// Each test binary uses a part of it.
#![allow(dead_code, unused_imports)]

/// The queue crate's test support: its logging set-up, its wait core
/// ([`wait::eventually`] runs it on the service's events) and the raw Redis
/// client are the service tests' too.
#[path = "../../queue/tests/common/mod.rs"]
pub mod queue_support;

pub mod env;
pub mod link;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod wait;

pub use env::*;
pub use link::*;
pub use metrics::*;
pub use ports::next_port;
pub use process::*;
pub use queue_support::{RunningWorker, init_logs, redis_client, stop_worker};
pub use wait::*;
