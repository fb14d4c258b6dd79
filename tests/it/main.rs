//! Integration tests against real Postgres and Redis (`make test` starts them).
//! One binary with modules, so the suite links once.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod api;
mod cluster;
mod edge;
mod guarantees;
mod lifecycle;
mod operate;
mod relay;
mod verify_email;
