//! The proxy's Prometheus metrics, in one registry passed around explicitly.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a client was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `invalid_token`, `not_allowed`, `no_password`, `not_local`, `cleartext_without_tls`,
    /// `bad_startup`, `login_timeout`, `too_many_clients`, `pgwarden_unreachable`,
    /// `server_unavailable`.
    pub reason: &'static str,
}

/// Which way bytes went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `client_to_server` or `server_to_client`.
    pub direction: &'static str,
}

/// Every metric the proxy exports (prefix `pgwarden_proxy_`).
pub struct Metrics {
    registry: Registry,
    /// Client connections open now.
    pub clients: Gauge,
    /// Client connections accepted.
    pub clients_total: Counter,
    /// Server connections open now.
    pub servers: Gauge,
    /// Server connections made.
    pub server_connects: Counter,
    /// Clients refused, by reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Time clients waited for a server connection, when none was free at once.
    pub pool_wait: Histogram,
    /// Waits for a server connection that timed out.
    pub pool_wait_timeouts: Counter,
    /// Bytes relayed.
    pub bytes: Family<DirectionLabels, Counter>,
    /// Bytes from clients to servers (the `bytes` counter of that direction, looked up once).
    pub bytes_to_server: Counter,
    /// Bytes from servers to clients.
    pub bytes_to_client: Counter,
    /// Credentials replaced by new ones.
    pub rotations: Counter,
    /// Leases the proxy revoked (replaced ones whose last connection closed, and at exit).
    pub leases_revoked: Counter,
    /// Server connections closed in transaction pooling because a client changed a setting
    /// the server reports.
    pub settings_closes: Counter,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Metrics {
        let bytes = Family::<DirectionLabels, Counter>::default();
        let direction = |direction| bytes.get_or_create(&DirectionLabels { direction }).clone();
        let (bytes_to_server, bytes_to_client) =
            (direction("client_to_server"), direction("server_to_client"));
        let mut m = Metrics {
            registry: Registry::with_prefix("pgwarden_proxy"),
            clients: Gauge::default(),
            clients_total: Counter::default(),
            servers: Gauge::default(),
            server_connects: Counter::default(),
            refusals: Family::default(),
            pool_wait: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            pool_wait_timeouts: Counter::default(),
            bytes,
            bytes_to_server,
            bytes_to_client,
            rotations: Counter::default(),
            leases_revoked: Counter::default(),
            settings_closes: Counter::default(),
        };
        let r = &mut m.registry;
        r.register("clients", "Client connections open", m.clients.clone());
        r.register(
            "client_connections",
            "Client connections accepted",
            m.clients_total.clone(),
        );
        r.register("servers", "Server connections open", m.servers.clone());
        r.register(
            "server_connections",
            "Server connections made",
            m.server_connects.clone(),
        );
        r.register("refusals", "Clients refused, by reason", m.refusals.clone());
        r.register(
            "pool_wait_seconds",
            "Time waited for a server connection when none was free at once",
            m.pool_wait.clone(),
        );
        r.register(
            "pool_wait_timeouts",
            "Waits for a server connection that timed out",
            m.pool_wait_timeouts.clone(),
        );
        r.register("bytes", "Bytes relayed", m.bytes.clone());
        r.register(
            "rotations",
            "Credentials replaced by new ones",
            m.rotations.clone(),
        );
        r.register(
            "leases_revoked",
            "Leases revoked by the proxy",
            m.leases_revoked.clone(),
        );
        r.register(
            "settings_closes",
            "Server connections closed, not reused, because a client changed a reported setting",
            m.settings_closes.clone(),
        );
        m
    }

    /// Counts a refusal.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
