//! How a relay's batch transaction begins, and the bounds it sets on its
//! own session.

use std::time::Duration;

/// How a batch's transaction begins, all in the same round trip as BEGIN and
/// set per transaction rather than as connection options, which poolers such
/// as PgBouncer refuse:
/// - an asynchronous commit: marking rows dispatched need not wait for the
///   WAL flush, because a mark lost in a Postgres crash only means the rows
///   are forwarded again, and the idempotent enqueue keeps one task per row;
/// - bounds on the session (`timeout`, RELAY_SESSION_TIMEOUT): a relay host
///   that vanished mid-batch without closing its connection (power loss, a
///   partition) would otherwise hold its rows locked, and its transaction id
///   the vacuum horizon, until Linux's keepalive gives up after about two
///   hours. Postgres ends a transaction idle for `timeout` or a statement
///   running for it, and its keepalives notice a dead peer within a few
///   seconds of silence.
pub fn begin_batch(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    format!(
        "BEGIN; SET LOCAL synchronous_commit = off; \
         SET LOCAL idle_in_transaction_session_timeout = {ms}; \
         SET LOCAL statement_timeout = {ms}; \
         SET LOCAL tcp_keepalives_idle = {KEEPALIVE_IDLE_S}; \
         SET LOCAL tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S}; \
         SET LOCAL tcp_keepalives_count = {KEEPALIVE_COUNT}; \
         SET LOCAL tcp_user_timeout = {ms}"
    )
}

/// Silence on a batch's connection after which Postgres probes the relay,
/// the time between probes, and the probes unanswered before it gives up:
/// an idle dead peer is noticed within about 10 s (on Linux, unacknowledged
/// data is given up after `tcp_user_timeout`, the session timeout, instead).
const KEEPALIVE_IDLE_S: u32 = 4;
const KEEPALIVE_INTERVAL_S: u32 = 2;
const KEEPALIVE_COUNT: u32 = 3;
