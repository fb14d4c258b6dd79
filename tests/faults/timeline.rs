//! The faults of the fault suite, one after another while the load runs,
//! and the wait for the pipeline to settle after it.

use std::time::{Duration, Instant, SystemTime};

use simplebank::queue::Broker;

use crate::common::{CuttableLink, RedisProcess, SmtpProcess, TestEnv};
use crate::serve::{Serve, restart_postgres};
use crate::{LATE_REPLY, LEASE, SENDER_REFUSED, SETTLE_LIMIT, SMTP_DOWN, SMTP_TIMEOUT};

/// What the faults left for the report and the accounting.
pub struct Faults {
    /// One line per fault, when it began.
    pub timeline: Vec<String>,
    /// When serve a was SIGKILLed.
    pub killed_at: SystemTime,
    /// What a logged before it died: the runs it completed.
    pub a_before_kill: String,
    /// When the final reply came late: from, to.
    pub late_reply: (SystemTime, SystemTime),
}

/// The faults, one after another, while the load runs: Redis restarts,
/// Postgres restarts, serve `a` is SIGKILLed and started again, serve b is
/// cut off from Redis (through `cut_link`) past its lease, the SMTP server
/// is away, then refuses the sender, then answers the final dot late.
pub async fn inject_faults(
    redis: &mut RedisProcess,
    smtp: &mut SmtpProcess,
    cut_link: &mut CuttableLink,
    a: &mut Serve,
) -> Faults {
    let t0 = Instant::now();
    let at = |s: u64| async move {
        let due = t0 + Duration::from_secs(s);
        tokio::time::sleep_until(due.into()).await;
    };
    let mut timeline = Vec::new();
    at(10).await;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    timeline.push(format!(
        "{:>4}s Redis stopped for 2 s and restarted (append-only file on)",
        10
    ));
    at(25).await;
    tokio::task::spawn_blocking(|| restart_postgres(3))
        .await
        .unwrap();
    timeline.push(format!("{:>4}s Postgres stopped for 3 s and restarted", 25));
    at(40).await;
    let killed_at = SystemTime::now();
    a.kill();
    // What a logged before it died: the runs it completed.
    let a_before_kill = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(
        a_before_kill.contains("processed task"),
        "serve a's log names the runs it completed (the attribution reads it)"
    );
    timeline.push(format!("{:>4}s serve a SIGKILLed", 40));
    at(45).await;
    a.start();
    timeline.push(format!("{:>4}s serve a started again", 45));
    at(60).await;
    cut_link.cut().await;
    at(60 + LEASE.as_secs() + 4).await;
    cut_link.restore().await;
    timeline.push(format!(
        "{:>4}s serve b cut off from Redis for {} s (lease {} s)",
        60,
        LEASE.as_secs() + 4,
        LEASE.as_secs()
    ));
    at(80).await;
    smtp.stop();
    tokio::time::sleep(SMTP_DOWN).await;
    smtp.up();
    timeline.push(format!(
        "{:>4}s SMTP server away for {} s",
        80,
        SMTP_DOWN.as_secs()
    ));
    at(130).await;
    smtp.refuse_sender(true);
    tokio::time::sleep(SENDER_REFUSED).await;
    smtp.refuse_sender(false);
    timeline.push(format!(
        "{:>4}s SMTP server refuses the sender (554 5.7.1 at MAIL FROM) for {} s",
        130,
        SENDER_REFUSED.as_secs()
    ));
    at(165).await;
    let late = SMTP_TIMEOUT + Duration::from_secs(1);
    let late_from = SystemTime::now();
    smtp.delay_final_reply(Some(late));
    tokio::time::sleep(LATE_REPLY).await;
    smtp.delay_final_reply(None);
    let late_to = SystemTime::now();
    timeline.push(format!(
        "{:>4}s SMTP server answers the final dot {} s late (SMTP_TIMEOUT {} s) for {} s",
        165,
        late.as_secs(),
        SMTP_TIMEOUT.as_secs(),
        LATE_REPLY.as_secs()
    ));
    Faults {
        timeline,
        killed_at,
        a_before_kill,
        late_reply: (late_from, late_to),
    }
}

/// Settle: nothing undispatched, nothing pending, running or waiting.
/// Returns how long that took.
pub async fn settle(env: &TestEnv, broker: &Broker) -> Duration {
    let settle_started = Instant::now();
    loop {
        // The queues' cursors are in the servers' Redis, not the env's.
        let undispatched = simplebank::outbox::stats::OutboxStats::read(&env.pool, broker)
            .await
            .unwrap()
            .undispatched;
        let s = broker.stats("critical").await.unwrap();
        if undispatched == 0 && s.pending + s.active + s.scheduled + s.retry == 0 {
            break;
        }
        assert!(
            settle_started.elapsed() < SETTLE_LIMIT,
            "not settled after {SETTLE_LIMIT:?}: {undispatched} undispatched, {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    settle_started.elapsed()
}
