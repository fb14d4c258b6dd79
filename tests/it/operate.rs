//! The operator's eyes: metrics that parse and move, the admin listener's
//! probes (a stalled relay is not ready).

use std::time::Duration;

use fred::prelude::*;
use simplebank::{app::Components, queue::TaskState};

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
    wait_both_runs_recorded(&env).await;
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
    assert_shared_state_gauges(&after, env.cfg.signup.verify_email_queue.as_str());
    app.stop().await;
}

/// Until this test's own two runs are recorded and acknowledged (the
/// counters are the process's: other tests' runs move them too, so they
/// cannot tell when this test's are done).
async fn wait_both_runs_recorded(env: &TestEnv) {
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
}

/// The gauges of shared state, read at the scrape.
fn assert_shared_state_gauges(after: &Samples, queue: &str) {
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
            after,
            "simplebank_scrape_source_up",
            &[("source", "outbox")]
        ),
        1.0
    );
    assert_eq!(
        total(
            after,
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
}

/// A relay whose rows do not leave the outbox is not ready once the row is older
/// than RELAY_READY_MAX_AGE; ready again once it is forwarded.
#[tokio::test]
async fn a_relay_is_not_ready_while_its_oldest_row_waits_too_long() {
    let mut env = TestEnv::new().await;
    env.cfg.admin.addr = Some("127.0.0.1:0".parse().unwrap());
    env.cfg.relay.ready_max_age = Duration::from_secs(30);
    env.cfg.relay.poll_interval = Duration::from_secs(3600);
    let app = env.start(Components::RELAY).await;
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
    // Ready once its connections are up (on a loaded machine the first
    // probe may find Postgres still connecting).
    let body = eventually(Duration::from_secs(20), "the relay ready", || async {
        let (status, body) = ready(&app).await;
        (status == 200).then_some(body)
    })
    .await;
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
