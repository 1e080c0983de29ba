//! The leader's sweep over access requests: pending ones past their expiry become expired,
//! sealed credentials whose lease ended are forgotten, and a withdrawn request's lease that is
//! somehow still active is revoked.

use super::Requests;
use crate::error::ServerError;
use pgwarden_core::{AuditEvent, LeaseState, Outcome, RequestState, chain};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often the leader sweeps.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl Requests {
    /// While this replica leads, every [`SWEEP_INTERVAL`]: marks pending requests past their
    /// expiry as expired, forgets the sealed credentials of leases that have ended, and
    /// revokes any lease still active for a request that was withdrawn.
    pub async fn run_sweeper(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            if !self.broker.is_leader() {
                continue;
            }
            if let Err(error) = self.sweep().await {
                tracing::warn!(error = %chain(&error), "sweeping access requests failed");
            }
        }
    }

    /// One pass of [`Requests::run_sweeper`].
    pub async fn sweep(&self) -> Result<(), ServerError> {
        for mut stored in self.store.all_requests().await? {
            let at = OffsetDateTime::now_utc();
            if stored.request.state == RequestState::Withdrawn
                && stored.request.credential_may_be_live(at)
                && let Some(lease_id) = &stored.request.lease_id
                && self
                    .store
                    .get_lease(lease_id)
                    .await?
                    .is_some_and(|l| l.state == LeaseState::Active)
            {
                self.revoke_quietly(lease_id).await;
            }
            let from = stored.request.version;
            let expired = stored.request.expire(at);
            let ended = !expired && stored.sealed_credential.is_some() && {
                let lease = match &stored.request.lease_id {
                    Some(id) => self.store.get_lease(id).await?,
                    None => None,
                };
                lease.is_none_or(|l| l.state != LeaseState::Active)
            };
            if !expired && !ended {
                continue;
            }
            stored.sealed_credential = None;
            if ended {
                stored.request.version = stored.request.version.saturating_add(1);
            }
            if self.store.update_request(&stored, from).await? && expired {
                let event = AuditEvent::now(
                    "pgwarden",
                    "request.expire",
                    &stored.request.id,
                    Outcome::Success,
                )
                .with_detail("not decided in time");
                self.audit.record(event).await;
            }
        }
        Ok(())
    }
}
