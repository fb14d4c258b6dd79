//! The pipeline on a Redis Cluster of three primaries with one replica each,
//! started on loopback from the installed redis-server: sign-ups flow
//! through a crash of the primary holding the `critical` queue, and three
//! `serve` processes share one outbox and the cluster.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use simplebank::app::Components;

use crate::common::*;

/// Six redis-server processes made one cluster with `redis-cli --cluster
/// create`; each stopped by its PID when dropped.
pub struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("sbtest-cluster-{}", uuid::Uuid::new_v4().simple()));
        // Each node is in `cluster` from its spawn on: a panic part-way
        // stops those already started.
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            // A node also binds its port + 10000 (the cluster bus): a node
            // that cannot bind either exits, and is started on other ports.
            let (child, port) = spawn_listening(
                "redis-server (cluster node)",
                Duration::from_secs(10),
                |port| node_command(&cluster.dir, port),
                is_redis_child,
            );
            cluster.nodes.push(Some(child));
            cluster.ports.push(port);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let started = Instant::now();
        while !cluster.live_ports().iter().all(|p| {
            cluster
                .cli(*p, &["cluster", "info"])
                .contains("cluster_state:ok")
        }) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// fred's cluster URL: one node, the others as `node=` parameters.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, port) in self.ports[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{port}"));
        }
        url
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port of the primary serving the slot of hash tag `tag`, once a
    /// live one does (after a crash, when a replica took over).
    pub fn primary_of(&self, tag: &str) -> u16 {
        let started = Instant::now();
        loop {
            if let Some(port) = self.live_primary_of(tag) {
                return port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no live primary for {tag}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn live_primary_of(&self, tag: &str) -> Option<u16> {
        let ask = self.live_ports()[0];
        let slot: u16 = self
            .cli(ask, &["cluster", "keyslot", tag])
            .trim()
            .parse()
            .unwrap();
        for line in self.cli(ask, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                }
                None => range.parse::<u16>().ok() == Some(slot),
            });
            let address = fields[1].split('@').next().unwrap();
            let port: u16 = address.rsplit_once(':').unwrap().1.parse().unwrap();
            if serves && self.live_ports().contains(&port) {
                return Some(port);
            }
        }
        None
    }

    /// Starts a killed node again: it rejoins the cluster as a replica of
    /// the primary that took over from it.
    pub fn restart(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        assert!(self.nodes[i].is_none(), "node {port} is running");
        let child = node_command(&self.dir, port)
            .spawn()
            .expect("redis-server on PATH (make test installs it)");
        // In `nodes` at once, so that a failed start is stopped on drop.
        self.nodes[i] = Some(child);
        wait_redis(port, self.nodes[i].as_ref().unwrap());
    }

    /// The port of the replica of the primary on `primary`, once the node
    /// asked has heard of it (roles spread through the cluster by gossip).
    pub fn replica_of(&self, primary: u16) -> u16 {
        let port_of = |f: &[&str]| -> Option<u16> {
            f.get(1)?
                .split('@')
                .next()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        };
        let started = Instant::now();
        loop {
            let nodes = self.cli(self.live_ports()[0], &["cluster", "nodes"]);
            let lines: Vec<Vec<&str>> = nodes
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            let id = lines
                .iter()
                .find(|f| f.len() > 3 && port_of(f) == Some(primary))
                .map(|f| f[0]);
            let replica = lines
                .iter()
                .find(|f| f.len() > 3 && f[2].contains("slave") && Some(f[3]) == id)
                .and_then(|f| port_of(f));
            if let Some(port) = replica {
                return port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no replica of {primary} in:\n{nodes}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (STOP, CONT) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        let pid = self.nodes[i].as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // SIGKILL: a node a failed test left stopped (SIGSTOP) would not act
        // on SIGTERM, and waiting for it would hang the test run.
        for mut child in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (by its PID) when dropped, so that a failing test
/// leaves no server running.
struct Guarded(Option<Child>);

impl Guarded {
    /// SIGTERM, then its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        child.wait().unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One cluster node on `port`, its files in `dir/<port>` (a restart finds
/// its nodes.conf there and rejoins).
fn node_command(dir: &std::path::Path, port: u16) -> Command {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut cmd = redis_command(port, &[]);
    cmd.args([
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ])
    // Failover within seconds of a primary's death, but not for a node
    // that a busy test machine left unscheduled for a moment.
    .args(["--cluster-node-timeout", "2000"])
    // Replicas in sync at once, not after the default 5 s.
    .args(["--repl-diskless-sync-delay", "0"])
    .args(["--save", "", "--appendonly", "no", "--dir"])
    .arg(&node_dir);
    cmd
}

/// Waits until the redis-server on `port` answers and is `child` (a server
/// started again on the port it had).
fn wait_redis(port: u16, child: &Child) {
    let started = Instant::now();
    while !is_redis_child(port, child) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
/// moment first: with REDIS_WAIT_REPLICAS=1 the rows enqueued meanwhile are
/// not marked dispatched, since no replica acknowledged their tasks (with 0
/// they are, which the test refuses). The tasks wait 3 s before they may
/// run, so the crash finds them still waiting; the relay forwards their
/// rows again to the new primary once it has a replica (the crashed node,
/// restarted). Every user is emailed, and none again after its run was
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
            // What was enqueued meanwhile is on the primary only: its rows
            // are not marked dispatched (their WAIT cannot be met). With
            // REDIS_WAIT_REPLICAS=0 they would be, and a crash losing the
            // replication stream would lose their tasks.
            let waiting = env
                .count("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
                .await;
            assert!(
                waiting >= 5,
                "rows marked dispatched before a replica held their tasks: {waiting} left"
            );
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
    // stay in the outbox (the tasks run all the same: the enqueue happened).
    cluster.restart(primary);

    let mail_dir = env.cfg.mail.dir.clone();
    let emailed = eventually(Duration::from_secs(90), "every user emailed", || {
        let mail_dir = mail_dir.clone();
        async move {
            let by = emails_by_recipient(&mail_dir);
            (by.len() == USERS).then_some(by)
        }
    })
    .await;
    assert_eq!(
        env.count("SELECT count(*) FROM task_ledger").await,
        USERS as i64
    );
    eventually(Duration::from_secs(30), "the outbox drained", || async {
        let left = env
            .count("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
            .await;
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
    app.stop().await;
}

/// The sum of `name`'s samples whose labels include `with`, in a metrics text.
fn metric_sum(text: &str, name: &str, with: Option<(&str, &str)>) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| with.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            _ => 0.0,
        })
        .sum()
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
        .map(|port| {
            let child = env
                .command(&["serve"])
                .env("REDIS_URL", cluster.url())
                .env("REDIS_WAIT_REPLICAS", "1")
                .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("HTTP_RATE_LIMIT", "0")
                .env("MAIL_DIR", &mail_dir)
                .env("VERIFY_EMAIL_PROCESS_IN", "0s")
                .env("ARGON2_MEMORY_KIB", "64")
                .env("ARGON2_ITERATIONS", "1")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            Guarded(Some(child))
        })
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
    let sign_ups = (0..USERS).map(|i| {
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
    let statuses: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(sign_ups),
        9,
    ))
    .await;
    for status in statuses {
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
    let sums = || async {
        let (mut forwarded, mut processed) = (0.0, 0.0);
        for port in &ports {
            let text = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            forwarded += metric_sum(&text, "simplebank_relay_rows_total", None);
            processed += metric_sum(
                &text,
                "simplebank_tasks_processed_total",
                Some(("kind", "task:send_verify_email")),
            );
        }
        Some((forwarded, processed))
    };
    let (forwarded, processed) =
        eventually(Duration::from_secs(30), "every run counted", || async {
            sums()
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
    let broker = simplebank::app::Clients::new(&env.cfg).unwrap().queue;
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

/// Redis behind Sentinel: a primary, its replica and one sentinel on
/// loopback. The broker follows the primary through a failover.
#[tokio::test]
async fn the_broker_follows_sentinel_through_a_failover() {
    let dir =
        std::env::temp_dir().join(format!("sbtest-sentinel-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let server = |extra: Vec<String>| {
        let dir = dir.clone();
        spawn_listening(
            "redis-server",
            Duration::from_secs(10),
            move |port| {
                let mut cmd =
                    redis_command(port, &["--save", "", "--repl-diskless-sync-delay", "0"]);
                cmd.arg("--dir")
                    .arg(&dir)
                    .args(["--dbfilename", &format!("dump-{port}.rdb")])
                    .args(&extra);
                cmd
            },
            is_redis_child,
        )
    };
    let (child, primary) = server(Vec::new());
    let mut primary_process = Guarded(Some(child));
    let (child, replica) = server(vec![
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.to_string(),
    ]);
    let _replica_process = Guarded(Some(child));
    let (child, sentinel) = spawn_listening(
        "redis-server --sentinel",
        Duration::from_secs(10),
        |sentinel| {
            let conf = dir.join(format!("sentinel-{sentinel}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {sentinel}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds main 1000\nsentinel failover-timeout main 5000\n"
                ),
            )
            .unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf).arg("--sentinel").stdout(Stdio::null());
            cmd
        },
        is_redis_child,
    );
    let _sentinel_process = Guarded(Some(child));
    // A sentinel learns of replicas from the primary's INFO, now and then:
    // a primary killed before it knows the replica would not be replaced.
    eventually(
        Duration::from_secs(30),
        "the sentinel knows the replica",
        || async {
            let out = Command::new("redis-cli")
                .args(["-p", &sentinel.to_string(), "sentinel", "replicas", "main"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains(&replica.to_string()) && !text.contains("disconnected")).then_some(())
        },
    )
    .await;

    let mut env = TestEnv::new().await;
    env.cfg.redis.url = format!("redis-sentinel://127.0.0.1:{sentinel}?sentinelServiceName=main");
    env.cfg
        .validate(simplebank::config::validate::Role::Tool)
        .unwrap();
    let broker = simplebank::app::Clients::new(&env.cfg).unwrap().queue;
    let lease = Duration::from_secs(30);
    let round = |id: i64| {
        let broker = broker.clone();
        async move {
            broker
                .enqueue(&[task_msg(id, "k", "critical")])
                .await
                .ok()?;
            let got = broker.dequeue("critical", 10, lease).await.ok()?;
            got.iter().any(|t| t.id.get() == id).then_some(())
        }
    };
    eventually(
        Duration::from_secs(20),
        "a task through the primary",
        || round(1),
    )
    .await;

    // The primary dies; the sentinel promotes the replica; the client asks
    // the sentinel again and goes on there.
    primary_process.kill();
    let mut id = 2;
    eventually(
        Duration::from_secs(30),
        "a task through the promoted replica",
        || {
            id += 1;
            round(id)
        },
    )
    .await;
    let role = Command::new("redis-cli")
        .args(["-p", &replica.to_string(), "role"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&role.stdout).starts_with("master"),
        "the replica was promoted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
