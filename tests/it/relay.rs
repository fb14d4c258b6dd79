//! The relay: prompt wake-ups, out-of-order commits, concurrent relays,
//! retention, and the progress `relay --once` shows on a terminal.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use simplebank::{app::Clients, queue::Broker};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use simplebank::app::Components;

use crate::common::{TestApp, TestEnv, eventually, user_json};

/// Inserts `n` outbox rows for queue "default" straight in SQL.
pub(crate) async fn insert_rows(env: &TestEnv, n: i64) {
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
         SELECT 'noop', 'default', jsonb_build_object('n', g), 3, 1000 FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&env.pool)
    .await
    .unwrap();
}

pub(crate) async fn undispatched(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
        .await
}

pub(crate) async fn ids(env: &TestEnv) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Sign-ups per process layout in the wake-up test; the median of their
/// latencies is what is checked, so one scheduling hiccup on a busy machine
/// does not decide the outcome.
const WAKE_SAMPLES: usize = 5;
/// The happy path's bound from commit to task in Redis. The relay's poll is an
/// hour away in that test, so only a wake-up can meet it; the benchmark
/// harness measures the actual figure (milliseconds).
const WAKE_BOUND: Duration = Duration::from_millis(100);

/// Signs `name` up through `api` and returns how long after the commit (the
/// 200 answer) the task appeared in Redis, watched every millisecond.
async fn commit_to_redis(env: &TestEnv, q: &Broker, api: &TestApp, name: &str) -> Duration {
    assert_eq!(
        api.post_json("/v1/create_user", user_json(name)).await.0,
        200
    );
    let committed = Instant::now();
    let id: i64 = sqlx::query_scalar("SELECT id FROM outbox WHERE payload->>'username' = $1")
        .bind(name)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    loop {
        if q.task("critical", id).await.unwrap().is_some() {
            return committed.elapsed();
        }
        assert!(
            committed.elapsed() < Duration::from_secs(5),
            "task {id} of {name} did not reach Redis within 5 s: no wake-up"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The median of `WAKE_SAMPLES` sign-ups through `api`.
async fn median_commit_to_redis(env: &TestEnv, api: &TestApp, layout: &str) -> Duration {
    let q = env.queue();
    q.ping().await.unwrap(); // connected before the clock starts
    let mut took = Vec::with_capacity(WAKE_SAMPLES);
    for i in 0..WAKE_SAMPLES {
        took.push(commit_to_redis(env, &q, api, &format!("{layout}_{i}")).await);
    }
    println!("{layout}: commit to task in Redis {took:?}");
    took.sort();
    took[WAKE_SAMPLES / 2]
}

#[tokio::test]
async fn commits_wake_the_relay_in_process_and_across_processes() {
    let mut env = TestEnv::new().await;
    // With the poll an hour away, only the wake-ups can deliver in time.
    env.cfg.relay.poll_interval = Duration::from_secs(3600);

    // serve-like: API and relay in one process (the in-process signal).
    let app = env.start(Components::API | Components::RELAY).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past the relay's first drain
    let median = median_commit_to_redis(&env, &app, "inproc").await;
    assert!(median < WAKE_BOUND, "in-process wake-up: median {median:?}");
    app.stop().await;

    // The API in one process, the relay in another: pg_notify + LISTEN.
    let api = env.start(Components::API).await;
    let relay = env.start(Components::RELAY).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let median = median_commit_to_redis(&env, &api, "remote").await;
    assert!(
        median < WAKE_BOUND,
        "wake-up across processes: median {median:?}"
    );
    api.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_row_committed_after_a_later_id_is_still_forwarded() {
    let env = TestEnv::new().await;
    let relay = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    let q = env.queue();
    let insert = "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
                  VALUES ('noop', 'default', '{}', 0, 1000) RETURNING id";
    let mut slow = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    let mut slow_tx = slow.begin().await.unwrap();
    let early: i64 = sqlx::query_scalar(insert)
        .fetch_one(&mut *slow_tx)
        .await
        .unwrap();
    let late: i64 = sqlx::query_scalar(insert)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(early < late);

    assert_eq!(
        relay
            .drain(&CancellationToken::new())
            .await
            .unwrap()
            .forwarded,
        1
    );
    assert!(q.task("default", late).await.unwrap().is_some());
    slow_tx.commit().await.unwrap();
    assert_eq!(
        relay
            .drain(&CancellationToken::new())
            .await
            .unwrap()
            .forwarded,
        1
    );
    assert!(q.task("default", early).await.unwrap().is_some());
    assert_eq!(undispatched(&env).await, 0);
}

#[tokio::test]
async fn two_relays_forward_10000_rows_exactly_once() {
    let env = TestEnv::new().await;
    insert_rows(&env, 10_000).await;
    let mut cfg = env.cfg.clone();
    cfg.relay.batch_size = 250;
    let (a, b) = (
        Clients::new(&cfg).unwrap().relay(&cfg).unwrap(),
        Clients::new(&cfg).unwrap().relay(&cfg).unwrap(),
    );
    let never = CancellationToken::new();
    let (na, nb) = tokio::join!(a.drain(&never), b.drain(&never));
    let (na, nb) = (na.unwrap().forwarded, nb.unwrap().forwarded);
    println!("relay a forwarded {na}, relay b {nb}");
    assert_eq!(na + nb, 10_000, "each row forwarded by exactly one relay");
    assert!(
        na > 0 && nb > 0,
        "both relays worked (SKIP LOCKED, no waiting)"
    );
    assert_eq!(undispatched(&env).await, 0);
    let stats = env.queue().stats("default").await.unwrap();
    assert_eq!(stats.pending, 10_000);
}

/// The `simplebank relay` binary aimed at this test's database and prefix.
pub(crate) fn relay_command(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.command(&[&["relay"], args].concat());
    cmd.env("RUST_LOG", "warn");
    cmd
}

#[tokio::test]
async fn dispatched_rows_past_retention_are_deleted() {
    let mut env = TestEnv::new().await;
    env.cfg.relay.outbox_cleanup_batch = 7;
    insert_rows(&env, 40).await;
    let relay = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    relay.drain(&CancellationToken::new()).await.unwrap();
    insert_rows(&env, 5).await; // undispatched: never deleted
    sqlx::query("UPDATE outbox SET dispatched_at = now() - interval '2 days' WHERE id % 2 = 0 AND dispatched_at IS NOT NULL")
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(relay.cleanup(&CancellationToken::new()).await.unwrap(), 20);
    assert_eq!(env.count("SELECT count(*) FROM outbox").await, 25);
    assert_eq!(undispatched(&env).await, 5);
}

#[tokio::test]
async fn a_long_cleanup_does_not_hold_up_forwarding() {
    let mut env = TestEnv::new().await;
    // A history of 100,000 rows past retention, deleted one per statement:
    // a cleanup that takes many seconds.
    env.cfg.relay.outbox_cleanup_batch = 1;
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms, dispatched_at)
         SELECT 'noop', 'default', '{}', 3, 1000, now() - interval '2 days'
         FROM generate_series(1, 100000)",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let old =
        || env.count("SELECT count(*) FROM outbox WHERE dispatched_at < now() - interval '1 day'");
    let app = env.start(Components::RELAY).await;
    eventually(Duration::from_secs(10), "the cleanup under way", || async {
        (old().await < 100_000).then_some(())
    })
    .await;
    insert_rows(&env, 1).await;
    app.wake_relay();
    eventually(Duration::from_secs(5), "the new row forwarded", || async {
        (undispatched(&env).await == 0).then_some(())
    })
    .await;
    assert!(
        old().await > 0,
        "forwarded while the cleanup was still running"
    );
    app.stop().await;
}

/// `relay --once` on a terminal shows its progress on stderr (here a
/// pseudo-terminal from `script`); piped, it prints only its summary.
#[tokio::test]
async fn relay_once_shows_progress_on_a_terminal_only() {
    let env = TestEnv::new().await;
    insert_rows(&env, 20_000).await;
    let relay = relay_command(&env, &["--once"]);
    let line = format!("{} relay --once", env!("CARGO_BIN_EXE_simplebank"));
    let mut on_terminal = Command::new("script");
    on_terminal.args(["-qec", &line, "/dev/null"]);
    // The same settings as the plain command.
    for (k, v) in relay.get_envs() {
        match v {
            Some(v) => on_terminal.env(k, v),
            None => on_terminal.env_remove(k),
        };
    }
    let out = on_terminal
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs the command on a pseudo-terminal");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("relay: 20000 undispatched rows to forward"),
        "{shown}"
    );
    assert!(shown.contains("forwarded 20000 rows"), "{shown}");
    assert_eq!(undispatched(&env).await, 0);

    insert_rows(&env, 10).await;
    let out = relay_command(&env, &["--once"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("undispatched rows to forward"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("forwarded 10 rows"));
}
