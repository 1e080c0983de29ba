//! A static role's password kept in files: read from pgwarden, read again just after its
//! next rotation is due, and at least every [`POLL`] so a rotation made on demand
//! (`rotate-role`) reaches the files too. A new `last_vault_rotation` means a new password.

use crate::config::Delivery;
use crate::refresh::{Refreshed, Refresher};
use crate::run::AgentError;
use pgwarden_client::{Client, Credential, instant_after};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest time between two reads of a static role's password.
const POLL: Duration = Duration::from_secs(60);

/// How long after a scheduled rotation the password is read again (the rotation runs on the
/// broker's one-second clock).
const AFTER_ROTATION: Duration = Duration::from_secs(2);

/// How often the password is read while its rotation is overdue (the broker cannot rotate
/// it now; the password in force still works).
const OVERDUE_POLL: Duration = Duration::from_secs(10);

/// A static role's password being kept fresh.
pub(crate) struct StaticKept {
    delivery: Delivery,
    client: Arc<Client>,
    /// The `last_vault_rotation` of the password in the files.
    written: parking_lot::Mutex<Option<String>>,
}

impl StaticKept {
    /// The keeper of `delivery`, read through `client`.
    pub(crate) fn new(delivery: Delivery, client: Arc<Client>) -> StaticKept {
        StaticKept {
            delivery,
            client,
            written: parking_lot::Mutex::new(None),
        }
    }
}

impl Refresher for StaticKept {
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Reads the password; it changed when its rotation time did.
    async fn refresh(&self) -> Result<Refreshed, AgentError> {
        let read_at = Instant::now();
        let current = self.client.static_credential(&self.delivery.path).await?;
        let ttl = Duration::from_secs(current.ttl);
        let changed = self.written.lock().as_deref() != Some(current.last_vault_rotation.as_str());
        Ok(Refreshed {
            credential: Credential {
                lease_id: String::new(),
                lease_duration: ttl,
                username: current.username,
                password: current.password,
                host: current.host,
                port: current.port,
                database: current.database,
                hosts: Vec::new(),
            },
            // The password works until it is rotated, and the agent reads the new one within
            // seconds: count it valid while reads keep succeeding.
            expires_at: instant_after(read_at, ttl.saturating_add(POLL)),
            next_at: read_at
                + if ttl.is_zero() {
                    OVERDUE_POLL
                } else {
                    ttl.saturating_add(AFTER_ROTATION).min(POLL)
                },
            changed,
            version: Some(current.last_vault_rotation),
        })
    }

    fn written(&self, version: Option<String>) {
        *self.written.lock() = version;
    }
}
