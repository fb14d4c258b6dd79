//! The operator's command line: pausing and resuming a queue, and listing,
//! showing, retrying and deleting tasks, each change audited.

use std::time::Duration;

use simplebank::{
    app::Components,
    queue::{Broker, TaskId, TaskState},
};

use crate::common::*;

/// Runs `simplebank args...` against `env` as a user named ops-test.
/// Returns (exit success, stdout, stderr).
async fn cli(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let mut command = env.command(args);
    command.env("USER", "ops-test");
    let mut command = tokio::process::Command::from(command);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command ends")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn cli_json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = cli(env, args).await;
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// A paused queue hands out nothing; resumed, its tasks run. Each change
/// leaves one audit line naming the user.
#[tokio::test]
async fn a_paused_queue_is_not_dequeued_until_it_is_resumed() {
    let env = TestEnv::new().await;
    let app = env.start(Components::WORKER).await;
    let broker = env.queue();

    let (ok, out, err) = cli(&env, &["queues", "pause", "critical"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("queue critical paused"), "{out}");
    let audit: Vec<&str> = err.lines().filter(|l| l.contains("audit")).collect();
    assert_eq!(audit.len(), 1, "one audit line: {err}");
    assert!(
        audit[0].contains("cli:ops-test") && audit[0].contains("pause"),
        "{}",
        audit[0]
    );
    // Pausing again changes nothing, and says so.
    let (ok, out, _) = cli(&env, &["queues", "pause", "critical"]).await;
    assert!(ok && out.contains("already"), "{out}");
    // An unknown queue is refused, naming the setting.
    let (ok, _, err) = cli(&env, &["queues", "pause", "critcal"]).await;
    assert!(!ok && err.contains("WORKER_QUEUES"), "{err}");

    // No handler for this kind: once dequeued, it is archived at once.
    broker
        .enqueue(&[task_msg(1, "task:nobody", "critical")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queues = cli_json(&env, &["queues", "--json"]).await;
    let critical = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "critical")
        .unwrap();
    assert_eq!(critical["paused"], true, "{critical}");
    assert_eq!(
        critical["pending"], 1,
        "still waiting while paused: {critical}"
    );
    assert!(
        critical["latency_seconds"].as_f64().unwrap() >= 1.0,
        "{critical}"
    );

    let (ok, out, err) = cli(&env, &["queues", "resume", "critical"]).await;
    assert!(ok && out.contains("resumed"), "{out} {err}");
    wait_state(&broker, "critical", TaskId::from(1), TaskState::Archived).await;
    let queues = cli_json(&env, &["queues", "--json"]).await;
    assert_eq!(queues[0]["paused"], false, "{queues}");
    assert_watch_prints_again_and_again(&env).await;
    // The table, for people.
    let (ok, out, _) = cli(&env, &["queues"]).await;
    assert!(
        ok && out.contains("critical") && out.contains("running"),
        "{out}"
    );
    app.stop().await;
}

/// --watch prints again and again until stopped (here: two documents,
/// one per line, then the process is killed by its PID).
async fn assert_watch_prints_again_and_again(env: &TestEnv) {
    let mut watch =
        tokio::process::Command::from(env.command(&["queues", "--watch", "100ms", "--json"]));
    let mut watch = watch
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("the watch goes on");
        let doc: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            doc.as_array().unwrap().len(),
            env.cfg.worker.queues.0.len(),
            "{doc}"
        );
    }
    watch.kill().await.unwrap();
}

/// The operator's repair after an outage: a sign-up's email could not be
/// sent and its task was archived; `tasks ls`, `tasks show` and a retry
/// (dry run first) make it run, once.
#[tokio::test]
async fn an_archived_task_retried_from_the_cli_runs_once() {
    let mut env = TestEnv::new().await;
    // The mail folder cannot be made while a file stands in its way: every
    // send fails, and with no retries the task is archived at once.
    let blocker = std::env::temp_dir().join(format!("sbblock-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&blocker, b"not a folder").unwrap();
    env.cfg.mail.dir = blocker.join("mail");
    env.cfg.signup.verify_email_max_retry = 0;
    let app = env.start(Components::ALL).await;
    let broker = env.queue();
    let queue = env.cfg.signup.verify_email_queue.clone();
    let (status, _) = app.post_json("/v1/create_user", user_json("olga")).await;
    assert_eq!(status, 200);
    let id = env.only_outbox_id().await;
    wait_state(&broker, &queue, id, TaskState::Archived).await;

    assert_tasks_ls_finds_the_archived_one(&env, &queue, id).await;

    let shown = cli_json(&env, &["tasks", "show", &id.to_string(), "--json"]).await;
    assert_eq!(shown["outbox"]["queue"], queue.as_str(), "{shown}");
    assert_eq!(shown["redis"]["state"], "archived", "{shown}");
    assert!(shown["ledger"].is_null(), "{shown}");
    assert!(shown["outbox"]["request_id"].is_string(), "{shown}");
    // Each send attempt and what became of it.
    assert_eq!(shown["sends"][0]["outcome"], "failed", "{shown}");
    assert!(
        shown["sends"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("mail file"),
        "{shown}"
    );

    // A dry run changes nothing.
    let (ok, out, err) = cli(
        &env,
        &[
            "tasks",
            "retry",
            "--queue",
            &queue,
            "--archived",
            "--dry-run",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("would retry task {id}")), "{out}");
    assert_eq!(
        broker.task(&queue, id).await.unwrap().unwrap().state,
        TaskState::Archived
    );

    // The outage is over; the retry runs the task, once.
    std::fs::remove_file(&blocker).unwrap();
    let (ok, out, err) = cli(&env, &["tasks", "retry", "--queue", &queue, "--archived"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("retried 1 archived task"), "{out}");
    assert_eq!(
        err.lines().filter(|l| l.contains("audit")).count(),
        1,
        "{err}"
    );
    wait_state(&broker, &queue, id, TaskState::Completed).await;
    let shown = cli_json(&env, &["tasks", "show", &id.to_string(), "--json"]).await;
    assert_eq!(shown["ledger"]["kind"], "task:send_verify_email", "{shown}");
    // One code per attempt: the failed one and the one that was sent.
    assert_eq!(shown["verify_email"]["codes"], 2, "{shown}");
    let sends = shown["sends"].as_array().unwrap();
    assert_eq!(sends.len(), 2, "{shown}");
    assert_eq!(sends[1]["outcome"], "sent", "{shown}");
    assert_eq!(sends[0]["message_id"], sends[1]["message_id"], "{shown}");
    // Retrying a completed task changes nothing and says so.
    let (ok, _, err) = cli(&env, &["tasks", "retry", &id.to_string()]).await;
    assert!(!ok && err.contains("completed"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let emails = std::fs::read_dir(blocker.join("mail")).unwrap().count();
    assert_eq!(emails, 1, "the retried task ran once");
    let stats = cli_json(&env, &["outbox", "stats", "--json"]).await;
    assert_eq!(stats["undispatched"], 0, "{stats}");
    sqlx::query("ANALYZE outbox")
        .execute(&env.pool)
        .await
        .unwrap();
    let stats = cli_json(&env, &["outbox", "stats", "--json"]).await;
    assert!(stats["kept_estimate"].as_u64().unwrap() >= 1, "{stats}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&blocker);
}

/// `tasks ls` lists the archived task `id` of `queue`, with its error,
/// filtered by error text and by age.
async fn assert_tasks_ls_finds_the_archived_one(env: &TestEnv, queue: &str, id: TaskId) {
    let listed = cli_json(
        env,
        &[
            "tasks", "ls", "--queue", queue, "--state", "archived", "--json",
        ],
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.get());
    assert!(
        listed[0]["last_error"].as_str().unwrap().len() > 3,
        "{listed}"
    );
    let filtered = cli_json(
        env,
        &[
            "tasks",
            "ls",
            "--queue",
            queue,
            "--state",
            "archived",
            "--error-contains",
            "no such text",
            "--json",
        ],
    )
    .await;
    assert_eq!(filtered.as_array().unwrap().len(), 0, "{filtered}");
    let recent = cli_json(
        env,
        &[
            "tasks", "ls", "--queue", queue, "--state", "archived", "--since", "10m", "--json",
        ],
    )
    .await;
    assert_eq!(recent.as_array().unwrap().len(), 1, "{recent}");
}

/// More than one task changes only when confirmed; without a terminal to
/// ask on, `--yes` is the confirmation. `tasks delete` removes a waiting
/// task, never a missing one quietly.
#[tokio::test]
async fn bulk_retry_asks_first_and_delete_removes_a_waiting_task() {
    let env = TestEnv::new().await;
    let app = env.start(Components::WORKER).await;
    let broker = env.queue();
    // Unknown kinds: archived as soon as they are dequeued.
    broker
        .enqueue(&[
            task_msg(1, "task:nobody", "default"),
            task_msg(2, "task:nobody", "default"),
        ])
        .await
        .unwrap();
    for id in [1, 2] {
        wait_state(&broker, "default", id, TaskState::Archived).await;
    }
    let (ok, _, err) = cli(
        &env,
        &["tasks", "retry", "--queue", "default", "--archived"],
    )
    .await;
    assert!(!ok && err.contains("--yes"), "{err}");
    assert_eq!(
        broker.stats("default").await.unwrap().archived,
        2,
        "nothing changed"
    );
    let done = cli_json(
        &env,
        &[
            "tasks",
            "retry",
            "--queue",
            "default",
            "--archived",
            "--yes",
            "--json",
        ],
    )
    .await;
    assert_eq!(done["retried"].as_array().unwrap().len(), 2, "{done}");
    // One task by its id (its queue found through the queues searched):
    // archived again meanwhile (no handler), it is retried again.
    wait_state(&broker, "default", TaskId::from(1), TaskState::Archived).await;
    let (ok, out, err) = cli(&env, &["tasks", "retry", "1"]).await;
    assert!(
        ok && out.contains("retried (it was archived)"),
        "{out} {err}"
    );

    delete_a_scheduled_task_and_refuse_what_is_gone(&env, &broker).await;
    app.stop().await;
}

/// A task scheduled for later, deleted before it runs; deleting it again,
/// or a task that never was, is refused.
async fn delete_a_scheduled_task_and_refuse_what_is_gone(env: &TestEnv, broker: &Broker) {
    // A task scheduled for later, deleted before it runs.
    let mut later = task_msg(3, "task:nobody", "default");
    later.process_at = chrono::Utc::now() + chrono::Duration::hours(1);
    broker.enqueue(&[later]).await.unwrap();
    let (ok, out, err) = cli(env, &["tasks", "delete", "3", "--queue", "default"]).await;
    assert!(
        ok && out.contains("deleted (it was scheduled)"),
        "{out} {err}"
    );
    assert_eq!(broker.stats("default").await.unwrap().scheduled, 0);
    // A tombstone stays (WORKER_DONE_RETENTION): the relay forwarding the id
    // again (after a crash, or --redeliver-since) does not bring it back.
    assert_eq!(
        broker
            .task("default", TaskId::from(3))
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Deleted
    );
    assert_eq!(
        broker
            .enqueue(&[task_msg(3, "task:nobody", "default")])
            .await
            .unwrap(),
        0
    );
    let (ok, _, err) = cli(env, &["tasks", "delete", "3", "--queue", "default"]).await;
    assert!(!ok && err.contains("is deleted: nothing changed"), "{err}");
    // The delete is in the ledger too: Redis loses the tombstone, the task
    // is enqueued again (a redelivery), and the worker acknowledges it
    // without running it (it has no handler: run, it would be archived).
    let shown = cli_json(env, &["tasks", "show", "3", "--queue", "default", "--json"]).await;
    assert!(
        shown["ledger"]["deleted_by"]
            .as_str()
            .is_some_and(|a| a.starts_with("cli:")),
        "{shown}"
    );
    env.forget_in_redis("default", TaskId::from(3)).await;
    assert_eq!(
        broker
            .enqueue(&[task_msg(3, "task:nobody", "default")])
            .await
            .unwrap(),
        1
    );
    wait_state(broker, "default", TaskId::from(3), TaskState::Completed).await;
    let (ok, _, err) = cli(env, &["tasks", "delete", "4", "--queue", "default"]).await;
    assert!(!ok && err.contains("no task 4"), "{err}");
    let (ok, _, err) = cli(env, &["tasks", "show", "999"]).await;
    assert!(!ok && err.contains("no task 999"), "{err}");
}
