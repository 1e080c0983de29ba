//! pgwarden's own `sys` endpoints: health, metrics and the orphan report.

use super::AppState;
use super::respond;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use pgwarden_core::wire::{Health, OrphanList, OrphanUser, SecretResponse};
use std::sync::Arc;

/// `GET /v1/sys/health`, unauthenticated, in Vault's shape.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    Json(Health {
        initialized: true,
        sealed: false,
        standby: false,
        performance_standby: false,
        replication_performance_mode: "disabled".into(),
        replication_dr_mode: "disabled".into(),
        server_time_utc: time::OffsetDateTime::now_utc().unix_timestamp(),
        version: env!("CARGO_PKG_VERSION").into(),
        cluster_name: "pgwarden".into(),
        leader: state.broker.is_leader(),
    })
    .into_response()
}

/// `GET /metrics` in OpenMetrics text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state
        .metrics
        .leader
        .set(i64::from(state.broker.is_leader()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Users shaped like pgwarden's that no lease names, as the last sweep found them.
pub fn orphans(state: &AppState) -> Json<SecretResponse<OrphanList>> {
    let orphans = state
        .orphans
        .list()
        .into_iter()
        .map(|o| OrphanUser {
            username: o.username,
            connection: o.connection,
            first_seen: respond::rfc3339(o.first_seen),
            drop_at: o.drop_at.map(respond::rfc3339),
        })
        .collect();
    respond::ok(OrphanList { orphans })
}
