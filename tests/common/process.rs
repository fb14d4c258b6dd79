//! Servers a test starts as child processes of its own: a redis-server (for
//! restarts and data loss) and an SMTP server (for mail faults). Each is
//! stopped by its PID when dropped. A child that cannot bind its port
//! (something took it after all) exits; it is then started again on another
//! port ([`spawn_listening`]).

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::ports::{answers, next_port};

/// How many ports a server is tried on before the test gives up.
const START_ATTEMPTS: usize = 5;

/// Starts `command(port)` on a fresh port until a child of ours listens on
/// it: `is_ours` tells a listener that is this child from one that is not.
/// Returns the child and its port.
pub fn spawn_listening(
    what: &str,
    limit: Duration,
    mut command: impl FnMut(u16) -> Command,
    is_ours: impl Fn(u16, &Child) -> bool,
) -> (Child, u16) {
    for _ in 0..START_ATTEMPTS {
        let port = next_port();
        let mut child = command(port)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e} (make test installs it)"));
        if wait_listening(&mut child, port, limit) && is_ours(port, &child) {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{what} did not start on any of {START_ATTEMPTS} ports")
}

/// Waits until `port` answers while `child` runs; false when the child
/// exited first (it could not bind) or `limit` passed.
fn wait_listening(child: &mut Child, port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if answers(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The pid a redis-server on `port` reports (INFO server), if one answers.
pub fn redis_pid(port: u16) -> Option<u32> {
    reported_pid(port, None, b"INFO server\r\n", "process_id:")
}

/// The pid the server on `port` puts after `marker` in its answer to
/// `request`, sent once its greeting (a line starting with `greeting`, when
/// the protocol has one) came.
fn reported_pid(port: u16, greeting: Option<&str>, request: &[u8], marker: &str) -> Option<u32> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut reply = String::new();
    let mut buf = [0u8; 8192];
    let mut asked = false;
    loop {
        let greeted = greeting.is_none_or(|g| reply.starts_with(g) && reply.contains("\r\n"));
        if !asked && greeted {
            conn.write_all(request).ok()?;
            asked = true;
        }
        if let Some(rest) = reply.split(marker).nth(1)
            && let Some((pid, _)) = rest.split_once('\r')
        {
            return pid.trim().parse().ok();
        }
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// A redis-server on `port` with `args`, to be waited for by [`spawn_listening`].
pub fn redis_command(port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .stdout(Stdio::null());
    cmd
}

/// The pid the test SMTP server on `port` reports (its NOOP reply names it,
/// tests/support/smtp_sink.py), if one answers.
pub fn smtp_pid(port: u16) -> Option<u32> {
    reported_pid(port, Some("220"), b"NOOP\r\n", "pid=")
}

/// Whether the redis-server on `port` is `child`.
pub fn is_redis_child(port: u16, child: &Child) -> bool {
    redis_pid(port) == Some(child.id())
}

/// A private redis-server on a loopback port, with an append-only file so a
/// restart keeps its data. Stopped by PID when dropped.
pub struct RedisProcess {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisProcess {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("sbtest-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (child, port) = spawn_listening(
            "redis-server",
            Duration::from_secs(10),
            |port| Self::command(port, &dir),
            is_redis_child,
        );
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    fn command(port: u16, dir: &Path) -> Command {
        let mut cmd = redis_command(
            port,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        );
        cmd.arg("--dir").arg(dir);
        cmd
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server again after [`RedisProcess::stop`], on the same port
    /// (its clients know no other) and with the same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Self::command(self.port, &self.dir)
            .spawn()
            .expect("redis-server on PATH (make test installs it)");
        assert!(
            wait_listening(&mut child, self.port, Duration::from_secs(10))
                && is_redis_child(self.port, &child),
            "redis-server did not start again on port {}",
            self.port
        );
        self.child = Some(child);
    }

    /// SIGTERM and wait: Redis flushes its append-only file and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real SMTP server (aiosmtpd) writing what it receives into a Maildir,
/// with faults a test turns on: recipients whose local part starts with
/// "refused" refused, the sender or AUTH refused, the final reply late
/// (tests/support/smtp_sink.py).
pub struct SmtpProcess {
    pub port: u16,
    pub maildir: PathBuf,
    child: Option<Child>,
}

impl SmtpProcess {
    /// A server on a port of its own.
    pub fn start() -> Self {
        let maildir =
            std::env::temp_dir().join(format!("sbtest-smtp-{}", uuid::Uuid::new_v4().simple()));
        let (child, port) = spawn_listening(
            "aiosmtpd in .dev/venv",
            Duration::from_secs(15),
            |port| Self::command(port, &maildir),
            |port, child| smtp_pid(port) == Some(child.id()),
        );
        Self {
            port,
            maildir,
            child: Some(child),
        }
    }

    fn command(port: u16, maildir: &Path) -> Command {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(root.join(".dev/venv/bin/python"));
        cmd.arg(root.join("tests/support/smtp_sink.py"))
            .arg(port.to_string())
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// A server that is not up yet (its clients see a refused connection),
    /// on a port of its own; [`SmtpProcess::up`] starts it there.
    pub fn down() -> Self {
        Self {
            port: next_port(),
            maildir: std::env::temp_dir()
                .join(format!("sbtest-smtp-{}", uuid::Uuid::new_v4().simple())),
            child: None,
        }
    }

    /// Starts the server (after [`SmtpProcess::down`] or [`SmtpProcess::stop`]),
    /// on its port and Maildir.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Self::command(self.port, &self.maildir)
            .spawn()
            .expect("aiosmtpd in .dev/venv (make test installs it)");
        assert!(
            wait_listening(&mut child, self.port, Duration::from_secs(15))
                && smtp_pid(self.port) == Some(child.id()),
            "aiosmtpd did not start again on port {}",
            self.port
        );
        self.child = Some(child);
    }

    /// Stops the server (SIGKILL: it is gone at once); what it received stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<String> {
        self.received().into_iter().map(|(_, m)| m).collect()
    }

    /// While `on`, the server refuses the sender at MAIL FROM (554 5.7.1), as
    /// a provider does that paused the sending account.
    pub fn refuse_sender(&self, on: bool) {
        self.flag("refuse-sender", on.then_some(""));
    }

    /// While `on`, the server refuses AUTH (535 5.7.8), as after the
    /// sender's password expired.
    pub fn refuse_auth(&self, on: bool) {
        self.flag("refuse-auth", on.then_some(""));
    }

    /// The server stores each message at once and answers its final dot
    /// `delay` later (`None`: at once).
    pub fn delay_final_reply(&self, delay: Option<Duration>) {
        let secs = delay.map(|d| d.as_secs_f64().to_string());
        self.flag("reply-delay", secs.as_deref());
    }

    /// Sets (with its content) or removes a fault flag in the Maildir.
    fn flag(&self, name: &str, content: Option<&str>) {
        let path = self.maildir.join(name);
        match content {
            Some(c) => {
                std::fs::create_dir_all(&self.maildir).unwrap();
                std::fs::write(path, c).unwrap()
            }
            None => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
                _ => {}
            },
        }
    }

    /// The server's URL with credentials, so clients send AUTH.
    pub fn url_with_login(&self) -> String {
        format!("smtp://tester:secret@127.0.0.1:{}", self.port)
    }

    /// Every message received so far, raw, with when it was written.
    pub fn received(&self) -> Vec<(std::time::SystemTime, String)> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let at = std::fs::metadata(&path).ok()?.modified().ok()?;
                Some((at, std::fs::read_to_string(path).ok()?))
            })
            .collect()
    }
}

impl Drop for SmtpProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}
