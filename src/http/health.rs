//! GET /healthz (the process is alive) and GET /readyz (its dependencies answer).

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use super::AppState;
use crate::{outbox::stats::OutboxStats, queue::Broker};

/// How long each readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Each dependency: "up" or "down". Why it is down goes to the log, not to
/// whoever asks: driver errors name hosts, ports and users.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// "ready" or "unavailable".
    pub status: &'static str,
    pub postgres: String,
    pub redis: String,
    /// A relay's only: "flowing", or "stalled" when the oldest undispatched
    /// row is older than RELAY_READY_MAX_AGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)), tag = "health")]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Postgres and Redis both answer; 503 names what does not.
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)),
    tag = "health"
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    Probes::new(state.pool, state.broker).check().await
}

/// What a process's readiness depends on.
#[derive(Clone)]
pub struct Probes {
    pool: PgPool,
    broker: Broker,
    /// For a relay: the oldest undispatched row may be at most this old.
    outbox_max_age: Option<Duration>,
}

impl Probes {
    pub fn new(pool: PgPool, broker: Broker) -> Self {
        Self {
            pool,
            broker,
            outbox_max_age: None,
        }
    }

    /// Also not ready while the outbox's oldest undispatched row is older
    /// than `max_age` (a relay that forwards nothing).
    pub fn with_outbox_max_age(self, max_age: Duration) -> Self {
        Self {
            outbox_max_age: Some(max_age),
            ..self
        }
    }

    /// Postgres and Redis both answer (and the outbox flows, when asked);
    /// 503 names what does not.
    pub async fn check(&self) -> (StatusCode, Json<Readiness>) {
        let pg = probe(sqlx::query("SELECT 1").execute(&self.pool));
        let redis = probe(self.broker.ping());
        let outbox = async {
            let max_age = self.outbox_max_age?;
            Some(
                match tokio::time::timeout(
                    PROBE_TIMEOUT,
                    OutboxStats::read(&self.pool, &self.broker),
                )
                .await
                {
                    Ok(Ok(stats)) => match stats.stalled(max_age) {
                        Some(age) => Err(format!(
                            "the oldest undispatched row waited {:.0}s (RELAY_READY_MAX_AGE {:.0}s)",
                            age.as_secs_f64(),
                            max_age.as_secs_f64()
                        )),
                        None => Ok(()),
                    },
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".to_owned()),
                },
            )
        };
        let (pg, redis, outbox) = tokio::join!(pg, redis, outbox);
        let show = |what: &str, r: &Result<(), String>, up: &str, down: &str| match r {
            Ok(()) => up.to_owned(),
            Err(e) => {
                tracing::warn!(dependency = what, error = %e, "not ready");
                down.to_owned()
            }
        };
        let ready = pg.is_ok() && redis.is_ok() && outbox.as_ref().is_none_or(Result::is_ok);
        let body = Readiness {
            status: if ready { "ready" } else { "unavailable" },
            postgres: show("postgres", &pg, "up", "down"),
            redis: show("redis", &redis, "up", "down"),
            outbox: outbox.map(|r| show("outbox", &r, "flowing", "stalled")),
        };
        let status = match ready {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(body))
    }
}

/// `check` within the probe timeout, its error as text.
async fn probe<T, E: std::fmt::Display>(
    check: impl Future<Output = Result<T, E>>,
) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in time".to_owned()),
    }
}
