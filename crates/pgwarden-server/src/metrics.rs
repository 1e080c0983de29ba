//! Prometheus metrics of the broker, in one registry passed around explicitly.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a lease ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevokeLabels {
    /// `expired`, `requested` or `rollback`.
    pub reason: &'static str,
}

/// HTTP responses by status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// The status code.
    pub code: u16,
}

/// Why a request was denied.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// `policy`, `not_owner` or `root_only`.
    pub reason: &'static str,
}

/// A login attempt's mount and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// The auth mount.
    pub mount: String,
    /// `ok`, or the check that failed (`expired`, `wrong_audience`, `namespace_not_bound`…).
    pub result: &'static str,
}

/// A policy reload's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

/// Every metric pgwarden exports.
pub struct Metrics {
    registry: Registry,
    /// Leases issued.
    pub leases_issued: Counter,
    /// Issue attempts that failed.
    pub issue_failures: Counter,
    /// Leases whose user was dropped, by reason.
    pub leases_revoked: Family<RevokeLabels, Counter>,
    /// Revocation attempts that failed (each retry counts).
    pub revocation_failures: Counter,
    /// Leases pgwarden is responsible for (pending, active or being revoked).
    pub leases: Gauge,
    /// Leases whose revocation has failed and is being retried.
    pub leases_failing_revocation: Gauge,
    /// API requests holding a turn (being worked on, whether or not their client waits).
    pub http_requests_in_flight: Gauge,
    /// API requests waiting for a turn.
    pub http_requests_waiting: Gauge,
    /// HTTP responses by status.
    pub http_responses: Family<ResponseLabels, Counter>,
    /// Login attempts by mount and outcome.
    pub logins: Family<LoginLabels, Counter>,
    /// Requests denied, by reason.
    pub denials: Family<DenialLabels, Counter>,
    /// Policy reloads by outcome.
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// Users shaped like pgwarden's that no lease names, as of the last sweep.
    pub orphan_users: Gauge,
    /// Such users dropped after their grace period.
    pub orphan_users_dropped: Counter,
    /// 1 while this replica leads (reaps), else 0.
    pub leader: Gauge,
    /// Audit records that could not be stored (or copied to the audit file).
    pub audit_failures: Counter,
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgwarden");
        let m = Metrics {
            leases_issued: Counter::default(),
            issue_failures: Counter::default(),
            leases_revoked: Family::default(),
            revocation_failures: Counter::default(),
            leases: Gauge::default(),
            leases_failing_revocation: Gauge::default(),
            http_requests_in_flight: Gauge::default(),
            http_requests_waiting: Gauge::default(),
            http_responses: Family::default(),
            logins: Family::default(),
            denials: Family::default(),
            policy_reloads: Family::default(),
            orphan_users: Gauge::default(),
            orphan_users_dropped: Counter::default(),
            leader: Gauge::default(),
            audit_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("leases_issued", "Leases issued", m.leases_issued.clone());
        registry.register(
            "issue_failures",
            "Credential requests that failed",
            m.issue_failures.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit records that could not be stored or copied to the audit file",
            m.audit_failures.clone(),
        );
        registry.register(
            "leases_revoked",
            "Leases whose user was dropped",
            m.leases_revoked.clone(),
        );
        registry.register(
            "revocation_failures",
            "Failed revocation attempts",
            m.revocation_failures.clone(),
        );
        registry.register(
            "leases",
            "Leases held (pending, active or being revoked)",
            m.leases.clone(),
        );
        registry.register(
            "leases_failing_revocation",
            "Leases whose revocation failed and is being retried",
            m.leases_failing_revocation.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "API requests being worked on, counting those whose client hung up",
            m.http_requests_in_flight.clone(),
        );
        registry.register(
            "http_requests_waiting",
            "API requests waiting for a turn (http.max_requests_in_flight), or for their database's share of the turns (http.max_requests_per_database)",
            m.http_requests_waiting.clone(),
        );
        registry.register(
            "http_responses",
            "HTTP responses by status code",
            m.http_responses.clone(),
        );
        registry.register(
            "logins",
            "Login attempts by mount and result",
            m.logins.clone(),
        );
        registry.register("denials", "Requests denied, by reason", m.denials.clone());
        registry.register(
            "policy_reloads",
            "Policy file reloads by result",
            m.policy_reloads.clone(),
        );
        registry.register(
            "orphan_users",
            "Users shaped like pgwarden's that no lease names (last sweep)",
            m.orphan_users.clone(),
        );
        registry.register(
            "orphan_users_dropped",
            "Untracked users dropped after the grace period",
            m.orphan_users_dropped.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (reaps expired leases), else 0",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an empty page is the fallback all the same.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
