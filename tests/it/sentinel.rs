//! Redis behind Sentinel: the broker follows the primary through a failover.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::*;
use crate::redis_servers::Guarded;

/// Redis behind Sentinel: a primary, its replica and one sentinel on
/// loopback. The broker follows the primary through a failover.
#[tokio::test]
async fn the_broker_follows_sentinel_through_a_failover() {
    let dir =
        std::env::temp_dir().join(format!("sbtest-sentinel-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (child, primary) = redis_server(&dir, Vec::new());
    let mut primary_process = Guarded(Some(child));
    let (child, replica) = redis_server(
        &dir,
        vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ],
    );
    let _replica_process = Guarded(Some(child));
    let (child, sentinel) = start_sentinel(&dir, primary);
    let _sentinel_process = Guarded(Some(child));
    wait_sentinel_knows_replica(sentinel, replica).await;

    let mut env = TestEnv::new().await;
    env.cfg.redis.url = format!("redis-sentinel://127.0.0.1:{sentinel}?sentinelServiceName=main");
    env.cfg.validate(simplebank::app::Components::NONE).unwrap();
    let broker = simplebank::app::Clients::new(&env.cfg).unwrap().broker;
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

/// A redis-server with its files in `dir`, and `extra` arguments; its port.
fn redis_server(dir: &std::path::Path, extra: Vec<String>) -> (Child, u16) {
    spawn_listening(
        "redis-server",
        Duration::from_secs(10),
        move |port| {
            let mut cmd = redis_command(port, &["--save", "", "--repl-diskless-sync-delay", "0"]);
            cmd.arg("--dir")
                .arg(dir)
                .args(["--dbfilename", &format!("dump-{port}.rdb")])
                .args(&extra);
            cmd
        },
        is_redis_child,
    )
}

/// A sentinel monitoring the primary on `primary` as `main`, its config in
/// `dir`; its port.
fn start_sentinel(dir: &std::path::Path, primary: u16) -> (Child, u16) {
    spawn_listening(
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
    )
}

/// A sentinel learns of replicas from the primary's INFO, now and then:
/// a primary killed before it knows the replica would not be replaced.
async fn wait_sentinel_knows_replica(sentinel: u16, replica: u16) {
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
}
