//! `/healthz` (the agent is running) and `/readyz` (every credential file is written and its
//! lease still valid, with how long each remains valid).

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use tokio::time::Instant;

/// What the health endpoint reports of one credential.
pub struct Slot {
    /// The credential path.
    pub path: String,
    /// The lease in the files now.
    pub lease_id: String,
    /// When that lease ends unless renewed.
    pub expires_at: Instant,
}

impl Slot {
    /// The slot of credential `path` as `current` stands.
    pub fn of(path: &str, current: &pgwarden_client::Current) -> Slot {
        Slot {
            path: path.to_string(),
            lease_id: current.credential.lease_id.clone(),
            expires_at: current.expires_at,
        }
    }
}

/// The agent's state as the health endpoint sees it.
#[derive(Default)]
pub struct Status {
    slots: Mutex<Vec<Slot>>,
    /// How many credentials there are to be ready for.
    expected: usize,
}

impl Status {
    /// The status of an agent with `expected` credentials: ready once each is written.
    pub fn expecting(expected: usize) -> Status {
        Status {
            slots: Mutex::default(),
            expected,
        }
    }

    /// Records (or updates) the credential `slot.path`.
    pub fn set(&self, slot: Slot) {
        let mut slots = self.slots.lock();
        match slots.iter_mut().find(|s| s.path == slot.path) {
            Some(existing) => *existing = slot,
            None => slots.push(slot),
        }
    }

    fn report(&self) -> (bool, serde_json::Value) {
        let now = Instant::now();
        let slots = self.slots.lock();
        let ready = !slots.is_empty()
            && slots.len() >= self.expected
            && slots.iter().all(|s| s.expires_at > now);
        let credentials: Vec<_> = slots
            .iter()
            .map(|s| json!({ "path": s.path, "lease_id": s.lease_id, "valid_for_seconds": s.expires_at.saturating_duration_since(now).as_secs() }))
            .collect();
        (ready, json!({ "ready": ready, "credentials": credentials }))
    }
}

/// The health routes.
pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let (ready, body) = status.report();
                let code = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                async move { (code, axum::Json(body)) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ready_once_every_credential_is_written_and_valid() {
        let status = Status::expecting(2);
        let slot = |path: &str, valid_for: Duration| Slot {
            path: path.into(),
            lease_id: format!("{path}/lease"),
            expires_at: Instant::now() + valid_for,
        };
        assert!(!status.report().0, "nothing written yet");
        status.set(slot("a", Duration::from_secs(60)));
        assert!(!status.report().0, "one of two written");
        status.set(slot("b", Duration::from_secs(60)));
        assert!(status.report().0);
        status.set(slot("b", Duration::ZERO));
        assert!(!status.report().0, "a lease has ended");
    }
}
