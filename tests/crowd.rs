//! A thousand concurrent sign-ups against `serve` as shipped: bounded memory,
//! only clear answers. A test binary of its own, so that its load does not
//! disturb the timing of the other tests (test binaries run one at a time).

#[path = "common/mod.rs"]
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{TestEnv, next_port, user_json};

const BIN: &str = env!("CARGO_BIN_EXE_simplebank");

/// The peak resident memory of process `pid`, from /proc (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test]
async fn a_thousand_concurrent_sign_ups_keep_memory_bounded() {
    let env = TestEnv::new().await;
    let port = next_port();
    let mut child = spawn_serve(&env, port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    common::eventually(Duration::from_secs(30), "serve up", || {
        let req = http.get(format!("{base}/healthz")).send();
        async move { req.await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    // Half of them taken already: the taken ones must cost no hash.
    for i in 0..10 {
        let res = http
            .post(format!("{base}/v1/create_user"))
            .json(&user_json(&format!("taken{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let statuses = the_crowd(&http, &base).await;
    let mut counts = std::collections::BTreeMap::new();
    for s in &statuses {
        *counts.entry(*s).or_insert(0) += 1;
    }
    println!("answers: {counts:?}");
    assert!(
        counts.keys().all(|s| [200, 409, 429, 503].contains(s)),
        "only 200, 409, 429 or 503, no dropped connection: {counts:?}"
    );
    let started = Instant::now();
    let res = http
        .post(format!("{base}/v1/create_user"))
        .json(&user_json("after_the_crowd"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The bound is the one set for a release build; this is the test's debug
    // build, whose futures are larger (measured here: 206-229 MiB, most of it
    // the 1,000 open connections; 44 MiB before the crowd).
    let peak = peak_rss_kib(child.id());
    println!("serve peak RSS: {} MiB", peak / 1024);
    assert!(peak < 256 * 1024, "peak RSS {} MiB", peak / 1024);
    let _ = child.kill();
    let _ = child.wait();
}

/// serve as shipped: default argon2id (19 MiB a hash), default limits.
fn spawn_serve(env: &TestEnv, port: u16) -> std::process::Child {
    Command::new(BIN)
        .arg("serve")
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", &env.cfg.redis.url)
        .env("REDIS_KEY_PREFIX", &env.cfg.redis.key_prefix)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_MAX_CONNECTIONS", "8")
        // The crowd comes from one address; the rate per address is tested
        // in tests/it/edge.rs.
        .env("HTTP_RATE_LIMIT", "0")
        .env("HTTP_SIGNUP_RATE_LIMIT", "0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(std::env::temp_dir())
        .spawn()
        .unwrap()
}

/// 1,000 sign-ups at once, half of them with taken names; their statuses
/// (0: no answer).
async fn the_crowd(http: &reqwest::Client, base: &str) -> Vec<u16> {
    let requests = (0..1000).map(|i| {
        let (http, base) = (http, base);
        async move {
            let name = if i % 2 == 0 {
                format!("taken{}", i % 10)
            } else {
                format!("new{i}")
            };
            match http
                .post(format!("{base}/v1/create_user"))
                .json(&user_json(&name))
                .send()
                .await
            {
                Ok(res) => res.status().as_u16(),
                Err(_) => 0,
            }
        }
    });
    futures::future::join_all(requests).await
}
