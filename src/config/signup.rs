//! Sign-up settings: password hashing and the verify-email task.

use std::time::Duration;

use clap::Args;

use super::{
    check::{InvalidSetting, at_least, at_most, bad, in_range},
    parse_duration,
};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sign-up")]
pub struct SignupConfig {
    /// argon2id memory cost in KiB (OWASP: 19456).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP: 2).
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// argon2id lanes (OWASP: 1).
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Most passwords hashed at once (each takes ARGON2_MEMORY_KIB of memory
    /// and a core). Default: the number of cores.
    #[arg(long, env = "ARGON2_MAX_CONCURRENT")]
    pub argon2_max_concurrent: Option<usize>,
    /// How long a sign-up waits for a hashing slot before it is refused as
    /// busy (503 with Retry-After).
    #[arg(long, env = "ARGON2_QUEUE_WAIT", default_value = "1s", value_parser = parse_duration)]
    pub argon2_queue_wait: Duration,
    /// Queue of the verify-email task.
    #[arg(long, env = "VERIFY_EMAIL_QUEUE", default_value = "critical")]
    pub verify_email_queue: String,
    /// Retries of the verify-email task before it is archived.
    #[arg(long, env = "VERIFY_EMAIL_MAX_RETRY", default_value_t = 10)]
    pub verify_email_max_retry: u32,
    /// Delay between sign-up and the verify-email task.
    #[arg(long, env = "VERIFY_EMAIL_PROCESS_IN", default_value = "10s", value_parser = parse_duration)]
    pub verify_email_process_in: Duration,
    /// Longest one run of the verify-email task may take.
    #[arg(long, env = "VERIFY_EMAIL_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub verify_email_timeout: Duration,
    /// How long a verification link works, counted from each email that
    /// carries it.
    #[arg(long, env = "VERIFY_EMAIL_LINK_TTL", default_value = "15m", value_parser = parse_duration)]
    pub verify_email_link_ttl: Duration,
    /// Shortest time between two requests for a new link to one mailbox;
    /// it doubles after each within a window (60 s, 2 min, 4 min, ...).
    #[arg(long, env = "VERIFY_EMAIL_RESEND_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub verify_email_resend_interval: Duration,
    /// Most new links sent to one mailbox per VERIFY_EMAIL_RESEND_WINDOW
    /// (the sign-up's own email aside).
    #[arg(long, env = "VERIFY_EMAIL_RESEND_MAX", default_value_t = 5)]
    pub verify_email_resend_max: u32,
    /// The window VERIFY_EMAIL_RESEND_MAX counts in, from its first request.
    #[arg(long, env = "VERIFY_EMAIL_RESEND_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub verify_email_resend_window: Duration,
}

impl SignupConfig {
    /// ARGON2_MAX_CONCURRENT, or the number of cores.
    pub fn argon2_max_concurrent(&self) -> usize {
        self.argon2_max_concurrent
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

impl SignupConfig {
    pub(super) fn validate(&self) -> Result<(), InvalidSetting> {
        let s = Duration::from_secs;
        argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
        .map_err(|e| {
            bad(
                "ARGON2_MEMORY_KIB",
                format!("and its siblings are not valid argon2 parameters: {e}"),
            )
        })?;
        if let Some(n) = self.argon2_max_concurrent {
            in_range("ARGON2_MAX_CONCURRENT", n, 1, 1024)?;
        }
        at_least(
            "ARGON2_QUEUE_WAIT",
            self.argon2_queue_wait,
            Duration::from_millis(1),
        )?;
        in_range(
            "VERIFY_EMAIL_MAX_RETRY",
            self.verify_email_max_retry,
            0,
            100,
        )?;
        at_least(
            "VERIFY_EMAIL_TIMEOUT",
            self.verify_email_timeout,
            Duration::from_millis(100),
        )?;
        at_least("VERIFY_EMAIL_LINK_TTL", self.verify_email_link_ttl, s(60))?;
        at_least(
            "VERIFY_EMAIL_RESEND_INTERVAL",
            self.verify_email_resend_interval,
            s(1),
        )?;
        in_range(
            "VERIFY_EMAIL_RESEND_MAX",
            self.verify_email_resend_max,
            1,
            1000,
        )?;
        at_least(
            "VERIFY_EMAIL_RESEND_WINDOW",
            self.verify_email_resend_window,
            s(60),
        )?;
        at_most(
            "VERIFY_EMAIL_RESEND_WINDOW",
            self.verify_email_resend_window,
            s(30 * 86_400),
        )?;
        if self.verify_email_resend_interval >= self.verify_email_resend_window {
            return Err(bad(
                "VERIFY_EMAIL_RESEND_INTERVAL",
                format!(
                    "must be shorter than VERIFY_EMAIL_RESEND_WINDOW ({})",
                    humantime::format_duration(self.verify_email_resend_window)
                ),
            ));
        }
        Ok(())
    }

    /// The limits on new links to one mailbox.
    pub fn resend_limits(&self) -> ResendLimits {
        ResendLimits {
            interval: self.verify_email_resend_interval,
            max: self.verify_email_resend_max,
            window: self.verify_email_resend_window,
        }
    }
}

/// How often one mailbox may be sent a new verification link: at most `max`
/// per `window`, the first `interval` after the last, each later one twice
/// as long after the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendLimits {
    pub interval: Duration,
    pub max: u32,
    pub window: Duration,
}
