//! The leader's clock for static roles: every second it rotates the roles that are due and
//! finishes rotations left half-done (after a crash), leaving alone for a while a rotation
//! that another request may still be working on.

use super::{StaticRoles, key};
use crate::error::ServerError;
use pgwarden_core::{AuditEvent, Outcome, chain};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often the leader looks for rotations that are due or unfinished.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long the leader waits before trying a failed rotation again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long a pending password must stay unchanged before the leader finishes it itself (a
/// rotation on another replica may still be working on it).
const PENDING_GRACE: Duration = Duration::from_secs(30);
/// Longest time one role's rotation may take before the leader moves on.
const ROTATION_TIMEOUT: Duration = Duration::from_secs(60);

impl StaticRoles {
    /// While this replica leads, every [`CHECK_INTERVAL`]: rotates the static roles that are
    /// due and finishes rotations left half-done.
    pub async fn run(
        self: Arc<Self>,
        is_leader: impl Fn() -> bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            if !is_leader() {
                continue;
            }
            if let Err(error) = self.rotate_due().await {
                tracing::warn!(error = %chain(&error), "looking for static roles to rotate failed");
            }
        }
    }

    /// One pass of [`StaticRoles::run`].
    pub async fn rotate_due(&self) -> Result<(), ServerError> {
        let now = OffsetDateTime::now_utc();
        for role in self.store.static_roles().await? {
            let object = key(&role.mount, &role.def.name);
            let due = if role.sealed_pending.is_some() {
                self.pending_long_enough(&object, role.version)
            } else {
                self.pending_since.lock().remove(&object);
                role.next_rotation <= now
            };
            let waiting = self
                .retry_at
                .lock()
                .get(&object)
                .is_some_and(|at| Instant::now() < *at);
            if !due || waiting {
                continue;
            }
            let (mount, name) = (role.mount.as_str(), role.def.name.as_str());
            let lock = self.lock(mount, name);
            let _held = lock.lock().await;
            let rotation = async {
                let Some(role) = self.store.get_static_role(mount, name).await? else {
                    return Ok(());
                };
                let role = self.settle(role).await?;
                if role.next_rotation <= OffsetDateTime::now_utc() {
                    self.start_rotation(role).await?;
                }
                Ok::<_, ServerError>(())
            };
            let rotated = tokio::time::timeout(ROTATION_TIMEOUT, rotation)
                .await
                .unwrap_or_else(|_| {
                    Err(ServerError::Unavailable(format!(
                        "rotation took longer than {} s",
                        ROTATION_TIMEOUT.as_secs()
                    )))
                });
            match rotated {
                Ok(()) => {
                    self.retry_at.lock().remove(&object);
                }
                Err(error) => {
                    tracing::warn!(role = %object, error = %chain(&error), "rotating a static role failed; trying again in 30 s");
                    self.retry_at.lock().insert(
                        object.clone(),
                        Instant::now()
                            .checked_add(RETRY_AFTER)
                            .unwrap_or_else(Instant::now),
                    );
                    self.audit.submit(
                        AuditEvent::now(
                            "pgwarden",
                            "static-role.rotate",
                            &object,
                            Outcome::Failure,
                        )
                        .with_detail(error.to_string()),
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the role `object` has held its pending password, at `version`, for
    /// [`PENDING_GRACE`] as this process has watched it.
    fn pending_long_enough(&self, object: &str, version: u64) -> bool {
        let mut seen = self.pending_since.lock();
        match seen.get(object) {
            Some((at_version, since)) if *at_version == version => since.elapsed() >= PENDING_GRACE,
            _ => {
                seen.insert(object.to_string(), (version, Instant::now()));
                false
            }
        }
    }
}
