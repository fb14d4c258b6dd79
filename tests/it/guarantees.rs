//! The queue's guarantees under partial failure: a failing queue, a lost
//! reply, a repeated call, a stale worker. Each test here failed on the code
//! before its fix (the issue note says which).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::prelude::*;
use simplebank::queue::{
    self, AckOutcome, Broker, FailOutcome, HandlerRegistry, Processed, RequeueOutcome, Task,
    TaskId, TaskMessage, TaskState, WorkerServer, handler_fn,
};
use tokio_util::sync::CancellationToken;

use crate::common::{CuttableLink, TestEnv, default_config, eventually, redis_addr, redis_client};

const LEASE: Duration = Duration::from_secs(30);

pub(crate) fn msg(id: i64, queue: &str) -> TaskMessage {
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
    )
    .with_observer(std::sync::Arc::new(simplebank::events::Announced));
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
        protect: Duration::ZERO,
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
async fn the_size_limit_never_deletes_a_recently_archived_task() {
    let env = TestEnv::new().await;
    let q = env.queue().with_archive_limits(queue::ArchiveLimits {
        max_age: Duration::from_secs(3600),
        max_size: 3,
        protect: Duration::from_secs(600),
    });
    // A burst of failures twice the cap, all within the protected age.
    for id in 1..=6 {
        q.enqueue(&[msg(id, "default")]).await.unwrap();
        let t = take_one(&q, "default", LEASE).await;
        assert_eq!(
            q.fail(&t, "sender refused", Duration::ZERO, true)
                .await
                .unwrap(),
            FailOutcome::Archived
        );
    }
    assert_eq!(q.trim_archive("default").await.unwrap(), 0);
    let kept: Vec<i64> = q
        .list("default", TaskState::Archived, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id.get())
        .collect();
    assert_eq!(kept, [1, 2, 3, 4, 5, 6], "every one kept, over the cap");
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

/// A task's first hand-out is told apart from every later one: a run handed
/// back untried, and a retry from the archive (which counts its attempts
/// from 1 again), are not first, so their trace links to the sign-up's
/// instead of joining it.
#[tokio::test]
async fn only_a_tasks_first_hand_out_is_first() {
    let env = TestEnv::new().await;
    let q = env.queue();
    q.enqueue(&[msg(1, "default")]).await.unwrap();
    let first = take_one(&q, "default", LEASE).await;
    assert!(first.first_hand_out);
    q.requeue(&first).await.unwrap();
    let again = take_one(&q, "default", LEASE).await;
    assert!(
        !again.first_hand_out,
        "a hand-back's next run is not the first"
    );
    assert_eq!(again.attempt, 1);
    q.fail(&again, "boom", Duration::ZERO, true).await.unwrap();
    q.run_now("default", again.id, "test").await.unwrap();
    let retried = take_one(&q, "default", LEASE).await;
    assert!(
        !retried.first_hand_out,
        "a retry from the archive is not the first"
    );
}
