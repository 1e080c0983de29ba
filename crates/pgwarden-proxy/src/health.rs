//! `/metrics`, `/healthz` (the proxy runs) and `/readyz` (it takes new clients: not draining).

use crate::metrics::Metrics;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Serves the routes on `addr` in the background; returns the address bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    draining: watch::Receiver<bool>,
) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (metrics_listen): {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = !*draining.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.encode();
                async move { text }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(bound)
}
