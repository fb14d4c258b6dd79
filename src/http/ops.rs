//! The operator's port (`ADMIN_ADDR`): /healthz, /readyz and /metrics for the
//! orchestrator and Prometheus, on a listener of its own, so that `relay` and
//! `worker`, which serve no API, can be probed and scraped too. Not behind
//! the API's edge limits: it is meant for a private network.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::health::{self, Probes, Readiness};
use crate::metrics::Scrape;

#[derive(Clone)]
struct OpsState {
    probes: Probes,
    scrape: Scrape,
}

pub fn router(probes: Probes, scrape: Scrape) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState { probes, scrape })
}

async fn readyz(State(ops): State<OpsState>) -> (StatusCode, Json<Readiness>) {
    ops.probes.check().await
}

async fn metrics(State(ops): State<OpsState>) -> Response {
    metrics_text(&ops.scrape).await
}

/// The metrics in Prometheus' text format.
pub async fn metrics_text(scrape: &Scrape) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape.render().await,
    )
        .into_response()
}
