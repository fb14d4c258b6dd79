//! GET /healthz (the process is alive) and GET /readyz (its dependencies answer).

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

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
    let pg = async {
        match tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&state.pool))
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    };
    let redis = async {
        match tokio::time::timeout(PROBE_TIMEOUT, state.queue.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    };
    let (pg, redis) = tokio::join!(pg, redis);
    let show = |what: &str, r: &Result<(), String>| match r {
        Ok(()) => "up".to_owned(),
        Err(e) => {
            tracing::warn!(dependency = what, error = %e, "not ready");
            "down".to_owned()
        }
    };
    let ready = pg.is_ok() && redis.is_ok();
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        postgres: show("postgres", &pg),
        redis: show("redis", &redis),
    };
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
