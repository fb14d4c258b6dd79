//! The guarantees of a worker server under partial failure: a link to Redis
//! or Postgres cut mid-run, a shutdown, a lease lost past the fence. Each
//! test here failed on the code before its fix (the issue note says which).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::prelude::*;
use simplebank::{
    events::Announced,
    queue::{
        Broker, HandlerRegistry, Processed, Task, TaskId, TaskMessage, TaskState, WorkerServer,
        WorkerSettings, handler_fn,
    },
    tasks::ledger::PgLedger,
};

use crate::common::{
    CuttableLink, RunningWorker, TestEnv, eventually, postgres_addr, redis_addr, redis_client,
    stop_worker,
};
use crate::guarantees::msg;

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
) -> RunningWorker {
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
    .with_ledger(PgLedger::new(ledger_pool))
    .with_observer(Arc::new(Announced));
    RunningWorker::spawn(server)
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
