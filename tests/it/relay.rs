//! The relay: prompt wake-ups, out-of-order commits, concurrent relays,
//! Redis outages, a crash between Redis and the commit, redelivery, retention.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fred::prelude::*;
use simplebank::{app::Clients, queue::Broker};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::common::{
    API_AND_RELAY, API_ONLY, CuttableLink, RELAY_ONLY, RedisProcess, TestApp, TestEnv, eventually,
    next_port, postgres_addr, user_json,
};

/// Inserts `n` outbox rows for queue "default" straight in SQL.
async fn insert_rows(env: &TestEnv, n: i64) {
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
         SELECT 'noop', 'default', jsonb_build_object('n', g), 3, 1000 FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn undispatched(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
        .await
}

async fn ids(env: &TestEnv) -> Vec<i64> {
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
    let app = env.start(API_AND_RELAY).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // past the relay's first drain
    let median = median_commit_to_redis(&env, &app, "inproc").await;
    assert!(median < WAKE_BOUND, "in-process wake-up: median {median:?}");
    app.stop().await;

    // The API in one process, the relay in another: pg_notify + LISTEN.
    let api = env.start(API_ONLY).await;
    let relay = env.start(RELAY_ONLY).await;
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

#[tokio::test]
async fn redis_stopped_and_restarted_mid_stream_loses_nothing() {
    let mut env = TestEnv::new().await;
    let mut redis = RedisProcess::start();
    env.cfg.redis.url = redis.url();
    env.cfg.redis.command_timeout = Duration::from_millis(500);
    env.cfg.relay.max_backoff = Duration::from_millis(200);
    let app = env.start(API_AND_RELAY).await;
    for round in 0..3 {
        for i in 0..20 {
            let name = format!("u{round}_{i}");
            assert_eq!(
                app.post_json("/v1/create_user", user_json(&name)).await.0,
                200
            );
        }
        match round {
            0 => redis.stop(),
            1 => redis.restart(),
            _ => {}
        }
    }
    let q = env.queue();
    eventually(Duration::from_secs(30), "every row dispatched", || async {
        (undispatched(&env).await == 0).then_some(())
    })
    .await;
    for id in ids(&env).await {
        assert!(
            q.task("critical", id).await.unwrap().is_some(),
            "task {id} missing"
        );
    }
    assert_eq!(q.stats("critical").await.unwrap().pending, 60);
    app.stop().await;
}

#[tokio::test]
async fn a_redis_outage_is_logged_once_not_once_per_retry() {
    let env = TestEnv::new().await;
    let mut redis = RedisProcess::start();
    redis.stop();
    insert_rows(&env, 5).await;
    let mut child = relay_command(&env, &[])
        .env("REDIS_URL", redis.url())
        .env("REDIS_COMMAND_TIMEOUT", "200ms")
        .env("RELAY_MAX_BACKOFF", "100ms")
        .env("RUST_LOG", "simplebank=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Two seconds of a retry every 300 ms or so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(undispatched(&env).await, 5);
    redis.restart();
    eventually(Duration::from_secs(20), "the rows forwarded", || async {
        (undispatched(&env).await == 0).then_some(())
    })
    .await;
    // The recovery is logged right after the batch commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap(); // its log lines are written whole, line by line
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(log.matches("relay cannot forward").count(), 1, "{log}");
    assert_eq!(log.matches("relay recovered").count(), 1, "{log}");
}

#[tokio::test]
async fn a_relay_killed_between_redis_and_commit_leaves_one_task_per_row() {
    let env = TestEnv::new().await;
    insert_rows(&env, 50).await;
    // Fault injection: marking rows dispatched blocks on an advisory lock the
    // test holds, so the relay stops right after Redis acknowledged.
    sqlx::raw_sql(
        "CREATE FUNCTION hold_mark() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); RETURN NEW; END $$;
         CREATE TRIGGER hold_mark BEFORE UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION hold_mark();",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let mut lock = sqlx::PgConnection::connect(&env.db_url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut lock)
        .await
        .unwrap();

    let mut child = relay_command(&env, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let q = env.queue();
    eventually(Duration::from_secs(20), "the batch in Redis", || async {
        (q.stats("default").await.unwrap().pending == 50).then_some(())
    })
    .await;
    child.kill().unwrap(); // SIGKILL, with the claim transaction still open
    child.wait().unwrap();
    // A backend blocked on a lock notices its client is gone only when it
    // next talks to it; end it, as Postgres eventually would, and wait for its
    // transaction (and row locks) to be gone.
    let orphans = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'";
    sqlx::query(&orphans.replace("SELECT count(*)", "SELECT pg_terminate_backend(pid)"))
        .execute(&mut lock)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the killed relay's transaction to end",
        || async { (env.count(orphans).await == 0).then_some(()) },
    )
    .await;
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut lock)
        .await
        .unwrap();
    assert_eq!(undispatched(&env).await, 50, "the commit never happened");

    let out = relay_command(&env, &["--once"]).output().unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("forwarded 50 rows"), "{summary}");
    assert_eq!(undispatched(&env).await, 0);
    assert_one_pending_task_per_row(&env, 50).await;

    // The recovery command re-sends what it dispatched; Redis still has it all,
    // so the idempotent enqueue leaves one task per row still.
    let out = relay_command(&env, &["--once", "--redeliver-since", "15m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("forwarded 0 rows, redelivered 50"),
        "{summary}"
    );
    assert_one_pending_task_per_row(&env, 50).await;
}

/// The `simplebank relay` binary aimed at this test's database and prefix.
fn relay_command(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.command(&[&["relay"], args].concat());
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Redis's pending list of queue "default" holds `n` ids, none twice.
async fn assert_one_pending_task_per_row(env: &TestEnv, n: usize) {
    let client = crate::common::redis_client(&env.cfg.redis.url).await;
    let pending: Vec<i64> = client
        .lrange(env.queue().keys("default").pending, 0, -1)
        .await
        .unwrap();
    let mut unique = pending.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((pending.len(), unique.len()), (n, n), "one task per row");
}

#[tokio::test]
async fn relay_once_that_cannot_reach_redis_fails_clearly_and_changes_nothing() {
    let env = TestEnv::new().await;
    insert_rows(&env, 10).await;
    let started = Instant::now();
    let out = relay_command(&env, &["--once"])
        .env("REDIS_URL", format!("redis://127.0.0.1:{}/0", next_port()))
        .env("REDIS_CONNECT_TIMEOUT", "300ms")
        .env("REDIS_COMMAND_TIMEOUT", "500ms")
        .output()
        .unwrap();
    println!("relay --once gave up after {:?}", started.elapsed());
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no summary for a run that failed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("redis"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(undispatched(&env).await, 10, "nothing marked dispatched");
}

#[tokio::test]
async fn redeliver_since_restores_what_redis_lost() {
    let env = TestEnv::new().await;
    insert_rows(&env, 30).await;
    let relay = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    assert_eq!(
        relay
            .drain(&CancellationToken::new())
            .await
            .unwrap()
            .forwarded,
        30
    );
    // Rows dispatched long ago are outside the window.
    sqlx::query("UPDATE outbox SET dispatched_at = now() - interval '1 hour' WHERE id <= (SELECT min(id) + 9 FROM outbox)")
        .execute(&env.pool)
        .await
        .unwrap();
    // Redis loses everything of this test.
    let client = crate::common::redis_client(&env.cfg.redis.url).await;
    let k = env.queue().keys("default");
    let mut lost: Vec<String> = ids(&env).await.into_iter().map(|id| k.task(id)).collect();
    lost.push(k.pending.clone());
    let _: () = client.del(lost).await.unwrap();
    assert_eq!(env.queue().stats("default").await.unwrap().pending, 0);

    assert_eq!(
        relay
            .redeliver_since(Duration::from_secs(15 * 60))
            .await
            .unwrap(),
        20
    );
    assert_eq!(env.queue().stats("default").await.unwrap().pending, 20);
    // Running it again changes nothing: the enqueue is idempotent.
    relay
        .redeliver_since(Duration::from_secs(15 * 60))
        .await
        .unwrap();
    assert_eq!(env.queue().stats("default").await.unwrap().pending, 20);
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
    let app = env.start(RELAY_ONLY).await;
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

#[tokio::test]
async fn postgres_down_and_back_loses_nothing_and_the_listener_reconnects() {
    let mut env = TestEnv::new().await;
    let mut link = CuttableLink::to(postgres_addr(&env.db_url)).await;
    // The process reaches Postgres only through the link (pool and LISTEN);
    // the test keeps its own direct pool.
    env.cfg.db.url = Some(link.postgres_url(&env.db_url));
    // Short, so outages answer quickly; not so short that a busy machine
    // turns the first sign-up's connection set-up into a 503.
    env.cfg.db.acquire_timeout = Duration::from_millis(1500);
    env.cfg.relay.max_backoff = Duration::from_millis(200);
    // With the poll an hour away, only wake-ups and retries deliver.
    env.cfg.relay.poll_interval = Duration::from_secs(3600);
    let app = env.start(API_AND_RELAY).await;
    let q = env.queue();
    assert_eq!(
        app.post_json("/v1/create_user", user_json("before"))
            .await
            .0,
        200
    );
    // Dispatched, not only in Redis: a cut between Redis's acknowledgement and
    // the commit would (rightly) leave the row to be forwarded again.
    eventually(
        Duration::from_secs(5),
        "the first row dispatched",
        || async { (undispatched(&env).await == 0).then_some(()) },
    )
    .await;

    link.cut().await;
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["postgres"] == "down", "{body}");
    let (status, body) = app.post_json("/v1/create_user", user_json("during")).await;
    assert_eq!(status, 503, "{body}");
    // Rows other processes committed meanwhile wait for the relay, which a
    // wake-up now sends into its retry-with-backoff loop.
    insert_rows(&env, 100).await;
    app.wake_relay();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(undispatched(&env).await, 100);

    link.restore().await;
    eventually(Duration::from_secs(10), "the backlog forwarded", || async {
        (undispatched(&env).await == 0).then_some(())
    })
    .await;
    assert_eq!(q.stats("default").await.unwrap().pending, 100);
    assert_eq!(env.count("SELECT count(*) FROM users").await, 1);

    // LISTEN works again: a row inserted elsewhere, announced only by
    // pg_notify, is forwarded although the poll is an hour away. Notifications
    // sent before the listener is back are lost, so announce until it is.
    insert_rows(&env, 1).await;
    eventually(
        Duration::from_secs(10),
        "a notified row forwarded",
        || async {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(simplebank::outbox::NOTIFY_CHANNEL)
                .execute(&env.pool)
                .await
                .unwrap();
            (undispatched(&env).await == 0).then_some(())
        },
    )
    .await;
    assert_eq!(q.stats("default").await.unwrap().pending, 101);
    assert_eq!(
        app.post_json("/v1/create_user", user_json("after")).await.0,
        200
    );
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_queue_redis_refuses_does_not_hold_up_the_rows_of_the_others() {
    let mut env = TestEnv::new().await;
    env.cfg.relay.batch_size = 10;
    env.cfg.relay.max_backoff = Duration::from_millis(300);
    // "default" is broken in Redis: its pending list is a string.
    let q = env.queue();
    let raw = crate::common::redis_client(&env.cfg.redis.url).await;
    let _: () = raw
        .set(q.keys("default").pending, "not a list", None, None, false)
        .await
        .unwrap();
    // 30 rows of each queue, interleaved, so every batch holds both.
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms)
         SELECT 'noop', CASE WHEN g % 2 = 0 THEN 'default' ELSE 'critical' END, '{}', 3, 1000
         FROM generate_series(1, 60) g",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let app = env.start(RELAY_ONLY).await;
    // Forwarded means in Redis and marked: the mark commits after Redis.
    eventually(
        Duration::from_secs(10),
        "critical's rows forwarded",
        || async {
            let critical = q.stats("critical").await.unwrap().pending;
            (critical == 30 && undispatched(&env).await == 30).then_some(())
        },
    )
    .await;
    let waiting: i64 = env
        .count("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL AND queue = 'default'")
        .await;
    assert_eq!(waiting, 30, "default's rows wait in the outbox");
    // Repaired: the held queue's rows follow.
    let _: () = raw.del(q.keys("default").pending).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "default's rows forwarded",
        || async { (undispatched(&env).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(q.stats("default").await.unwrap().pending, 30);
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
