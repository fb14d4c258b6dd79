//! How a relay's batch transaction begins, and the bounds it sets on its
//! own session.

use std::time::Duration;

/// How a batch's transaction begins, all in the same round trip as BEGIN and
/// set per transaction rather than as connection options, which poolers such
/// as PgBouncer refuse:
/// - an asynchronous commit: a read writes nothing, and the only writes,
///   the marks on the upgrade's old table ([`super::legacy`]), need not wait
///   for the WAL flush: a mark lost in a Postgres crash only means its row
///   is forwarded again, and the idempotent enqueue keeps one task per row;
/// - bounds on the session (`timeout`, RELAY_SESSION_TIMEOUT): a relay host
///   that vanished mid-batch without closing its connection (power loss, a
///   partition) would otherwise hold its rows locked, and its transaction id
///   the vacuum horizon, until Linux's keepalive gives up after about two
///   hours. Postgres ends a transaction idle for `timeout` or a statement
///   running for it, and its keepalives notice a dead peer within a few
///   seconds of silence;
/// - a read by index ranges only: each part of the read is an ordered range
///   of `outbox_by_queue` that stops at the batch size, but the planner
///   prices it by statistics that always lag behind (transaction ids only
///   grow, so the rows beyond a position lie past the histogram's end and
///   are estimated at a handful). With bitmap and sequential scans allowed
///   it read every row beyond the position and sorted them for the first
///   500: under a bulk writer, 173,000 rows and 0.1-0.8 s a batch, slower as
///   the backlog grew.
pub fn begin_batch(timeout: Duration) -> String {
    let ms = timeout.as_millis().max(1);
    format!(
        "BEGIN; SET LOCAL synchronous_commit = off; \
         SET LOCAL idle_in_transaction_session_timeout = {ms}; \
         SET LOCAL statement_timeout = {ms}; \
         SET LOCAL tcp_keepalives_idle = {KEEPALIVE_IDLE_S}; \
         SET LOCAL tcp_keepalives_interval = {KEEPALIVE_INTERVAL_S}; \
         SET LOCAL tcp_keepalives_count = {KEEPALIVE_COUNT}; \
         SET LOCAL tcp_user_timeout = {ms}; \
         SET LOCAL enable_bitmapscan = off; \
         SET LOCAL enable_seqscan = off"
    )
}

/// Silence on a batch's connection after which Postgres probes the relay,
/// the time between probes, and the probes unanswered before it gives up:
/// an idle dead peer is noticed within about 10 s (on Linux, unacknowledged
/// data is given up after `tcp_user_timeout`, the session timeout, instead).
const KEEPALIVE_IDLE_S: u32 = 4;
const KEEPALIVE_INTERVAL_S: u32 = 2;
const KEEPALIVE_COUNT: u32 = 3;
