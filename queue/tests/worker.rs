//! Over 450 lines on purpose: one test binary for the worker, so its tests link once.
//!
//! The worker server and broker against a real Redis (`make test` starts one
//! and exports REDIS_URL): idempotent enqueue, weights, strict priority,
//! delays, retries, archive, panics, timeouts, leases, shutdown, and the
//! ledger that keeps a completed task from running again.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use fred::prelude::*;
use simplebank_queue::{
    HandlerRegistry, Processed, Task, TaskError, TaskId, TaskMessage, TaskState, handler_fn,
};

use common::{
    MemoryLedger, QueueEnv, eventually, redis_client, start_worker, start_worker_with, stop_worker,
    wait_state,
};

fn msg(id: i64, kind: &str, queue: &str) -> TaskMessage {
    TaskMessage::new(TaskId::from(id), kind, queue)
        .with_payload(format!(r#"{{"n":{id}}}"#))
        .with_max_retry(3)
}

#[tokio::test]
async fn enqueue_is_idempotent_by_task_id() {
    let env = QueueEnv::new().await;
    let q = env.queue();
    assert_eq!(
        q.enqueue(&[msg(1, "k", "default"), msg(2, "k", "default")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(q.enqueue(&[msg(1, "k", "default")]).await.unwrap(), 0);
    assert_eq!(
        q.enqueue(&[msg(2, "k", "default"), msg(3, "k", "critical")])
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.stats("default").await.unwrap().pending, 2);
    assert_eq!(q.stats("critical").await.unwrap().pending, 1);
}

#[tokio::test]
async fn weights_are_honoured_when_all_queues_are_full() {
    let env = QueueEnv::new().await;
    let q = env.queue();
    let per_queue = 12_000i64;
    for chunk in 0..(per_queue / 1000) {
        let batch: Vec<_> = (0..1000)
            .flat_map(|i| {
                let id = chunk * 1000 + i;
                [
                    msg(id * 2, "noop", "critical"),
                    msg(id * 2 + 1, "noop", "default"),
                ]
            })
            .collect();
        q.enqueue(&batch).await.unwrap();
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut registry = HandlerRegistry::default();
    let seen = order.clone();
    registry.register(
        "noop",
        handler_fn(move |t: Task| {
            seen.lock().unwrap().push(t.queue == "critical");
            async { Ok(Processed::default()) }
        }),
    );
    let worker = start_worker(&env, registry, |s| s.concurrency = 16);
    eventually(
        Duration::from_secs(60),
        "10,000 tasks processed",
        || async { (order.lock().unwrap().len() >= 10_000).then_some(()) },
    )
    .await;
    stop_worker(worker).await;
    let order = order.lock().unwrap();
    let critical = order[..10_000].iter().filter(|c| **c).count() as f64 / 10_000.0;
    // critical=10, default=5: two thirds.
    assert!(
        (critical - 2.0 / 3.0).abs() < 0.03,
        "critical share {critical:.3}"
    );
}

#[tokio::test]
async fn strict_priority_serves_the_highest_queue_first() {
    let env = QueueEnv::new().await;
    let q = env.queue();
    let batch: Vec<_> = (0..300)
        .flat_map(|i| {
            [
                msg(i * 2, "noop", "critical"),
                msg(i * 2 + 1, "noop", "default"),
            ]
        })
        .collect();
    q.enqueue(&batch).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "noop",
        handler_fn(move |t: Task| {
            seen.lock().unwrap().push(t.queue);
            async { Ok(Processed::default()) }
        }),
    );
    let worker = start_worker(&env, registry, |s| {
        s.strict_priority = true;
        s.concurrency = 1;
    });
    eventually(Duration::from_secs(30), "all tasks processed", || async {
        (order.lock().unwrap().len() == 600).then_some(())
    })
    .await;
    stop_worker(worker).await;
    let order = order.lock().unwrap();
    assert!(order[..300].iter().all(|q| q == "critical"));
    assert!(order[300..].iter().all(|q| q == "default"));
}

#[tokio::test]
async fn a_delayed_task_waits_for_its_time() {
    let env = QueueEnv::new().await;
    let started = Arc::new(Mutex::new(None));
    let seen = started.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "noop",
        handler_fn(move |_t: Task| {
            *seen.lock().unwrap() = Some(Utc::now());
            async { Ok(Processed::default()) }
        }),
    );
    let worker = start_worker(&env, registry, |_| {});
    let q = env.queue();
    let mut m = msg(7, "noop", "default");
    m.process_at = Utc::now() + chrono::Duration::milliseconds(1500);
    q.enqueue(&[m.clone()]).await.unwrap();
    assert_eq!(
        q.task("default", TaskId::from(7))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Scheduled
    );
    let at = eventually(
        Duration::from_secs(10),
        "the delayed task to start",
        || async { *started.lock().unwrap() },
    )
    .await;
    stop_worker(worker).await;
    let late = at - m.process_at;
    assert!(late >= chrono::Duration::zero(), "started {late} early");
    // Generous bound for a loaded CI machine; the benchmark measures the real figure.
    assert!(late < chrono::Duration::seconds(1), "started {late} late");
}

#[tokio::test]
async fn failures_retry_with_backoff_then_archive_with_the_error() {
    let env = QueueEnv::new().await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "flaky",
        handler_fn(move |t: Task| {
            seen.lock().unwrap().push((t.attempt, Instant::now()));
            async move {
                Err(TaskError::from(anyhow::anyhow!(
                    "boom on attempt {}",
                    t.attempt
                )))
            }
        }),
    );
    let worker = start_worker(&env, registry, |s| {
        s.retry.unit = Duration::from_millis(5);
        s.retry.max = Duration::from_secs(1);
    });
    let q = env.queue();
    let mut m = msg(9, "flaky", "default");
    m.max_retry = 2;
    q.enqueue(&[m]).await.unwrap();
    let info = wait_state(&q, "default", TaskId::from(9), TaskState::Archived).await;
    stop_worker(worker).await;
    assert_eq!(info.retried, 2);
    assert_eq!(info.last_error.as_deref(), Some("boom on attempt 3"));
    let archived = q.list("default", TaskState::Archived, 0, 10).await.unwrap();
    assert_eq!(
        archived.iter().map(|t| t.id).collect::<Vec<_>>(),
        [TaskId::from(9)]
    );
    let calls = calls.lock().unwrap();
    let attempts: Vec<_> = calls.iter().map(|c| c.0).collect();
    assert_eq!(attempts, [1, 2, 3]);
    // The schedule: retry 0 waits at least 15 units, retry 1 at least 16.
    assert!(calls[1].1 - calls[0].1 >= Duration::from_millis(75));
    assert!(calls[2].1 - calls[1].1 >= Duration::from_millis(80));
}

#[tokio::test]
async fn skip_retry_unknown_kinds_panics_and_timeouts() {
    let env = QueueEnv::new().await;
    let mut registry = HandlerRegistry::default();
    registry.register(
        "skip",
        handler_fn(|_t: Task| async { Err(TaskError::skip_retry(anyhow::anyhow!("hopeless"))) }),
    );
    registry.register(
        "panics_once",
        handler_fn(|t: Task| async move {
            if t.attempt == 1 {
                panic!("handler blew up");
            }
            Ok(Processed::default())
        }),
    );
    registry.register(
        "slow",
        handler_fn(|_t: Task| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Processed::default())
        }),
    );
    let worker = start_worker(&env, registry, |_| {});
    let q = env.queue();
    let mut slow = msg(4, "slow", "default");
    slow.timeout = Duration::from_millis(200);
    slow.max_retry = 0;
    q.enqueue(&[
        msg(1, "skip", "default"),
        msg(2, "panics_once", "default"),
        msg(3, "mystery", "default"),
        slow,
    ])
    .await
    .unwrap();

    let skipped = wait_state(&q, "default", TaskId::from(1), TaskState::Archived).await;
    assert_eq!(
        (skipped.retried, skipped.last_error.as_deref()),
        (0, Some("hopeless"))
    );
    let panicked = wait_state(&q, "default", TaskId::from(2), TaskState::Completed).await;
    assert_eq!(
        panicked.retried, 1,
        "the panic counted as one failed attempt"
    );
    let unknown = wait_state(&q, "default", TaskId::from(3), TaskState::Archived).await;
    assert!(
        unknown.last_error.unwrap().contains("no handler"),
        "unknown kind archived with a clear error"
    );
    let timed_out = wait_state(&q, "default", TaskId::from(4), TaskState::Archived).await;
    assert!(timed_out.last_error.unwrap().contains("timed out"));
    stop_worker(worker).await;
}

#[tokio::test]
async fn graceful_shutdown_hands_running_tasks_back() {
    let env = QueueEnv::new().await;
    let started = Arc::new(Mutex::new(0));
    let seen = started.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "forever",
        handler_fn(move |_t: Task| {
            *seen.lock().unwrap() += 1;
            async {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(Processed::default())
            }
        }),
    );
    let worker = start_worker(&env, registry, |s| {
        s.shutdown_grace = Duration::from_millis(200)
    });
    let q = env.queue();
    q.enqueue(&[msg(5, "forever", "default")]).await.unwrap();
    wait_state(&q, "default", TaskId::from(5), TaskState::Active).await;
    let t = Instant::now();
    stop_worker(worker).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    let info = q.task("default", TaskId::from(5)).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.retried),
        (TaskState::Pending, 0),
        "handed back without counting a retry"
    );
    let stats = q.stats("default").await.unwrap();
    assert_eq!((stats.pending, stats.active), (1, 0));
    assert_eq!(*started.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_run_waiting_for_its_outcome_outlives_its_timeout_and_not_the_grace() {
    let env = QueueEnv::new().await;
    let mut registry = HandlerRegistry::default();
    // Hands its effect over, then waits for the outcome longer than its
    // timeout (1 s): 1.5 s the first time, 600 s the second.
    let waits = Arc::new(Mutex::new(vec![
        Duration::from_secs(600),
        Duration::from_millis(1500),
    ]));
    registry.register(
        "slow-reply",
        handler_fn(move |t: Task| {
            let wait = waits.lock().unwrap().pop().unwrap_or(Duration::ZERO);
            async move {
                t.fence(Duration::from_millis(100)).await?;
                t.await_outcome(Duration::from_secs(3600));
                tokio::time::sleep(wait).await;
                Ok(Processed::default())
            }
        }),
    );
    let worker = start_worker(&env, registry, |s| {
        s.shutdown_grace = Duration::from_millis(300)
    });
    let q = env.queue();
    let slow = |id| msg(id, "slow-reply", "default").with_timeout(Duration::from_secs(1));
    q.enqueue(&[slow(31)]).await.unwrap();
    // Not cut at its timeout: the wait moved it.
    let done = wait_state(&q, "default", TaskId::from(31), TaskState::Completed).await;
    assert_eq!(done.retried, 0, "{done:?}");
    // A shutdown does not wait 600 s for the second: abandoned at the end
    // of the grace, handed back uncounted.
    q.enqueue(&[slow(32)]).await.unwrap();
    wait_state(&q, "default", TaskId::from(32), TaskState::Active).await;
    let t = Instant::now();
    stop_worker(worker).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let info = q.task("default", TaskId::from(32)).await.unwrap().unwrap();
    assert_eq!((info.state, info.retried), (TaskState::Pending, 0));
}

/// Not a test on its own: the worker process that `a_killed_worker_loses_nothing`
/// starts and kills. Runs only when that test sets its environment.
#[tokio::test]
#[ignore]
async fn child_worker_for_kill_test() {
    let Ok(prefix) = std::env::var("SBTEST_CHILD_PREFIX") else {
        return;
    };
    let env = QueueEnv::with_prefix(&prefix);
    let client = redis_client(&env.redis.url).await;
    let mut registry = HandlerRegistry::default();
    registry.register(
        "slow",
        handler_fn(move |_t: Task| {
            let client = client.clone();
            let key = format!("{prefix}:child-started");
            async move {
                let _: () = client.set(key, 1, None, None, false).await?;
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(Processed::default())
            }
        }),
    );
    let worker = start_worker(&env, registry, |s| s.lease = Duration::from_secs(1));
    // Bounded: the parent kills this process long before.
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop_worker(worker).await;
}

#[tokio::test]
async fn a_killed_worker_loses_nothing() {
    let env = QueueEnv::new().await;
    let prefix = env.prefix.clone();
    let q = env.queue();
    q.enqueue(&[msg(11, "slow", "default")]).await.unwrap();

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_worker_for_kill_test",
            "--ignored",
            "--nocapture",
        ])
        .env("SBTEST_CHILD_PREFIX", &prefix)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = redis_client(&env.redis.url).await;
    eventually(
        Duration::from_secs(30),
        "the child to start the task",
        || {
            let client = client.clone();
            let key = format!("{prefix}:child-started");
            async move { client.exists::<i64, _>(key).await.ok().filter(|n| *n == 1) }
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL: no hand-back, no clean-up
    child.wait().unwrap();
    assert_eq!(
        q.task("default", TaskId::from(11))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Active
    );

    let runs = Arc::new(Mutex::new(HashMap::new()));
    let seen = runs.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "slow",
        handler_fn(move |t: Task| {
            seen.lock().unwrap().insert(t.id, t.attempt);
            async { Ok(Processed::default()) }
        }),
    );
    let worker = start_worker(&env, registry, |_| {});
    let info = wait_state(&q, "default", TaskId::from(11), TaskState::Completed).await;
    stop_worker(worker).await;
    assert_eq!(
        runs.lock().unwrap().get(&TaskId::from(11)),
        Some(&2),
        "run again as the second attempt"
    );
    assert_eq!(info.retried, 1);
}

#[tokio::test]
async fn a_task_longer_than_its_lease_keeps_it_and_runs_once() {
    let env = QueueEnv::new().await;
    let runs = Arc::new(Mutex::new(0u32));
    let counter = runs.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "slow",
        handler_fn(move |_t: Task| {
            *counter.lock().unwrap() += 1;
            async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(Processed::default())
            }
        }),
    );
    // A 300 ms lease, extended every 100 ms: were it not extended, the lease
    // would expire and the task would be handed out again to a free slot.
    let worker = start_worker(&env, registry, |s| {
        s.lease = Duration::from_millis(300);
        s.concurrency = 4;
    });
    let q = env.queue();
    q.enqueue(&[msg(9, "slow", "default")]).await.unwrap();
    let done = wait_state(&q, "default", TaskId::from(9), TaskState::Completed).await;
    stop_worker(worker).await;
    assert_eq!(*runs.lock().unwrap(), 1, "ran once");
    assert_eq!(done.retried, 0);
}

/// A task whose run the ledger holds is acknowledged without running again,
/// even when Redis forgot it ran (a restart without persistence) and the
/// producer enqueued it once more.
#[tokio::test]
async fn a_task_in_the_ledger_is_not_run_again() {
    let env = QueueEnv::new().await;
    let q = env.queue();
    let runs = Arc::new(Mutex::new(0u32));
    let counter = runs.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "once",
        handler_fn(move |_t: Task| {
            *counter.lock().unwrap() += 1;
            async { Ok(Processed::default()) }
        }),
    );
    let ledger = MemoryLedger::default();
    let worker = start_worker_with(&env, registry, Some(ledger.clone()), |_| {});
    q.enqueue(&[msg(21, "once", "default")]).await.unwrap();
    wait_state(&q, "default", TaskId::from(21), TaskState::Completed).await;
    assert!(
        ledger.contains(TaskId::from(21)),
        "the run is in the ledger"
    );

    // Redis loses the task's hash; the same task is enqueued again.
    let raw = redis_client(&env.redis.url).await;
    let _: () = raw
        .del(q.keys("default").task(TaskId::from(21)))
        .await
        .unwrap();
    assert_eq!(q.enqueue(&[msg(21, "once", "default")]).await.unwrap(), 1);
    wait_state(&q, "default", TaskId::from(21), TaskState::Completed).await;
    stop_worker(worker).await;
    assert_eq!(*runs.lock().unwrap(), 1, "acknowledged, not run again");
}

#[tokio::test]
async fn a_dependency_down_holds_its_queue_back_and_burns_no_attempt() {
    let env = QueueEnv::new().await;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (is_down, seen) = (down.clone(), calls.clone());
    let mut registry = HandlerRegistry::default();
    registry.register(
        "needs-smtp",
        handler_fn(move |_t: Task| {
            seen.lock().unwrap().push(Instant::now());
            let down = is_down.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                match down {
                    true => Err(TaskError::unavailable(anyhow::anyhow!("sender refused"))),
                    false => Ok(Processed::default()),
                }
            }
        }),
    );
    registry.register(
        "ok",
        handler_fn(|_t: Task| async { Ok(Processed::default()) }),
    );
    // Breaker: 3 in a row, a first pause of 300 ms, at most 2 s.
    let worker = start_worker(&env, registry, |_| {});
    let q = env.queue();
    q.enqueue(&[msg(21, "needs-smtp", "default")])
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the queue held back", || async {
        let held = q.stats("default").await.unwrap().held_back;
        (held && calls.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    let task = q.task("default", TaskId::from(21)).await.unwrap().unwrap();
    assert_eq!(task.retried, 0, "no attempt counted: {task:?}");
    assert_ne!(task.state, TaskState::Archived);
    // The other queue flows meanwhile.
    q.enqueue(&[msg(22, "ok", "critical")]).await.unwrap();
    wait_state(&q, "critical", TaskId::from(22), TaskState::Completed).await;
    // Each probe, one task at a time, waits out a pause that doubles.
    eventually(Duration::from_secs(10), "two probes", || async {
        (calls.lock().unwrap().len() >= 5).then_some(())
    })
    .await;
    {
        let calls = calls.lock().unwrap();
        let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[2] >= Duration::from_millis(300), "{gaps:?}");
        assert!(gaps[3] >= Duration::from_millis(600), "{gaps:?}");
    }
    // The queue's latency counts the probe's wait from before it was first
    // handed back, not from the last hand-back.
    let latency = q.stats("default").await.unwrap().latency;
    assert!(latency >= Some(Duration::from_millis(800)), "{latency:?}");
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    let done = wait_state(&q, "default", TaskId::from(21), TaskState::Completed).await;
    assert_eq!(done.retried, 0, "{done:?}");
    eventually(Duration::from_secs(10), "the breaker closed", || async {
        (!q.stats("default").await.unwrap().held_back).then_some(())
    })
    .await;
    stop_worker(worker).await;
}

#[tokio::test]
async fn a_lease_lost_while_waiting_for_the_outcome_does_not_stop_the_run() {
    let env = QueueEnv::new().await;
    // Which runs finished their wait, by the order they began.
    let finished: Arc<Mutex<Vec<bool>>> = Arc::default();
    let runs = finished.clone();
    let waiting = Arc::new(tokio::sync::Notify::new());
    let began = waiting.clone();
    let mut registry = HandlerRegistry::default();
    registry.register(
        "slow-reply",
        handler_fn(move |t: Task| {
            let (runs, began) = (runs.clone(), began.clone());
            async move {
                t.fence(Duration::from_millis(100)).await?;
                let me = {
                    let mut runs = runs.lock().unwrap();
                    runs.push(false);
                    runs.len() - 1
                };
                t.await_outcome(Duration::from_secs(60));
                began.notify_one();
                tokio::time::sleep(Duration::from_secs(2)).await;
                runs.lock().unwrap()[me] = true;
                Ok(Processed::default())
            }
        }),
    );
    // A short lease, extended every half second.
    let worker = start_worker(&env, registry, |s| s.lease = Duration::from_millis(1500));
    let q = env.queue();
    q.enqueue(&[msg(41, "slow-reply", "default")])
        .await
        .unwrap();
    waiting.notified().await;
    // Another delivery took the task (as after a lease lost to a partition):
    // the next extension finds the lease lost.
    let raw = redis_client(&env.redis.url).await;
    let _: () = raw
        .hincrby(q.keys("default").task(TaskId::from(41)), "deliveries", 1)
        .await
        .unwrap();
    // The first run is not dropped: its wait ends, and so does its run.
    eventually(
        Duration::from_secs(10),
        "the first run finished its wait",
        || async { finished.lock().unwrap()[0].then_some(()) },
    )
    .await;
    stop_worker(worker).await;
}
