//! The pipeline on a Redis Cluster of three primaries with one replica each,
//! started on loopback from the installed redis-server: sign-ups flow
//! through a crash of the primary holding the `critical` queue, and three
//! `serve` processes share one outbox and the cluster.

use std::{
    collections::HashMap,
    process::{Child, Stdio},
    time::Duration,
};

use simplebank::{
    app::Components,
    queue::{QueueError, TaskState},
};

use crate::common::*;
use crate::redis_servers::{Guarded, RedisCluster};

/// The emails in `dir`: recipient -> when each was written (from the file
/// name, which starts with the time of the send).
fn emails_by_recipient(dir: &std::path::Path) -> HashMap<String, Vec<String>> {
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "eml") {
            continue;
        }
        let Ok(raw) = std::fs::read(&path) else {
            continue;
        };
        let Some(to) = mail_parser::MessageParser::default()
            .parse(&raw)
            .and_then(|m| {
                m.to()
                    .and_then(|t| t.first())
                    .and_then(|a| a.address())
                    .map(str::to_owned)
            })
        else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        by.entry(to).or_default().push(name);
    }
    for sends in by.values_mut() {
        sends.sort();
    }
    by
}

/// When an email file was written, from its name (`%Y%m%dT%H%M%S%.6fZ-...`).
fn sent_at(name: &str) -> chrono::DateTime<chrono::Utc> {
    let stamp = name.split('Z').next().unwrap();
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.f")
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .and_utc()
}

/// Sign-ups flow while the primary holding the `critical` queue crashes
/// and its replica takes over. The replica is stopped (SIGSTOP) for a
/// moment first: the batches enqueued meanwhile are on the primary only,
/// their tasks and the queue's outbox cursor together, and with
/// REDIS_WAIT_REPLICAS=1 the relay does not count them done. The tasks wait
/// 3 s before they may run, so the crash finds them still waiting; were they
/// lost with it, the promoted replica's cursor would be as far behind, and
/// the relay forwards from there to the new primary once it has a replica
/// (the crashed node, restarted). Every user is emailed, and none again after its run was
/// recorded. (Here the stopped replica still gets the stream from its
/// socket buffer when it resumes, so the crash itself loses nothing; the
/// test shows the relay does not count on that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_flow_through_a_crash_of_the_critical_queues_primary() {
    let mut cluster = RedisCluster::start();
    let mut env = TestEnv::new().await;
    env.cfg.redis.url = cluster.url();
    env.cfg.redis.wait_replicas = 1;
    env.cfg.signup.verify_email_process_in = Duration::from_secs(3);
    let queue = env.cfg.signup.verify_email_queue.clone();
    let app = env.start(Components::ALL).await;
    let primary = cluster.primary_of(&queue);
    let replica = cluster.replica_of(primary);

    const USERS: usize = 120;
    for i in 0..USERS {
        if i == USERS / 3 {
            // The replica falls behind: what follows reaches the primary only.
            cluster.signal(replica, "STOP");
        }
        if i == USERS / 2 {
            // The primary crashes; the replica, running again, takes over at
            // once (TAKEOVER: without the dead primary's consent).
            cluster.kill(primary);
            cluster.signal(replica, "CONT");
            let answer = cluster.cli(replica, &["cluster", "failover", "takeover"]);
            assert!(answer.contains("OK"), "{answer}");
        }
        let (status, body) = app
            .post_json("/v1/create_user", user_json(&format!("cl{i:03}")))
            .await;
        // A sign-up never touches Redis: the crash cannot fail it.
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let promoted = cluster.primary_of(&queue);
    assert_ne!(promoted, primary, "the replica took over the queue's slot");
    // The promoted primary has no replica until the crashed node comes back
    // as one: until then its enqueues cannot be WAITed for, and their rows
    // stay in the outbox, and its dequeues neither, so the worker hands
    // their tasks back untried.
    cluster.restart(primary);

    every_user_emailed_none_after_its_run(&env, USERS).await;
    app.stop().await;
}

/// Every one of `users` emailed and its run recorded, the outbox drained,
/// and no user emailed again after its run was recorded.
async fn every_user_emailed_none_after_its_run(env: &TestEnv, users: usize) {
    let mail_dir = env.cfg.mail.dir.clone();
    // Each run's ledger record follows its send: both, for every user.
    let emailed = eventually(
        Duration::from_secs(90),
        "every user emailed and recorded",
        || {
            let mail_dir = mail_dir.clone();
            async move {
                let by = emails_by_recipient(&mail_dir);
                let recorded = env.count("SELECT count(*) FROM task_ledger").await;
                (by.len() == users && recorded == users as i64).then_some(by)
            }
        },
    )
    .await;
    eventually(Duration::from_secs(30), "the outbox drained", || async {
        let left = env.undispatched().await;
        (left == 0).then_some(())
    })
    .await;
    let recorded: HashMap<String, chrono::DateTime<chrono::Utc>> = sqlx::query_as(
        "SELECT u.email, l.completed_at FROM task_ledger l
         JOIN verify_emails v ON v.task_id = l.task_id JOIN users u ON u.username = v.username",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for (to, sends) in &emailed {
        for later in &sends[1..] {
            assert!(
                sent_at(later) < recorded[to],
                "{to} was emailed again at {later}, after its run was recorded at {}",
                recorded[to]
            );
        }
    }
}

/// Three `serve` processes against one Postgres and the cluster: every row
/// forwarded by exactly one relay, every task run by exactly one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_share_the_outbox_and_the_cluster() {
    let cluster = RedisCluster::start();
    let env = TestEnv::new().await;
    let mail_dir = env.cfg.mail.dir.clone();
    let ports: Vec<u16> = (0..3).map(|_| next_port()).collect();
    let processes: Vec<Guarded> = ports
        .iter()
        .map(|port| Guarded(Some(spawn_serve(&env, &cluster, *port))))
        .collect();
    let http = reqwest::Client::new();
    for port in &ports {
        eventually(Duration::from_secs(30), "serve ready", || {
            let req = http.get(format!("http://127.0.0.1:{port}/readyz")).send();
            async move { req.await.ok().filter(|r| r.status() == 200) }
        })
        .await;
    }
    const USERS: usize = 90;
    for status in sign_up_across(&http, &ports, USERS).await {
        assert_eq!(status, 200);
    }
    let emailed = eventually(Duration::from_secs(60), "every user emailed", || {
        let mail_dir = mail_dir.clone();
        async move {
            let by = emails_by_recipient(&mail_dir);
            (by.values().map(Vec::len).sum::<usize>() >= USERS).then_some(by)
        }
    })
    .await;
    assert_eq!(emailed.len(), USERS);
    assert!(
        emailed.values().all(|sends| sends.len() == 1),
        "one email each"
    );
    // What each process did, from its own metrics: the relays split the
    // rows and the workers the tasks, with nothing done twice. A run is
    // counted once recorded and acknowledged, a moment after its email: the
    // sums are read until they reach the sign-ups, then must equal them.
    let (forwarded, processed) =
        eventually(Duration::from_secs(30), "every run counted", || async {
            forwarded_and_processed(&http, &ports)
                .await
                .filter(|(f, p)| *f >= USERS as f64 && *p >= USERS as f64)
        })
        .await;
    assert_eq!(forwarded, USERS as f64, "rows forwarded across the relays");
    assert_eq!(
        processed, USERS as f64,
        "tasks processed across the workers"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM task_ledger").await,
        USERS as i64
    );
    for process in processes {
        assert!(process.terminate().success(), "serve exits 0 on SIGTERM");
    }
}

/// A `serve` process on `port` against `env`'s Postgres and `cluster`.
fn spawn_serve(env: &TestEnv, cluster: &RedisCluster, port: u16) -> Child {
    env.command(&["serve"])
        .env("REDIS_URL", cluster.url())
        .env("REDIS_WAIT_REPLICAS", "1")
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("HTTP_RATE_LIMIT", "0")
        .env("HTTP_SIGNUP_RATE_LIMIT", "0")
        .env("MAIL_DIR", &env.cfg.mail.dir)
        .env("VERIFY_EMAIL_PROCESS_IN", "0s")
        .env("ARGON2_MEMORY_KIB", "64")
        .env("ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// `users` sign-ups spread over the processes on `ports` in turn; their
/// statuses.
async fn sign_up_across(
    http: &reqwest::Client,
    ports: &[u16],
    users: usize,
) -> Vec<reqwest::StatusCode> {
    let sign_ups = (0..users).map(|i| {
        let (http, port) = (http.clone(), ports[i % 3]);
        async move {
            http.post(format!("http://127.0.0.1:{port}/v1/create_user"))
                .json(&user_json(&format!("three{i:03}")))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    // Three at a time per process: a crowd would meet the edge's limits
    // (503), which is not what this test is about.
    futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(sign_ups),
        9,
    ))
    .await
}

/// The rows forwarded and the verify-email tasks processed, summed over the
/// metrics of the processes on `ports`; `None` if one does not answer.
async fn forwarded_and_processed(http: &reqwest::Client, ports: &[u16]) -> Option<(f64, f64)> {
    let (mut forwarded, mut processed) = (0.0, 0.0);
    for port in ports {
        let text = metrics_text(http, &format!("http://127.0.0.1:{port}")).await?;
        forwarded += metric_sum(&text, "simplebank_relay_rows_total", None);
        processed += metric_sum(
            &text,
            "simplebank_tasks_processed_total",
            Some(("kind", "task:send_verify_email")),
        );
    }
    Some((forwarded, processed))
}

/// Wake-ups on a cluster: an enqueue script's PUBLISH, made on the primary
/// of its queue's slot, reaches a subscriber connected wherever the client
/// put it. One queue on each of the three primaries, so at least two of the
/// three wake-ups cross from one node to another (a cluster forwards plain
/// pub/sub to every node).
#[tokio::test]
async fn wake_ups_reach_a_subscriber_on_a_cluster() {
    let cluster = RedisCluster::start();
    let mut queues: Vec<(String, u16)> = Vec::new();
    for n in 0..200 {
        let name = format!("wq{n}");
        let primary = cluster.primary_of(&name);
        if !queues.iter().any(|(_, p)| *p == primary) {
            queues.push((name, primary));
        }
        if queues.len() == 3 {
            break;
        }
    }
    assert_eq!(queues.len(), 3, "one queue per primary");
    let mut env = TestEnv::new().await;
    env.cfg.redis.url = cluster.url();
    let broker = simplebank::app::Clients::new(&env.cfg).unwrap().broker;
    let subscriber = env.cfg.redis.connection().subscriber().unwrap();
    let mut messages = fred::prelude::EventInterface::message_rx(&subscriber);
    let channels = broker.wake_channels(queues.iter().map(|(q, _)| q.as_str()));
    eventually(Duration::from_secs(10), "subscribed", || {
        let (subscriber, channels) = (subscriber.clone(), channels.clone());
        async move {
            fred::prelude::PubsubInterface::subscribe(&subscriber, channels)
                .await
                .ok()
        }
    })
    .await;
    for (id, (queue, _)) in queues.iter().enumerate() {
        // The first call may come before the client learned the slots.
        eventually(Duration::from_secs(10), "an enqueue", || {
            let (broker, queue) = (broker.clone(), queue.clone());
            async move {
                broker
                    .enqueue(&[task_msg(id as i64 + 1, "k", &queue)])
                    .await
                    .ok()
            }
        })
        .await;
        let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("a wake-up within 5 s")
            .unwrap();
        assert_eq!(message.channel.to_string(), broker.keys(queue).wake_channel);
    }
}

/// With REDIS_WAIT_REPLICAS, what the worker changes in Redis counts only
/// once a replica holds it: while the replica of the queue's primary cannot
/// answer (SIGSTOP), a lease extension fails and a dequeue hands its task
/// back untried (pending, no attempt counted), so a failover could not
/// give the same delivery number to a second worker or bring back a
/// shorter lease. Once the replica answers, the task is taken.
#[tokio::test]
async fn dequeues_and_lease_extensions_no_replica_holds_do_not_count() {
    let cluster = RedisCluster::start();
    let mut env = TestEnv::new().await;
    env.cfg.redis.url = cluster.url();
    env.cfg.redis.wait_replicas = 1;
    env.cfg.redis.wait_timeout = Duration::from_millis(300);
    let broker = simplebank::app::Clients::new(&env.cfg)
        .unwrap()
        .worker_broker(&env.cfg)
        .unwrap();
    let queue = "replicated";
    let replica = cluster.replica_of(cluster.primary_of(queue));
    let lease = Duration::from_secs(30);
    // The first calls may come before the client learned the slots.
    eventually(Duration::from_secs(10), "an enqueue", || {
        let broker = broker.clone();
        async move {
            let tasks = [task_msg(1, "k", queue), task_msg(2, "k", queue)];
            broker.enqueue(&tasks).await.ok()
        }
    })
    .await;
    let first = broker.dequeue(queue, 1, lease).await.unwrap().remove(0);
    assert_eq!(first.id.get(), 1);
    let first_run = [(first.id, first.delivery)];
    // Each connection of the pool learns the slots on its own, and a WAIT
    // is sent once, failing fast: before the replica stops, every one of
    // them must have answered. The pool takes turns, so as many successes
    // in a row as it has connections are one from each.
    let connections = env.cfg.redis.pool_size;
    eventually(
        Duration::from_secs(10),
        "an extension on each connection",
        || {
            let broker = broker.clone();
            async move {
                for _ in 0..connections {
                    broker.extend(queue, lease, &first_run).await.ok()?;
                }
                Some(())
            }
        },
    )
    .await;

    cluster.signal(replica, "STOP");
    let extended = broker.extend(queue, lease, &first_run).await;
    assert!(
        matches!(extended, Err(QueueError::NotReplicated { got: 0, .. })),
        "an extension no replica holds counts as none: {extended:?}"
    );
    let dequeued = broker.dequeue(queue, 1, lease).await;
    assert!(
        matches!(dequeued, Err(QueueError::NotReplicated { got: 0, .. })),
        "a dequeue no replica holds fails: {dequeued:?}"
    );
    let second = broker.task(queue, 2).await.unwrap().unwrap();
    assert_eq!(second.state, TaskState::Pending, "handed back untried");
    assert_eq!(second.retried, 0, "no attempt counted");
    assert_eq!(broker.stats(queue).await.unwrap().active, 1);

    cluster.signal(replica, "CONT");
    let taken = eventually(Duration::from_secs(10), "a replicated dequeue", || {
        let broker = broker.clone();
        async move {
            broker
                .dequeue(queue, 1, lease)
                .await
                .ok()
                .filter(|t| !t.is_empty())
        }
    })
    .await;
    assert_eq!(taken[0].id.get(), 2);
    assert_eq!(taken[0].attempt, 1);
    let extended = broker.extend(queue, lease, &first_run);
    assert_eq!(
        extended.await.unwrap(),
        Vec::new(),
        "the first lease is still ours"
    );
}
