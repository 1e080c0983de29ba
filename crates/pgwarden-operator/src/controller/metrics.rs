//! The operator's `pgwarden_operator_*` counters, served in the Prometheus text format, and
//! the per-object failure counts that space out retries.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;

/// Labels naming the resource kind a reconciliation was for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The operator's counters (cheap to clone: they share their values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconcile_failures: Family<KindLabels, Counter>,
    renewal_failures: Counter,
    credentials_issued: Counter,
    renewals: Counter,
    failures: Arc<parking_lot::Mutex<HashMap<String, u32>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pgwarden_operator");
        let reconcile_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed and are retried",
            reconcile_failures.clone(),
        );
        let renewal_failures = Counter::default();
        registry.register(
            "renewal_failures",
            "Lease renewals that failed (retried with backoff)",
            renewal_failures.clone(),
        );
        let renewals = Counter::default();
        registry.register("renewals", "Leases renewed", renewals.clone());
        let credentials_issued = Counter::default();
        registry.register(
            "credentials_issued",
            "Credentials written to Secrets (first issue, re-creation, rotation)",
            credentials_issued.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            reconcile_failures,
            renewal_failures,
            credentials_issued,
            renewals,
            failures: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed reconciliation of `key` (`Kind/namespace/name`); returns how many in
    /// a row.
    pub fn failed(&self, key: &str) -> u32 {
        let kind = key.split('/').next().unwrap_or_default().to_string();
        self.reconcile_failures
            .get_or_create(&KindLabels { kind })
            .inc();
        let mut failures = self.failures.lock();
        let count = failures.entry(key.to_string()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    /// Forgets `key`'s failures after a reconciliation that worked.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().remove(key);
    }

    /// Counts a renewal that failed.
    pub fn renewal_failed(&self) {
        self.renewal_failures.inc();
    }

    /// Counts a renewal.
    pub fn renewed(&self) {
        self.renewals.inc();
    }

    /// Counts a credential written to a Secret.
    pub fn issued(&self) {
        self.credentials_issued.inc();
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` (and `GET /healthz`) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
