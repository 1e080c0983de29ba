//! The leader's sweep over access requests: pending ones past their expiry become expired,
//! sealed credentials whose lease ended are forgotten, a withdrawn request's lease that is
//! somehow still active is revoked, and requests finished long enough ago are forgotten.

use super::Requests;
use crate::error::ServerError;
use pgwarden_core::{AuditEvent, LeaseState, Outcome, RequestState, chain};
use pgwarden_store::StoredRequest;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often the leader sweeps.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl Requests {
    /// While this replica leads, every [`SWEEP_INTERVAL`]: marks pending requests past their
    /// expiry as expired, forgets the sealed credentials of leases that have ended, revokes
    /// any lease still active for a request that was withdrawn, and forgets requests finished
    /// more than `requests.keep_finished` ago.
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
            if self.forgotten(&stored, at).await? {
                continue;
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

    /// Forgets `stored` if it finished more than `keep_finished` before `at` and has no live
    /// lease; whether it did.
    async fn forgotten(
        &self,
        stored: &StoredRequest,
        at: OffsetDateTime,
    ) -> Result<bool, ServerError> {
        let request = &stored.request;
        let due = request
            .finished_at()
            .is_some_and(|finished| self.keep_finished.after(finished) <= at);
        if !due {
            return Ok(false);
        }
        if let Some(lease_id) = &request.lease_id
            && self.store.get_lease(lease_id).await?.is_some()
        {
            return Ok(false); // the reaper ends it first
        }
        if !self
            .store
            .delete_request(&request.id, request.version)
            .await?
        {
            return Ok(false); // changed meanwhile: seen again at the next sweep
        }
        let event = AuditEvent::now("pgwarden", "request.forget", &request.id, Outcome::Success)
            .with_detail(format!(
                "{} and kept for {}",
                request.state.as_str(),
                self.keep_finished
            ));
        self.audit.record(event).await;
        Ok(true)
    }
}
