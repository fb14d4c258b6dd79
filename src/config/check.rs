//! The checks every settings group uses: ranges a type cannot say, and URLs
//! (checked here rather than by the parser, which would echo a bad value,
//! password and all). Each refusal is one line naming the variable and what
//! it accepts; `main` prints it and exits with code 2.

use std::time::Duration;

/// A setting refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var} {problem}")]
pub struct InvalidSetting {
    pub var: &'static str,
    pub problem: String,
}

impl InvalidSetting {
    /// The refusal with the reason for its limit, in parentheses.
    pub(super) fn because(self, why: &str) -> Self {
        Self {
            problem: format!("{} ({why})", self.problem),
            ..self
        }
    }
}

pub(super) fn bad(var: &'static str, problem: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        var,
        problem: problem.into(),
    }
}

pub(super) fn at_least(
    var: &'static str,
    value: Duration,
    min: Duration,
) -> Result<(), InvalidSetting> {
    if value < min {
        return Err(bad(
            var,
            format!(
                "must be at least {} (is {})",
                humantime::format_duration(min),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

pub(super) fn at_most(
    var: &'static str,
    value: Duration,
    max: Duration,
) -> Result<(), InvalidSetting> {
    if value > max {
        return Err(bad(
            var,
            format!(
                "must be at most {} (is {})",
                humantime::format_duration(max),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

pub(super) fn in_range<T: PartialOrd + std::fmt::Display>(
    var: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), InvalidSetting> {
    if value < min || value > max {
        return Err(bad(
            var,
            format!("must be from {min} to {max} (is {value})"),
        ));
    }
    Ok(())
}

/// `url` with any password replaced, for messages: the user's, and query
/// parameters that carry one (Sentinel's `sentinelPassword`).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let secret = |k: &str| k.to_ascii_lowercase().contains("password");
            if u.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Unparsable: show its scheme at most.
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://..."),
            None => "(not a URL)".to_owned(),
        },
    }
}

pub(super) fn postgres_url(var: &'static str, url: &str) -> Result<(), InvalidSetting> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad(
            var,
            format!("must be a postgres:// URL (is {})", redact(url)),
        ));
    }
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .map(|_| ())
        .map_err(|_| {
            bad(
                var,
                format!("is not a valid Postgres URL ({})", redact(url)),
            )
        })
}

/// The URL schemes REDIS_URL may have: one server, a cluster, Sentinel;
/// each plain or TLS.
const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
    "rediss-sentinel://",
];

pub(super) fn redis_url(var: &'static str, url: &str) -> Result<(), InvalidSetting> {
    if !REDIS_SCHEMES.iter().any(|scheme| url.starts_with(scheme)) {
        return Err(bad(
            var,
            format!(
                "must be a redis://, rediss://, redis-cluster:// or redis-sentinel:// URL (is {})",
                redact(url)
            ),
        ));
    }
    fred::types::config::Config::from_url(url)
        .map(|_| ())
        .map_err(|_| bad(var, format!("is not a valid Redis URL ({})", redact(url))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:hunter2@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert!(!redact("redis://:hunter2@[::1").contains("hunter2"));
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        let sentinel = redact(
            "redis-sentinel://u:pw1@10.0.0.1:26379?sentinelServiceName=m&sentinelPassword=pw2&node=10.0.0.2:26379",
        );
        assert!(
            !sentinel.contains("pw1") && !sentinel.contains("pw2"),
            "{sentinel}"
        );
        assert!(sentinel.contains("node=10.0.0.2"), "{sentinel}");
    }
}
