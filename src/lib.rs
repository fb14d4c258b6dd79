//! simplebank: user sign-up whose follow-up work runs through a transactional outbox.
//!
//! The data flow is visible in the module tree:
//! `http` (the API) -> `users` (sign-up writes the user and its outbox row in one
//! transaction) -> `outbox` (the relay forwards committed rows to Redis) -> `queue`
//! (the Redis task queue and worker server) -> `tasks` (the handlers) -> `mail`.

/// The dashboard at /admin: queues, archived tasks, the outbox; token-guarded.
pub mod admin;
/// Wiring and lifecycle: starts the components and shuts them down in order.
pub mod app;
/// Configuration from flags, the environment and `.env`.
pub mod config;
/// Postgres pool and migrations.
pub mod db;
/// What the service did, announced for whoever waits on it (the tests).
pub mod events;
/// The HTTP JSON API: routes, extractors and the one place errors become responses.
pub mod http;
/// Outgoing email: the SMTP and file mailers.
pub mod mail;
/// Prometheus metrics: names, the recorder, the gauges read at scrape time.
pub mod metrics;
/// The operator's commands: queues, tasks, outbox stats.
pub mod ops;
/// The transactional outbox: the write side and the relay to Redis.
pub mod outbox;
/// The Redis task queue (the `simplebank-queue` crate): enqueue, the worker
/// server, leases, retries.
pub use simplebank_queue as queue;
/// Task kinds and their handlers, and the processed-task ledger.
pub mod retention;
pub mod tasks;
/// Logging set-up.
pub mod telemetry;
/// The user domain: validation, password hashing, persistence, the sign-up
/// use cases.
pub mod users;
