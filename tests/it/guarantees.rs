//! The queue's guarantees under partial failure: a failing queue, a lost
//! reply, a repeated call, a stale worker. Each test here failed on the code
//! before its fix (the issue note says which).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::prelude::*;
use simplebank::{
    queue::{
        self, AckOutcome, Broker, FailOutcome, HandlerRegistry, Processed, RequeueOutcome, Task,
        TaskId, TaskMessage, TaskState, WorkerServer, WorkerSettings, handler_fn,
    },
    tasks::ledger::PgLedger,
};
use tokio_util::sync::CancellationToken;

use crate::common::{
    CuttableLink, TestEnv, default_config, eventually, postgres_addr, redis_addr, redis_client,
};

const LEASE: Duration = Duration::from_secs(30);

fn msg(id: i64, queue: &str) -> TaskMessage {
    TaskMessage::new(TaskId::from(id), "k", queue).with_max_retry(3)
}

async fn take_one(q: &Broker, queue: &str, lease: Duration) -> Task {
    let mut got = q.dequeue(queue, 1, lease).await.unwrap();
    assert_eq!(got.len(), 1, "one task to take");
    got.remove(0)
}

#[tokio::test]
async fn a_failing_queue_does_not_strand_the_tasks_of_another() {
    let env = TestEnv::new().await;
    let q = env.queue();
    // The "default" queue is broken: its pending list is a string, so every
    // dequeue from it fails (WRONGTYPE). "critical" is fine.
    let raw = redis_client(&env.cfg.redis.url).await;
    let _: () = raw
        .set(q.keys("default").pending, "not a list", None, None, false)
        .await
        .unwrap();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let seen = ran.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "k",
        handler_fn(move |t: Task| {
            seen.lock().unwrap().push(t.id);
            async { Ok(Processed::default()) }
        }),
    );
    let settings = env.cfg.worker.server_settings();
    assert_eq!(
        settings.queues.len(),
        2,
        "weighted: both queues drawn at once"
    );
    let server = WorkerServer::new(
        q.clone(),
        env.cfg.redis.connection().subscriber().unwrap(),
        settings,
        registry,
    );
    let stop = CancellationToken::new();
    let worker = tokio::spawn(server.run(stop.clone()));
    let batch: Vec<_> = (1..=40).map(|id| msg(id, "critical")).collect();
    q.enqueue(&batch).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "every critical task ran",
        || async { (ran.lock().unwrap().len() == 40).then_some(()) },
    )
    .await;
    let stats = q.stats("critical").await.unwrap();
    assert_eq!((stats.pending, stats.active), (0, 0), "none left taken");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops")
        .unwrap();
}

#[tokio::test]
async fn a_task_enqueued_again_after_its_hash_expired_fences_off_the_earlier_run() {
    let env = TestEnv::new().await;
    let q = env.queue();
    q.enqueue(&[msg(1, "default")]).await.unwrap();
    let first = take_one(&q, "default", LEASE).await;
    // Completed, and its hash gone (retention 0: as after the retention
    // ended), then forwarded again by `relay --once --redeliver-since`.
    assert_eq!(
        q.complete(
            "default",
            Duration::ZERO,
            &[(TaskId::from(1), first.delivery)]
        )
        .await
        .unwrap(),
        [AckOutcome::Completed]
    );
    q.enqueue(&[msg(1, "default")]).await.unwrap();
    let second = take_one(&q, "default", LEASE).await;
    assert_ne!(
        second.delivery, first.delivery,
        "a number never handed out before"
    );
    // A worker still holding the first delivery can neither settle nor keep
    // the second run.
    assert_eq!(
        q.complete(
            "default",
            Duration::ZERO,
            &[(TaskId::from(1), first.delivery)]
        )
        .await
        .unwrap(),
        [AckOutcome::LeaseLost]
    );
    assert_eq!(
        q.fail(&first, "stale", Duration::ZERO, true).await.unwrap(),
        FailOutcome::LeaseLost
    );
    assert_eq!(q.requeue(&first).await.unwrap(), RequeueOutcome::LeaseLost);
    assert_eq!(
        q.extend("default", LEASE, &[(TaskId::from(1), first.delivery)])
            .await
            .unwrap(),
        [TaskId::from(1)]
    );
    let info = q.task("default", TaskId::from(1)).await.unwrap().unwrap();
    assert_eq!((info.state, info.retried), (TaskState::Active, 0));
    assert_eq!(
        q.complete(
            "default",
            Duration::ZERO,
            &[(TaskId::from(1), second.delivery)]
        )
        .await
        .unwrap(),
        [AckOutcome::Completed]
    );
}

#[tokio::test]
async fn a_state_change_made_twice_changes_nothing_the_second_time() {
    let env = TestEnv::new().await;
    let q = env.queue();
    q.enqueue(&[msg(1, "default"), msg(2, "default")])
        .await
        .unwrap();

    let t = take_one(&q, "default", LEASE).await;
    assert_eq!(q.requeue(&t).await.unwrap(), RequeueOutcome::Pending);
    assert_eq!(q.requeue(&t).await.unwrap(), RequeueOutcome::LeaseLost);
    assert_eq!(q.stats("default").await.unwrap().pending, 2, "pushed once");

    let t = take_one(&q, "default", LEASE).await;
    assert!(matches!(
        q.fail(&t, "boom", Duration::from_secs(60), false)
            .await
            .unwrap(),
        FailOutcome::Retry { .. }
    ));
    assert_eq!(
        q.fail(&t, "boom", Duration::from_secs(60), false)
            .await
            .unwrap(),
        FailOutcome::LeaseLost
    );
    assert_eq!(q.task("default", t.id).await.unwrap().unwrap().retried, 1);

    let t = take_one(&q, "default", LEASE).await;
    let runs = [(t.id, t.delivery)];
    let retention = Duration::from_secs(60);
    assert_eq!(
        q.complete("default", retention, &runs).await.unwrap(),
        [AckOutcome::Completed]
    );
    assert_eq!(
        q.complete("default", retention, &runs).await.unwrap(),
        [AckOutcome::LeaseLost]
    );
}

#[tokio::test]
async fn a_dequeue_whose_reply_was_lost_is_not_sent_again() {
    let mut env = TestEnv::new().await;
    let direct = env.queue();
    direct
        .enqueue(&[msg(1, "default"), msg(2, "default")])
        .await
        .unwrap();
    let mut link = CuttableLink::to(redis_addr(&env.cfg.redis.url)).await;
    env.cfg.redis.url = link.redis_url();
    env.cfg.redis.command_timeout = Duration::from_secs(5);
    // One connection, up before replies are swallowed (a connection still
    // shaking hands would never come up, and the call would wait on it).
    env.cfg.redis.pool_size = 1;
    let via_link = env.queue();
    // Loads the script into Redis (a NOSCRIPT answer would be swallowed too).
    assert!(
        via_link
            .dequeue("empty", 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    link.swallow_replies();
    let lease = Duration::from_millis(500);
    let call = tokio::spawn(async move { via_link.dequeue("default", 1, lease).await });
    // The script ran in Redis; its reply never arrived. The connection drops,
    // and comes back.
    eventually(Duration::from_secs(5), "the dequeue ran", || async {
        (direct.stats("default").await.unwrap().active == 1).then_some(())
    })
    .await;
    link.cut().await;
    link.restore().await;
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")
        .unwrap();
    assert!(
        answer.is_err(),
        "an error, not a second dequeue: {answer:?}"
    );
    let stats = direct.stats("default").await.unwrap();
    assert_eq!(
        (stats.pending, stats.active),
        (1, 1),
        "the other task was not taken by a replay"
    );
    // The task whose reply was lost is not lost: its lease runs out and it
    // is pending again.
    tokio::time::sleep(lease).await;
    let forwarded = direct.promote("default", 100).await.unwrap();
    assert_eq!(forwarded.recovered, 1);
    assert_eq!(direct.stats("default").await.unwrap().pending, 2);
}

#[test]
fn the_default_retry_schedule_outlasts_an_afternoon_outage() {
    let cfg = default_config();
    let retry = cfg.worker.server_settings().retry;
    let (shortest, longest) = retry.horizon(cfg.signup.verify_email_max_retry);
    // asynq's default, which the original service had: about 4.5 hours over
    // 10 retries. (Before: 13-17 minutes.)
    assert!(shortest >= Duration::from_secs(4 * 3600), "{shortest:?}");
    assert!(longest <= Duration::from_secs(6 * 3600), "{longest:?}");
}

/// What handlers of the fault tests did: (worker, task id) per effect.
type Effects = Arc<Mutex<Vec<(&'static str, i64)>>>;

/// A worker server with the Postgres ledger on `ledger_pool`, its Redis
/// reached through `redis` (a [`CuttableLink`]'s URL or the test's own).
fn start_worker(
    env: &TestEnv,
    redis_url: &str,
    ledger_pool: sqlx::PgPool,
    registry: HandlerRegistry,
    tweak: impl FnOnce(&mut WorkerSettings),
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut redis = env.cfg.redis.clone();
    redis.url = redis_url.to_owned();
    let mut settings = env.cfg.worker.server_settings();
    tweak(&mut settings);
    let server = WorkerServer::new(
        Broker::new(redis.connection().pool().unwrap(), &redis.key_prefix),
        redis.connection().subscriber().unwrap(),
        settings,
        registry,
    )
    .with_ledger(PgLedger::new(ledger_pool));
    let stop = CancellationToken::new();
    (stop.clone(), tokio::spawn(server.run(stop)))
}

async fn stop_worker((stop, handle): (CancellationToken, tokio::task::JoinHandle<()>)) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("worker stops")
        .unwrap();
}

/// Handlers of kind "k" that pass their fence, make their effect (noted in
/// `effects`), then cut `link` and succeed.
fn effect_then_cut(
    effects: &Effects,
    link: &Arc<tokio::sync::Mutex<CuttableLink>>,
) -> HandlerRegistry {
    let (seen, cut) = (effects.clone(), link.clone());
    let mut registry = HandlerRegistry::default();
    registry.register(
        "k",
        handler_fn(move |t: Task| {
            let (seen, cut) = (seen.clone(), cut.clone());
            async move {
                t.fence(Duration::from_millis(100)).await?;
                seen.lock().unwrap().push(("w", t.id.get()));
                cut.lock().await.cut().await;
                Ok(Processed::default())
            }
        }),
    );
    registry
}

fn one_task(id: i64, max_retry: u32) -> TaskMessage {
    TaskMessage {
        max_retry,
        ..msg(id, "default")
    }
}

#[tokio::test]
async fn a_worker_cut_off_from_redis_past_its_lease_stops_before_its_effect() {
    let env = TestEnv::new().await;
    let direct = env.queue();
    let link = CuttableLink::to(redis_addr(&env.cfg.redis.url)).await;
    let effects: Effects = Arc::default();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let go = Arc::new(tokio::sync::Notify::new());
    let registry = |name: &'static str| {
        let (effects, started_tx, go) = (effects.clone(), started_tx.clone(), go.clone());
        let mut registry = HandlerRegistry::default();
        registry.register(
            "k",
            handler_fn(move |t: Task| {
                let (effects, started_tx, go) = (effects.clone(), started_tx.clone(), go.clone());
                async move {
                    let _ = started_tx.send(name);
                    if name == "a" {
                        go.notified().await;
                    }
                    t.fence(Duration::from_millis(100)).await?;
                    effects.lock().unwrap().push((name, t.id.get()));
                    Ok(Processed::default())
                }
            }),
        );
        registry
    };
    let lease = |s: &mut WorkerSettings| s.lease = Duration::from_secs(1);
    let mut link = link;
    let a = start_worker(
        &env,
        &link.redis_url(),
        env.pool.clone(),
        registry("a"),
        lease,
    );
    direct.enqueue(&[one_task(1, 3)]).await.unwrap();
    assert_eq!(started.recv().await, Some("a"));
    // Worker a loses Redis in the middle of its run, for longer than the lease.
    link.cut().await;
    let b = start_worker(
        &env,
        &env.cfg.redis.url,
        env.pool.clone(),
        registry("b"),
        lease,
    );
    assert_eq!(
        started.recv().await,
        Some("b"),
        "b is handed the task once a's lease ran out"
    );
    let done =
        crate::common::wait_state(&direct, "default", TaskId::from(1), TaskState::Completed).await;
    assert_eq!(done.retried, 1, "a's run counted as an attempt");
    // Whatever a does now, it must not make the effect b made.
    go.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*effects.lock().unwrap(), [("b", 1)]);
    stop_worker(b).await;
    stop_worker(a).await;
}

#[tokio::test]
async fn a_ledger_record_that_fails_after_the_effect_is_retried_not_the_run() {
    let env = TestEnv::new().await;
    let direct = env.queue();
    let link = Arc::new(tokio::sync::Mutex::new(
        CuttableLink::to(postgres_addr(&env.db_url)).await,
    ));
    // Short waits for a connection, so that the cut shows at once; the
    // first connection may take longer on a busy machine.
    let via_link = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&link.lock().await.postgres_url(&env.db_url))
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "a first connection through the link",
        || async { via_link.acquire().await.ok().map(drop) },
    )
    .await;
    let effects: Effects = Arc::default();
    // The effect happens; then the ledger cannot be reached.
    let registry = effect_then_cut(&effects, &link);
    let worker = start_worker(&env, &env.cfg.redis.url, via_link, registry, |_| {});
    // A short timeout: the record's retries must not be cut by it either.
    let mut m = one_task(1, 3);
    m.timeout = Duration::from_millis(300);
    direct.enqueue(&[m]).await.unwrap();
    eventually(Duration::from_secs(10), "the effect", || async {
        (!effects.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        direct
            .task("default", TaskId::from(1))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Active,
        "still recording, neither retried nor acknowledged"
    );
    link.lock().await.restore().await;
    let done =
        crate::common::wait_state(&direct, "default", TaskId::from(1), TaskState::Completed).await;
    assert_eq!(done.retried, 0);
    assert_eq!(
        env.count("SELECT count(*) FROM task_ledger WHERE task_id = 1")
            .await,
        1
    );
    assert_eq!(
        effects.lock().unwrap().len(),
        1,
        "the effect was not repeated"
    );
    stop_worker(worker).await;
}

#[tokio::test]
async fn a_shutdown_lets_a_send_under_way_finish_and_hands_back_what_has_not_begun() {
    let env = TestEnv::new().await;
    let direct = env.queue();
    let effects: Effects = Arc::default();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let mut registry = HandlerRegistry::default();
    let seen = effects.clone();
    registry.register(
        "k",
        handler_fn(move |t: Task| {
            let (seen, started_tx) = (seen.clone(), started_tx.clone());
            async move {
                if t.id == TaskId::from(1) {
                    // Task 1 is sending when the shutdown comes.
                    t.fence(Duration::from_secs(1)).await?;
                    let _ = started_tx.send(t.id);
                    tokio::time::sleep(Duration::from_millis(800)).await;
                } else {
                    // Task 2 reaches its send only after the shutdown began.
                    let _ = started_tx.send(t.id);
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    t.fence(Duration::from_secs(1)).await?;
                }
                seen.lock().unwrap().push(("w", t.id.get()));
                Ok(Processed::default())
            }
        }),
    );
    let worker = start_worker(&env, &env.cfg.redis.url, env.pool.clone(), registry, |s| {
        s.shutdown_grace = Duration::from_secs(3);
    });
    direct
        .enqueue(&[one_task(1, 3), one_task(2, 3)])
        .await
        .unwrap();
    let mut ids = vec![started.recv().await.unwrap(), started.recv().await.unwrap()];
    ids.sort();
    assert_eq!(ids, [TaskId::from(1), TaskId::from(2)]);
    stop_worker(worker).await;
    assert_eq!(*effects.lock().unwrap(), [("w", 1)]);
    let (one, two) = (
        direct
            .task("default", TaskId::from(1))
            .await
            .unwrap()
            .unwrap(),
        direct
            .task("default", TaskId::from(2))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(one.state, TaskState::Completed);
    assert_eq!(
        (two.state, two.retried),
        (TaskState::Pending, 0),
        "handed back untried"
    );
}

#[tokio::test]
async fn a_run_that_completed_after_its_lease_ran_out_is_completed_in_redis_too() {
    let env = TestEnv::new().await;
    let direct = env.queue();
    let link = Arc::new(tokio::sync::Mutex::new(
        CuttableLink::to(redis_addr(&env.cfg.redis.url)).await,
    ));
    let effects: Effects = Arc::default();
    // Done, and recorded in the ledger next; but Redis is out of reach for
    // the acknowledgement, longer than the lease.
    let registry = effect_then_cut(&effects, &link);
    let url = link.lock().await.redis_url();
    let worker = start_worker(&env, &url, env.pool.clone(), registry, |s| {
        s.lease = Duration::from_secs(1)
    });
    // No retries left: an expired lease archives the task.
    direct.enqueue(&[one_task(1, 0)]).await.unwrap();
    eventually(Duration::from_secs(10), "the ledger row", || async {
        (env.count("SELECT count(*) FROM task_ledger WHERE task_id = 1")
            .await
            == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(direct.promote("default", 100).await.unwrap().recovered, 1);
    let archived = direct
        .task("default", TaskId::from(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(archived.state, TaskState::Archived, "{archived:?}");
    link.lock().await.restore().await;
    crate::common::wait_state(&direct, "default", TaskId::from(1), TaskState::Completed).await;
    assert!(
        direct
            .list("default", TaskState::Archived, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(effects.lock().unwrap().len(), 1);
    stop_worker(worker).await;
}

#[tokio::test]
async fn an_enqueue_refused_half_way_writes_nothing_and_can_be_repeated() {
    let env = TestEnv::new().await;
    let q = env.queue();
    let raw = redis_client(&env.cfg.redis.url).await;
    let pending = q.keys("default").pending;
    let _: () = raw
        .set(&pending, "not a list", None, None, false)
        .await
        .unwrap();
    assert!(q.enqueue(&[msg(1, "default")]).await.is_err());
    assert_eq!(
        q.task("default", TaskId::from(1)).await.unwrap(),
        None,
        "no hash left behind"
    );
    // Repaired, the relay's next attempt enqueues the task.
    let _: () = raw.del(&pending).await.unwrap();
    assert_eq!(q.enqueue(&[msg(1, "default")]).await.unwrap(), 1);
    assert_eq!(q.stats("default").await.unwrap().pending, 1);
}

#[tokio::test]
async fn the_archive_keeps_to_its_age_and_size_limits() {
    let env = TestEnv::new().await;
    let q = env.queue().with_archive_limits(queue::ArchiveLimits {
        max_age: Duration::from_millis(300),
        max_size: 3,
    });
    let archive = |id| {
        let q = q.clone();
        async move {
            q.enqueue(&[msg(id, "default")]).await.unwrap();
            let t = take_one(&q, "default", LEASE).await;
            assert_eq!(
                q.fail(&t, "no", Duration::ZERO, true).await.unwrap(),
                FailOutcome::Archived
            );
        }
    };
    for id in 1..=5 {
        archive(id).await;
    }
    let ids =
        |v: Vec<simplebank::queue::TaskInfo>| v.into_iter().map(|t| t.id.get()).collect::<Vec<_>>();
    assert_eq!(
        ids(q.list("default", TaskState::Archived, 0, 10).await.unwrap()),
        [3, 4, 5],
        "the oldest beyond the size limit went"
    );
    assert_eq!(
        q.task("default", TaskId::from(1)).await.unwrap(),
        None,
        "with their hashes"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    archive(6).await;
    assert_eq!(
        ids(q.list("default", TaskState::Archived, 0, 10).await.unwrap()),
        [6],
        "and those past the age limit"
    );
}

#[tokio::test]
async fn a_fence_renews_the_lease_in_redis_and_a_gone_task_fences_off() {
    let env = TestEnv::new().await;
    let q = env.queue();
    q.enqueue(&[msg(1, "default"), msg(2, "default")])
        .await
        .unwrap();
    let held = take_one(&q, "default", LEASE).await;
    held.fence(Duration::from_secs(1)).await.unwrap();
    // Redis lost the other task's hash: locally its lease looks fine, but
    // nothing in Redis stops another delivery now.
    let gone = take_one(&q, "default", LEASE).await;
    let raw = redis_client(&env.cfg.redis.url).await;
    let _: () = raw.del(q.keys("default").task(gone.id)).await.unwrap();
    let refused = gone.fence(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(
            refused,
            simplebank::queue::TaskError::Fenced(queue::Fenced::LeaseLost)
        ),
        "{refused}"
    );
    assert_eq!(
        q.extend("default", LEASE, &[(gone.id, gone.delivery)])
            .await
            .unwrap(),
        [gone.id]
    );
}

#[tokio::test]
async fn a_run_past_its_fence_is_let_finish_when_its_lease_is_lost() {
    let env = TestEnv::new().await;
    let direct = env.queue();
    let effects: Effects = Arc::default();
    let (fenced_tx, mut fenced) = tokio::sync::mpsc::unbounded_channel();
    let mut registry = HandlerRegistry::default();
    let seen = effects.clone();
    registry.register(
        "k",
        handler_fn(move |t: Task| {
            let (seen, fenced_tx) = (seen.clone(), fenced_tx.clone());
            async move {
                t.fence(Duration::from_millis(500)).await?;
                let _ = fenced_tx.send(t.id.get());
                // The send takes a while; meanwhile the lease is lost.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                seen.lock().unwrap().push(("w", t.id.get()));
                Ok(Processed::default())
            }
        }),
    );
    let worker = start_worker(&env, &env.cfg.redis.url, env.pool.clone(), registry, |s| {
        s.lease = Duration::from_millis(600)
    });
    direct.enqueue(&[one_task(1, 3)]).await.unwrap();
    assert_eq!(fenced.recv().await, Some(1));
    // The lease keeper (every 200 ms) finds the task gone: lease lost.
    let raw = redis_client(&env.cfg.redis.url).await;
    let _: () = raw
        .del(direct.keys("default").task(TaskId::from(1)))
        .await
        .unwrap();
    // The run ends with its effect and then its ledger record (which the
    // handler's return comes before): wait for the record.
    eventually(
        Duration::from_secs(5),
        "the ledger record: the run was let finish",
        || async {
            (env.count("SELECT count(*) FROM task_ledger WHERE task_id = 1")
                .await
                == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(effects.lock().unwrap().len(), 1, "one effect");
    stop_worker(worker).await;
}
