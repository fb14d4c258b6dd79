//! Start-up, health, configuration errors and graceful shutdown of the real binary.

use std::{
    io::{BufRead, BufReader, Read},
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
    // The relay takes REDIS_URL (migrate does not).
    let out = Command::new(BIN)
        .arg("relay")
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

/// `serve` with one bad setting: exit code 2 and one line naming it, before
/// anything starts (so no database or Redis is needed here).
#[test]
fn a_bad_setting_is_refused_at_start_with_one_line_naming_it() {
    let cases: &[(&str, &str, &str)] = &[
        ("RELAY_BATCH_SIZE", "0", "from 1 to"),
        ("OUTBOX_CLEANUP_BATCH", "0", "from 1 to"),
        ("WORKER_CONCURRENCY", "0", "from 1 to"),
        ("WORKER_LEASE", "0s", "at least"),
        ("WORKER_LEASE", "5s", "twice SMTP_TIMEOUT"),
        ("WORKER_SHUTDOWN_GRACE", "1s", "SMTP_TIMEOUT"),
        (
            "WORKER_QUEUES",
            "critical=4000000000,default=4000000000",
            "1 to 1000",
        ),
        ("VERIFY_EMAIL_MAX_RETRY", "1000", "from 0 to 100"),
        ("VERIFY_EMAIL_QUEUE", "nowhere", "WORKER_QUEUES"),
        ("DATABASE_MAX_CONNECTIONS", "0", "from 1 to"),
        ("REDIS_COMMAND_TIMEOUT", "0s", "at least"),
        ("RELAY_POLL_INTERVAL", "0s", "at least"),
        ("RELAY_SESSION_TIMEOUT", "3s", "REDIS_COMMAND_TIMEOUT"),
        ("RELAY_SESSION_TIMEOUT", "30d", "at most 24h"),
        (
            "WORKER_ARCHIVE_PROTECT",
            "100d",
            "at most WORKER_ARCHIVE_MAX_AGE",
        ),
        ("ARGON2_MEMORY_KIB", "1", "argon2"),
        ("REDIS_URL", "redis://:hunter2@[::1", "Redis URL"),
        ("DATABASE_URL", "mysql://u:hunter2@db/x", "postgres://"),
        ("SMTP_URL", "ftp://u:hunter2@mail", "smtp://"),
        ("SMTP_FINAL_REPLY_TIMEOUT", "2h", "at most 1h"),
        (
            "SMTP_OUTCOME_UNKNOWN_DELAY",
            "5m",
            "SMTP_FINAL_REPLY_TIMEOUT",
        ),
        ("WORKER_BREAKER_FAILURES", "0", "from 1 to"),
        ("WORKER_DONE_RETENTION", "0s", "at least 1m"),
        ("SMTP_COMMAND_TIMEOUT", "1ms", "at least"),
        ("WORKER_BREAKER_MAX_PAUSE", "1s", "at least 5s"),
        ("MAIL_FROM_ADDRESS", "bank@exämple.com", "ASCII"),
        ("MAIL_FROM_ADDRESS", "not an address", "address"),
        ("LEDGER_RETENTION", "1h", "OUTBOX_RETENTION"),
        ("SEND_LOG_RETENTION", "2h", "OUTBOX_RETENTION"),
        ("UNVERIFIED_ACCOUNT_TTL", "2h", "OUTBOX_RETENTION"),
        ("RETENTION_BATCH", "0", "from 1 to"),
        ("VERIFY_EMAIL_RESEND_MAX", "0", "from 1 to"),
        ("VERIFY_EMAIL_RESEND_WINDOW", "90d", "at most 30days"),
        (
            "VERIFY_EMAIL_RESEND_INTERVAL",
            "2d",
            "VERIFY_EMAIL_RESEND_WINDOW",
        ),
        ("HTTP_SIGNUP_RATE_BURST", "0", "from 1 to"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "parentbased_always_on"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector", "http://"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "from 1 to"),
    ];
    for (var, value, says) in cases {
        let out = Command::new(BIN)
            .arg("serve")
            .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")
            .env(var, value)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{var}={value}: {stderr}"
        );
        assert!(
            stderr.starts_with(&format!("error: {var} ")) && stderr.contains(says),
            "{var}={value}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "a password in: {stderr}");
    }
}

#[test]
fn help_shows_no_secret() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .env("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/db")
        .env("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
        .env("SMTP_URL", "smtp://u:hunter2@127.0.0.1:1")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

/// A whole sign-up to verification through `serve` logging at every level:
/// the password, its hash and the verification code appear in no line, and
/// the worker's line carries the sign-up's request id.
#[tokio::test]
async fn no_secret_in_any_log_line_of_a_sign_up_and_its_verification() {
    let env = TestEnv::new().await;
    let mail_dir = std::env::temp_dir().join(format!("sblogs-{}", uuid::Uuid::new_v4().simple()));
    let port = crate::common::next_port();
    let mut child = spawn_tracing_serve(&env, &mail_dir, port);
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (out, err) = (drain(Box::new(out)), drain(Box::new(err)));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "serve up", || {
        let req = http.get(format!("{base}/healthz")).send();
        async move { req.await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let password = "Sup3r-secret-pw";
    let res = http
        .post(format!("{base}/v1/create_user"))
        .header("x-request-id", "signup-req-4711")
        .json(&serde_json::json!({
            "username": "logan", "full_name": "Logan", "email": "logan@example.com", "password": password,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let link = verification_link(&mail_dir).await;
    let code = link.rsplit_once("secret_code=").unwrap().1.to_owned();
    let res = http
        .get(link.replace("http://localhost:8080", &base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let hash: String = sqlx::query_scalar("SELECT hashed_password FROM users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let logs = out.join().unwrap() + &err.join().unwrap();
    assert!(
        logs.lines().count() > 50,
        "logs at every level: {} lines",
        logs.lines().count()
    );
    // The sign-up's request id travelled with its outbox row into the task:
    // the worker's line for it carries the id.
    let processed = logs
        .lines()
        .find(|l| l.contains("processed task"))
        .expect("a processed-task line");
    assert!(
        processed.contains(r#""request_id":"signup-req-4711""#),
        "the worker's line lacks the sign-up's request id: {processed}"
    );
    for (what, secret) in [
        ("password", password),
        ("hash", hash.as_str()),
        ("code", code.as_str()),
    ] {
        let line = logs.lines().find(|l| l.contains(secret));
        assert!(
            line.is_none(),
            "the {what} in a log line: {}",
            line.unwrap_or_default()
        );
    }
    let _ = std::fs::remove_dir_all(&mail_dir);
}

/// `serve` for `env`, logging everything as JSON, its emails written to
/// `mail_dir`, on `port`; its stdout and stderr piped.
fn spawn_tracing_serve(
    env: &TestEnv,
    mail_dir: &std::path::Path,
    port: u16,
) -> std::process::Child {
    Command::new(BIN)
        .arg("serve")
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", &env.cfg.redis.url)
        .env("REDIS_KEY_PREFIX", &env.cfg.redis.key_prefix)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("MAIL_DIR", mail_dir)
        .env("VERIFY_EMAIL_PROCESS_IN", "0s")
        .env("ARGON2_MEMORY_KIB", "64")
        .env("ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "trace")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir(std::env::temp_dir())
        .spawn()
        .unwrap()
}

/// Reads all of `r` on a thread of its own.
fn drain(r: Box<dyn std::io::Read + Send>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(r).read_to_string(&mut s);
        s
    })
}

/// The verification link of the email written to `mail_dir`, once it is.
async fn verification_link(mail_dir: &std::path::Path) -> String {
    let eml = eventually(Duration::from_secs(20), "the email file", || async {
        let path = std::fs::read_dir(mail_dir)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .find(|p| p.extension().is_some_and(|x| x == "eml"))?;
        std::fs::read(path).ok()
    })
    .await;
    // The link, from the message (the database keeps only the code's hash).
    let text = mail_parser::MessageParser::default()
        .parse(&eml)
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .expect("a plain-text part");
    text.split_whitespace()
        .find(|w| w.contains("secret_code="))
        .expect("a link")
        .to_owned()
}

#[test]
fn each_command_takes_only_the_settings_it_uses() {
    let help = |command: &str| {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "migrate",
            &["DATABASE_URL"],
            &["SMTP_URL", "REDIS_URL", "WORKER_LEASE", "HTTP_ADDR"],
        ),
        (
            "relay",
            &["RELAY_BATCH_SIZE", "REDIS_URL"],
            &["SMTP_URL", "HTTP_ADDR", "WORKER_LEASE"],
        ),
        (
            "worker",
            &["SMTP_URL", "WORKER_LEASE"],
            &["HTTP_ADDR", "RELAY_BATCH_SIZE"],
        ),
        (
            "serve",
            &["HTTP_ADDR", "SMTP_URL", "RELAY_BATCH_SIZE", "WORKER_LEASE"],
            &[],
        ),
    ];
    for (command, has, lacks) in cases {
        let text = help(command);
        for var in *has {
            assert!(text.contains(var), "{command} --help lacks {var}");
        }
        for var in *lacks {
            assert!(!text.contains(var), "{command} --help lists {var}");
        }
    }
    // And a setting a command does not take cannot stop it.
    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", "postgres://u:p@127.0.0.1:1/db")
        .env("DATABASE_ACQUIRE_TIMEOUT", "200ms")
        .env("WORKER_LEASE", "0s")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WORKER_LEASE"), "{stderr}");
}
