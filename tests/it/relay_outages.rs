//! The relay through failures: Redis stopped, out of reach or refusing one
//! queue, Postgres down, a relay killed between Redis and the commit, and
//! what `relay --redeliver-since` restores.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use fred::prelude::*;
use simplebank::app::Clients;
use tokio_util::sync::CancellationToken;

use simplebank::app::Components;

use crate::common::{
    CuttableLink, RedisProcess, TestEnv, eventually, next_port, postgres_addr, user_json,
};
use crate::relay::{ids, insert_rows, relay_command, undispatched};

#[tokio::test]
async fn redis_stopped_and_restarted_mid_stream_loses_nothing() {
    let mut env = TestEnv::new().await;
    let mut redis = RedisProcess::start();
    env.cfg.redis.url = redis.url();
    env.cfg.redis.command_timeout = Duration::from_millis(500);
    env.cfg.relay.max_backoff = Duration::from_millis(200);
    let app = env.start(Components::API | Components::RELAY).await;
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

/// Killed (SIGKILL) in the middle of a drain, wherever it was: between a
/// read and its enqueue, or with an enqueue sent and its reply not read.
/// The cursor moved with every batch Redis took and with none other, so the
/// next relay forwards exactly the rest.
#[tokio::test]
async fn a_relay_killed_mid_drain_leaves_one_task_per_row() {
    const ROWS: usize = 20_000;
    let env = TestEnv::new().await;
    insert_rows(&env, ROWS as i64).await;
    let mut child = relay_command(&env, &[])
        .env("RELAY_BATCH_SIZE", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let q = env.queue();
    eventually(Duration::from_secs(20), "the drain under way", || async {
        (q.stats("default").await.unwrap().pending > 0).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let before = q.stats("default").await.unwrap().pending as usize;
    assert!(before < ROWS, "killed before the end: {before} forwarded");

    let out = relay_command(&env, &["--once"]).output().unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("forwarded {} rows", ROWS - before)),
        "{before} were in Redis: {summary}"
    );
    assert_eq!(undispatched(&env).await, 0);
    assert_one_pending_task_per_row(&env, ROWS).await;

    // The recovery command re-sends everything; Redis still has it all, so
    // the idempotent enqueue leaves one task per row still.
    let out = relay_command(&env, &["--once", "--redeliver-since", "15m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("forwarded 0 rows, redelivered {ROWS}")),
        "{summary}"
    );
    assert_one_pending_task_per_row(&env, ROWS).await;
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
    insert_rows(&env, 10).await;
    let relay = Clients::new(&env.cfg).unwrap().relay(&env.cfg).unwrap();
    assert_eq!(
        relay
            .drain(&CancellationToken::new())
            .await
            .unwrap()
            .forwarded,
        10
    );
    // The first 10 were forwarded an hour ago (their checkpoint is that
    // old): outside the window.
    relay.checkpoint().await;
    sqlx::query("UPDATE outbox_checkpoints SET taken_at = now() - interval '1 hour'")
        .execute(&env.pool)
        .await
        .unwrap();
    insert_rows(&env, 20).await;
    assert_eq!(
        relay
            .drain(&CancellationToken::new())
            .await
            .unwrap()
            .forwarded,
        20
    );
    relay.checkpoint().await;
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
    let app = env.start(Components::API | Components::RELAY).await;
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
    let app = env.start(Components::RELAY).await;
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
