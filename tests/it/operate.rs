//! The operator's eyes: metrics that parse and move, the admin listener's
//! probes (a stalled relay is not ready).

use std::time::Duration;

use fred::prelude::*;
use simplebank::{
    app::Components,
    queue::{TaskId, TaskState},
};

use crate::common::*;

/// The samples of a scrape: (name, labels sorted) -> value. Histograms and
/// summaries come as their `_count` and `_sum` samples.
type Samples = std::collections::HashMap<(String, Vec<(String, String)>), f64>;

async fn scrape(app: &TestApp, base: &str) -> Samples {
    let res = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = res.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the metrics text parses");
    assert!(!parsed.samples.is_empty(), "no samples:\n{text}");
    let mut samples = Samples::new();
    for s in parsed.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let mut put = |name: String, v: f64| {
            samples.insert((name, labels.clone()), v);
        };
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => put(s.metric, v),
            prometheus_parse::Value::Histogram(buckets) => {
                let count = buckets.last().map_or(0.0, |b| b.count);
                put(format!("{}_count", s.metric), count);
            }
            prometheus_parse::Value::Summary(_) => {}
        }
    }
    samples
}

/// The sum of `name`'s samples whose labels include every pair of `with`.
fn total(samples: &Samples, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn the_metrics_text_parses_and_its_values_move_when_sign_ups_flow() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    let before = scrape(&app, &app.base).await;
    let kind = [("kind", "task:send_verify_email")];
    let route = [("route", "/v1/create_user"), ("status", "200")];

    for name in ["metrics_ann", "metrics_bob"] {
        let (status, _) = app.post_json("/v1/create_user", user_json(name)).await;
        assert_eq!(status, 200);
    }
    // A route nobody declared is counted under one label, not its path.
    let res = app
        .http
        .get(app.url("/no/such/path/42"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // Until this test's own two runs are recorded and acknowledged (the
    // counters are the process's: other tests' runs move them too, so they
    // cannot tell when this test's are done).
    eventually(Duration::from_secs(20), "both tasks completed", || async {
        let done = env.count("SELECT count(*) FROM task_ledger").await;
        let queue = env.cfg.signup.verify_email_queue.as_str();
        let broker = env.queue();
        let mut completed = 0;
        for id in [1, 2] {
            if let Ok(Some(t)) = broker.task(queue, id).await
                && t.state == TaskState::Completed
            {
                completed += 1;
            }
        }
        (done == 2 && completed == 2).then_some(())
    })
    .await;
    let after = scrape(&app, &app.base).await;

    let moved =
        |name: &str, with: &[(&str, &str)]| total(&after, name, with) - total(&before, name, with);
    // Other tests in this binary count too (the recorder is the process's):
    // at least what this one did.
    assert!(moved("simplebank_http_requests_total", &route) >= 2.0);
    assert!(moved("simplebank_http_request_duration_seconds_count", &route) >= 2.0);
    assert!(moved("simplebank_relay_rows_total", &[]) >= 2.0);
    assert!(moved("simplebank_relay_batches_total", &[]) >= 1.0);
    assert!(moved("simplebank_relay_commit_to_enqueue_seconds_count", &[]) >= 2.0);
    assert!(moved("simplebank_task_handler_duration_seconds_count", &kind) >= 2.0);
    assert!(moved("simplebank_task_commit_to_handled_seconds_count", &kind) >= 2.0);
    assert!(
        total(
            &after,
            "simplebank_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        !after
            .keys()
            .any(|(_, labels)| labels.iter().any(|(_, v)| v.contains("/no/such"))),
        "a raw path became a label"
    );
    // The gauges of shared state, read at the scrape.
    let queue = env.cfg.signup.verify_email_queue.as_str();
    for state in [TaskState::Pending, TaskState::Active, TaskState::Archived] {
        assert!(
            after.contains_key(&(
                "simplebank_queue_tasks".to_owned(),
                vec![
                    ("queue".to_owned(), queue.to_owned()),
                    ("state".to_owned(), state.as_str().to_owned())
                ]
            )),
            "no simplebank_queue_tasks for {queue}/{state}"
        );
    }
    assert!(after.keys().any(|(n, _)| n == "simplebank_queue_paused"));
    assert_eq!(
        total(
            &after,
            "simplebank_scrape_source_up",
            &[("source", "outbox")]
        ),
        1.0
    );
    assert_eq!(
        total(
            &after,
            "simplebank_scrape_source_up",
            &[("source", "queues")]
        ),
        1.0
    );
    assert!(
        after
            .keys()
            .any(|(n, _)| n == "simplebank_outbox_undispatched_rows")
    );
    assert!(
        after
            .keys()
            .any(|(n, _)| n == "simplebank_outbox_oldest_undispatched_age_seconds")
    );
    app.stop().await;
}

/// A relay whose rows do not leave the outbox is not ready once the row is older
/// than RELAY_READY_MAX_AGE; ready again once it is forwarded.
#[tokio::test]
async fn a_relay_is_not_ready_while_its_oldest_row_waits_too_long() {
    let mut env = TestEnv::new().await;
    env.cfg.admin.addr = Some("127.0.0.1:0".parse().unwrap());
    env.cfg.relay.ready_max_age = Duration::from_secs(30);
    env.cfg.relay.poll_interval = Duration::from_secs(3600);
    let app = env.start(RELAY_ONLY).await;
    assert!(app.base.is_empty(), "a relay serves no API");
    let ready = |app: &TestApp| {
        let req = app.http.get(format!("{}/readyz", app.admin)).send();
        async move {
            let res = req.await.unwrap();
            (
                res.status().as_u16(),
                res.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outbox"], "flowing");
    let health = app
        .http
        .get(format!("{}/healthz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Redis refuses the row's queue (its pending list is a string, as after
    // a bad hand edit): whenever the relay tries it, the row stays
    // undispatched, as behind a stuck relay.
    let pending = env.queue().keys("stalled").pending;
    let raw = redis_client(&env.cfg.redis.url).await;
    let _: () = raw
        .set(&pending, "not a list", None, None, false)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms, created_at)
         VALUES ('task:stalled', 'stalled', '{}', 0, 1000, now() - interval '1 hour')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["outbox"], "stalled");
    assert_eq!(body["postgres"], "up");

    // Mended, the queue is tried again once its hold (a growing backoff)
    // is over, at a wake-up: the row goes through.
    let _: () = raw.del(&pending).await.unwrap();
    eventually(Duration::from_secs(10), "ready again", || async {
        app.wake_relay();
        let (status, _) = ready(&app).await;
        (status == 200).then_some(())
    })
    .await;
    // The admin listener serves the metrics too. (Their values are the
    // process's, shared with the other tests of this binary: only their
    // presence is this test's to check.)
    let metrics = scrape(&app, &app.admin).await;
    assert!(
        metrics
            .keys()
            .any(|(n, _)| n == "simplebank_outbox_undispatched_rows")
    );
    app.stop().await;
}

/// `serve` with ADMIN_ADDR: the metrics move off the public port, and its
/// readiness does not hang on the outbox (a serve taken out of the load
/// balancer would refuse the sign-ups the outbox keeps safe).
#[tokio::test]
async fn serve_with_admin_addr_keeps_metrics_off_the_public_port() {
    let mut env = TestEnv::new().await;
    env.cfg.admin.addr = Some("127.0.0.1:0".parse().unwrap());
    let app = env.start(Components::ALL).await;
    let public = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
    scrape(&app, &app.admin).await;
    let res = app
        .http
        .get(format!("{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body.get("outbox").is_none(), "{body}");
    app.stop().await;
}

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
    let app = env.start(WORKER_ONLY).await;
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
    // --watch prints again and again until stopped (here: two documents,
    // one per line, then the process is killed by its PID).
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
    // The table, for people.
    let (ok, out, _) = cli(&env, &["queues"]).await;
    assert!(
        ok && out.contains("critical") && out.contains("running"),
        "{out}"
    );
    app.stop().await;
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

    let listed = cli_json(
        &env,
        &[
            "tasks", "ls", "--queue", &queue, "--state", "archived", "--json",
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
        &env,
        &[
            "tasks",
            "ls",
            "--queue",
            &queue,
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
        &env,
        &[
            "tasks", "ls", "--queue", &queue, "--state", "archived", "--since", "10m", "--json",
        ],
    )
    .await;
    assert_eq!(recent.as_array().unwrap().len(), 1, "{recent}");

    let shown = cli_json(&env, &["tasks", "show", &id.to_string(), "--json"]).await;
    assert_eq!(shown["outbox"]["queue"], queue.as_str(), "{shown}");
    assert_eq!(shown["redis"]["state"], "archived", "{shown}");
    assert!(shown["ledger"].is_null(), "{shown}");
    assert!(shown["outbox"]["request_id"].is_string(), "{shown}");

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
    // Retrying a completed task changes nothing and says so.
    let (ok, _, err) = cli(&env, &["tasks", "retry", &id.to_string()]).await;
    assert!(!ok && err.contains("completed"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let emails = std::fs::read_dir(blocker.join("mail")).unwrap().count();
    assert_eq!(emails, 1, "the retried task ran once");
    let stats = cli_json(&env, &["outbox", "stats", "--json"]).await;
    assert_eq!(stats["undispatched"], 0, "{stats}");
    assert!(stats["dispatched_kept"].as_u64().unwrap() >= 1, "{stats}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&blocker);
}

/// More than one task changes only when confirmed; without a terminal to
/// ask on, `--yes` is the confirmation. `tasks delete` removes a waiting
/// task, never a missing one quietly.
#[tokio::test]
async fn bulk_retry_asks_first_and_delete_removes_a_waiting_task() {
    let env = TestEnv::new().await;
    let app = env.start(WORKER_ONLY).await;
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

    // A task scheduled for later, deleted before it runs.
    let mut later = task_msg(3, "task:nobody", "default");
    later.process_at = chrono::Utc::now() + chrono::Duration::hours(1);
    broker.enqueue(&[later]).await.unwrap();
    let (ok, out, err) = cli(&env, &["tasks", "delete", "3", "--queue", "default"]).await;
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
    let (ok, _, err) = cli(&env, &["tasks", "delete", "3", "--queue", "default"]).await;
    assert!(!ok && err.contains("is deleted: nothing changed"), "{err}");
    let (ok, _, err) = cli(&env, &["tasks", "delete", "4", "--queue", "default"]).await;
    assert!(!ok && err.contains("no task 4"), "{err}");
    let (ok, _, err) = cli(&env, &["tasks", "show", "999"]).await;
    assert!(!ok && err.contains("no task 999"), "{err}");
    app.stop().await;
}
