//! Integration tests against real Postgres and Redis (`make test` starts them).
//! One binary with modules, so the suite links once.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod api;
mod cluster;
mod edge;
mod guarantees;
mod idempotency;
mod lifecycle;
mod operate;
mod operate_cli;
mod redis_servers;
mod relay;
mod relay_outages;
mod relay_sessions;
mod resend_limits;
mod retention;
mod sentinel;
mod traces;
mod verify_email;
mod verify_links;
mod worker_guarantees;
