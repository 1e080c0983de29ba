//! Credentials the agent refreshes on its own clock rather than by renewing a lease: RDS IAM
//! tokens (signed anew every `refresh`) and static roles' passwords (read again when their
//! rotation is due). One loop serves both: refresh when due, rewrite the files and fire
//! `on_change` when the credential changed, retry failures with capped exponential backoff
//! while the last files stay.

use crate::config::Delivery;
use crate::files::{render, write_atomically};
use crate::health::{Slot, Status};
use crate::on_change::fire;
use crate::run::AgentError;
use pgwarden_client::Credential;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// First wait before retrying a failed refresh; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one refresh found.
pub(crate) struct Refreshed {
    /// The credential now.
    pub credential: Credential,
    /// Until when it works.
    pub expires_at: Instant,
    /// When to refresh next.
    pub next_at: Instant,
    /// Whether it differs from the one in the files.
    pub changed: bool,
    /// What tells this credential from the next (a static role's rotation time), recorded
    /// once its files are written.
    pub version: Option<String>,
}

/// A credential refreshed on its own clock.
pub(crate) trait Refresher: Send + Sync + 'static {
    /// The credential's path and files.
    fn delivery(&self) -> &Delivery;

    /// Gets the credential now.
    fn refresh(&self) -> impl Future<Output = Result<Refreshed, AgentError>> + Send;

    /// Records that the files hold the credential of `version`.
    fn written(&self, _version: Option<String>) {}
}

/// Refreshes once and writes the files if the credential changed (or `force`); returns what
/// was found.
pub(crate) async fn refresh_and_write<R: Refresher>(
    refresher: &R,
    force: bool,
) -> Result<Refreshed, AgentError> {
    let refreshed = refresher.refresh().await?;
    if refreshed.changed || force {
        let delivery = refresher.delivery();
        for file in &delivery.files {
            write_atomically(&file.path, &render(file, &refreshed.credential)?)?;
        }
        tracing::info!(path = %delivery.path, files = delivery.files.len(), "credential files written");
        refresher.written(refreshed.version.clone());
    }
    Ok(refreshed)
}

/// The health slot of `delivery` valid until `expires_at`.
pub(crate) fn slot(delivery: &Delivery, expires_at: Instant) -> Slot {
    Slot {
        path: delivery.path.clone(),
        lease_id: String::new(),
        expires_at,
    }
}

/// Keeps `refresher`'s files fresh from `first` on, until aborted.
pub(crate) async fn keep<R: Refresher>(refresher: Arc<R>, status: Arc<Status>, first: Refreshed) {
    let (mut next_at, mut expires_at) = (first.next_at, first.expires_at);
    loop {
        tokio::time::sleep_until(next_at).await;
        let mut attempt = 0;
        loop {
            match refresh_and_write(refresher.as_ref(), false).await {
                Ok(refreshed) => {
                    (next_at, expires_at) = (refreshed.next_at, refreshed.expires_at);
                    status.set(slot(refresher.delivery(), expires_at));
                    if refreshed.changed
                        && let Some(action) = &refresher.delivery().on_change
                    {
                        fire(action).await;
                    }
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    let wait = pgwarden_core::backoff(attempt, FIRST_BACKOFF, MAX_BACKOFF);
                    tracing::warn!(path = %refresher.delivery().path, %error, valid_for_s = expires_at.saturating_duration_since(Instant::now()).as_secs(), retry_in_ms = wait.as_millis() as u64, "refreshing the credential failed; the previous files stay");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
