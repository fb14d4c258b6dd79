//! Start-up, health, configuration errors and graceful shutdown of the real binary.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use simplebank::app::Components;

use crate::common::{TestEnv, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_simplebank");

#[tokio::test]
async fn health_and_readiness() {
    let env = TestEnv::new().await;
    let app = env.start(Components::ALL).await;
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["postgres"].as_str(), body["redis"].as_str()),
        (Some("up"), Some("up"))
    );
    app.stop().await;
}

#[test]
fn a_missing_database_url_is_one_clear_line() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env_remove("LOG_FORMAT")
        .current_dir(std::env::temp_dir()) // no .env here
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL is not set"), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !l.trim().is_empty());
    assert_eq!(
        lines.count(),
        1,
        "one line, not a log line and its echo:\n{stdout}{stderr}"
    );
}

#[test]
fn a_malformed_url_is_named() {
    let out = Command::new(BIN)
        .arg("migrate")
        .env("REDIS_URL", "http://nope")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REDIS_URL") && stderr.contains("redis://"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_exits_0_on_sigterm_and_sigint() {
    let env = TestEnv::new().await;
    for signal in ["-TERM", "-INT"] {
        // Port 0, and the address read back from serve's log: a port picked
        // beforehand could be taken by a parallel test's server meanwhile.
        let mut child = Command::new(BIN)
            .arg("serve")
            .env("DATABASE_URL", &env.db_url)
            .env("REDIS_URL", &env.cfg.redis.url)
            .env("REDIS_KEY_PREFIX", &env.cfg.redis.key_prefix)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        // Reads the log to its end, so serve never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if event["message"] == "start HTTP server" {
                    let _ = addr_tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("serve logs the address it listens on");
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(20), "serve to answer /healthz", || {
            let req = client.get(format!("http://{addr}/healthz")).send();
            async move { req.await.ok().filter(|r| r.status() == 200) }
        })
        .await;
        let started = Instant::now();
        assert!(
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve did not exit after {signal}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        reader.join().unwrap();
        assert!(
            status.success(),
            "serve exited with {status} after {signal}"
        );
    }
}
