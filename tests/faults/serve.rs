//! The `serve` processes of the fault suite: their settings, started,
//! killed and stopped by their PID, and the dev Postgres restarted under them.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{TestEnv, next_port};
use crate::{BIN, LEASE, RETRY_UNIT, SMTP_TIMEOUT};

/// One `serve` process, restartable on the same port, its log in a file.
pub struct Serve {
    name: &'static str,
    env: Vec<(String, String)>,
    port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Serve {
    pub fn new(name: &'static str, env: Vec<(String, String)>, dir: &std::path::Path) -> Self {
        Self {
            name,
            env,
            port: next_port(),
            log: dir.join(format!("serve-{name}.log")),
            child: None,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .current_dir(std::env::temp_dir())
            .spawn()
            .expect("start serve");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for the exit (bounded).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn wait_ready(&self, http: &reqwest::Client) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http
                .get(format!("{}/readyz", self.base()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "serve {} not ready in 60 s",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn restart_postgres(seconds_down: u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-services.sh");
    let status = Command::new(script)
        .args(["restart-postgres", &seconds_down.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run dev-services.sh");
    assert!(status.success(), "restart-postgres failed");
}

/// The settings of a `serve` against `env`'s database and key prefix, Redis
/// at `redis_url` and the SMTP server at `smtp_url`.
pub fn serve_settings(env: &TestEnv, redis_url: String, smtp_url: String) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", env.db_url.clone()),
        ("REDIS_URL", redis_url),
        ("REDIS_KEY_PREFIX", env.cfg.redis.key_prefix.clone()),
        ("REDIS_COMMAND_TIMEOUT", "1s".into()),
        ("SMTP_URL", smtp_url),
        ("SMTP_TIMEOUT", format!("{}s", SMTP_TIMEOUT.as_secs())),
        ("WORKER_LEASE", format!("{}s", LEASE.as_secs())),
        ("WORKER_SHUTDOWN_GRACE", "4s".into()),
        ("WORKER_RETRY_UNIT", RETRY_UNIT.into()),
        // The breaker's pauses and the wait after an unknown outcome,
        // compressed like the retry schedule.
        ("WORKER_BREAKER_MAX_PAUSE", "10s".into()),
        ("SMTP_FINAL_REPLY_TIMEOUT", "10s".into()),
        ("SMTP_OUTCOME_UNKNOWN_DELAY", "20s".into()),
        ("VERIFY_EMAIL_PROCESS_IN", "0s".into()),
        ("ARGON2_MEMORY_KIB", "64".into()),
        ("ARGON2_ITERATIONS", "1".into()),
        ("RELAY_MAX_BACKOFF", "1s".into()),
        // All the load comes from one address.
        ("HTTP_RATE_LIMIT", "0".into()),
        ("HTTP_SIGNUP_RATE_LIMIT", "0".into()),
        ("RUST_LOG", "info".into()),
        ("LOG_FORMAT", "json".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}
