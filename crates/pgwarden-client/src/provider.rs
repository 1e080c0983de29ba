//! A credential kept fresh in the background, with Vault-Agent-like rules done right: renew at
//! two thirds of the lease while renewal can still extend it; once a renewal is capped by the
//! max TTL, fetch a new credential at two thirds of what is left, publish it, and revoke the old
//! lease only after a grace period so in-flight work can finish. While pgwarden is unreachable,
//! retry with capped exponential backoff and jitter and keep the current credential. Between
//! renewals, ask every `check_interval` whether the lease still stands, and replace it at once
//! if pgwarden revoked it (by hand, with a prefix, or with its token).

use crate::{Client, ClientError, Credential};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest wait for a look-up's answer: a slow pgwarden must not hold up a renewal.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a provider looks its lease up between renewals by default: each look-up is an
/// API request, with its audit record, per credential.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// Tuning of a [`CredentialProvider`].
#[derive(Debug, Clone, Copy)]
pub struct ProviderOptions {
    /// How long a replaced lease lives on before it is revoked.
    pub grace: Duration,
    /// Whether the provider revokes a replaced lease after `grace`; off for a user that
    /// revokes it itself once its last connection has closed.
    pub revoke_replaced: bool,
    /// Longest wait between retries while pgwarden is unreachable.
    pub max_backoff: Duration,
    /// How often to look the lease up between renewals, so that one revoked in pgwarden is
    /// replaced within this time rather than at the next renewal; `None`: only at renewals.
    pub check_interval: Option<Duration>,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            grace: Duration::from_secs(30),
            revoke_replaced: true,
            max_backoff: Duration::from_secs(30),
            check_interval: Some(CHECK_INTERVAL),
        }
    }
}

/// The credential in use, with what the provider knows about its lease.
#[derive(Debug, Clone)]
pub struct Current {
    /// The credential.
    pub credential: Arc<Credential>,
    /// Increases by one each time the credential is replaced.
    pub generation: u64,
    /// When the lease ends unless renewed.
    pub expires_at: Instant,
    /// True once a renewal was cut short by the max TTL: the next step is a new credential.
    pub capped: bool,
    /// When this credential replaced the previous one.
    pub since: std::time::Instant,
}

struct Shared {
    client: Arc<Client>,
    path: String,
    options: ProviderOptions,
    current: watch::Sender<Current>,
    reissue: Mutex<()>,
}

/// Keeps one credential fresh; see the module documentation for the rules.
pub struct CredentialProvider {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// The instant `after` from `from`; a duration too long for the clock (a server's absurd
/// TTL) gives a hundred years instead of a panic.
pub fn instant_after(from: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(after)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

fn two_thirds(d: Duration) -> Duration {
    d * 2 / 3
}

/// First retry wait while pgwarden is unreachable; it doubles per retry up to `max_backoff`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Longest wait between retries once the credential has expired or would expire before the
/// next retry: then every second without a credential is an outage.
const URGENT_RETRY: Duration = Duration::from_secs(1);

/// Delay before retry number `attempt` when the current credential has `left` to live: the
/// shared backoff, but at most [`URGENT_RETRY`] once the credential would be gone by then.
fn retry_delay(attempt: u32, max: Duration, left: Duration) -> Duration {
    let wait = pgwarden_core::backoff(attempt, FIRST_RETRY, max);
    if left <= wait {
        wait.min(URGENT_RETRY)
    } else {
        wait
    }
}

impl Shared {
    fn publish(&self, credential: Credential, generation: u64) -> Current {
        let current = Current {
            expires_at: instant_after(Instant::now(), credential.lease_duration),
            credential: Arc::new(credential),
            generation,
            capped: false,
            since: std::time::Instant::now(),
        };
        self.current.send_replace(current.clone());
        current
    }

    /// Fetches a new credential unless `stale` has already been replaced; schedules the
    /// revocation of the replaced lease after the grace period.
    async fn reissue(&self, stale: u64) -> Result<Current, ClientError> {
        let _one_at_a_time = self.reissue.lock().await;
        let old = self.current.borrow().clone();
        if old.generation != stale {
            return Ok(old);
        }
        let fresh = self.client.credential(&self.path).await?;
        tracing::info!(path = %self.path, lease_id = %fresh.lease_id, replaced = %old.credential.lease_id, "new credential");
        let current = self.publish(fresh, old.generation + 1);
        if !self.options.revoke_replaced {
            return Ok(current);
        }
        revoke_after(
            self.client.clone(),
            old.credential.lease_id.clone(),
            self.options.grace,
        );
        Ok(current)
    }

    /// Renews the current lease, or replaces the credential when renewal cannot extend it or
    /// its lease (of generation `revoked`) was found revoked.
    async fn step(&self, revoked: Option<u64>) -> Result<(), ClientError> {
        let current = self.current.borrow().clone();
        if current.capped || revoked == Some(current.generation) {
            return self.reissue(current.generation).await.map(|_| ());
        }
        match self
            .client
            .renew(
                &current.credential.lease_id,
                current.credential.lease_duration,
            )
            .await
        {
            Ok(renewal) if renewal.lease_duration >= Duration::from_secs(1) => {
                self.current.send_if_modified(|c| {
                    if c.generation != current.generation {
                        return false;
                    }
                    c.expires_at = instant_after(Instant::now(), renewal.lease_duration);
                    c.capped = renewal.capped;
                    true
                });
                Ok(())
            }
            Ok(_) => self.reissue(current.generation).await.map(|_| ()),
            Err(e) if e.is_transient() => Err(e),
            Err(error) => {
                tracing::info!(%error, "lease cannot be renewed; fetching a new credential");
                self.reissue(current.generation).await.map(|_| ())
            }
        }
    }

    /// When the next step is due: at once if the current lease is the one found `revoked`,
    /// else two thirds into what is left of the lease.
    fn next_step_at(&self, revoked: Option<u64>) -> Instant {
        let current = self.current.borrow();
        if revoked == Some(current.generation) {
            return Instant::now();
        }
        let left = current.expires_at.saturating_duration_since(Instant::now());
        instant_after(Instant::now(), two_thirds(left))
    }

    /// When to look the lease up next (far away when checks are off, or set to zero).
    fn next_check_at(&self) -> Instant {
        let interval = self.options.check_interval.filter(|i| !i.is_zero());
        instant_after(Instant::now(), interval.unwrap_or(Duration::MAX))
    }

    /// The generation of the current credential if pgwarden says its lease is unknown or
    /// being revoked. Any other answer, or none within [`LOOKUP_TIMEOUT`], leaves it to the
    /// next renewal.
    async fn revoked_generation(&self) -> Option<u64> {
        let current = self.current.borrow().clone();
        let lease_id = &current.credential.lease_id;
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, self.client.lease_lookup(lease_id));
        let gone = match lookup.await {
            Ok(Ok(lookup)) => lookup.state == "revoking",
            Ok(Err(error)) if error.is_lease_not_found() => true,
            Ok(Err(error)) => {
                if !error.is_transient() {
                    tracing::warn!(path = %self.path, %lease_id, %error, "looking the lease up failed; its next renewal will tell whether it stands");
                }
                false
            }
            Err(_) => false,
        };
        if !gone {
            return None;
        }
        tracing::info!(path = %self.path, %lease_id, "pgwarden revoked the lease; fetching a new credential");
        Some(current.generation)
    }

    async fn run(self: Arc<Self>) {
        let mut failures = 0u32;
        let mut changed = self.current.subscribe();
        // The generation whose lease a check found revoked, until it is replaced.
        let mut revoked = None;
        let mut due = self.next_step_at(revoked);
        let mut check_at = self.next_check_at();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = tokio::time::sleep_until(check_at) => {
                    check_at = self.next_check_at();
                    // While renewals fail, their retries already ask pgwarden.
                    if failures > 0 {
                        continue;
                    }
                    if let Some(generation) = self.revoked_generation().await {
                        revoked = Some(generation);
                        due = self.next_step_at(revoked);
                    }
                    continue;
                }
                // Replaced from outside (a refresh after a rejected password): plan anew.
                Ok(()) = changed.changed() => {
                    due = self.next_step_at(revoked);
                    continue;
                }
            }
            match self.step(revoked).await {
                Ok(()) => {
                    failures = 0;
                    revoked = None;
                    changed.borrow_and_update();
                    due = self.next_step_at(revoked);
                    check_at = self.next_check_at();
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let left = self
                        .current
                        .borrow()
                        .expires_at
                        .saturating_duration_since(Instant::now());
                    let wait = retry_delay(failures, self.options.max_backoff, left);
                    tracing::warn!(%error, attempt = failures, valid_for_s = left.as_secs(), retry_in_ms = wait.as_millis() as u64,
                        "cannot refresh the credential; keeping the current one");
                    due = Instant::now() + wait;
                }
            }
        }
    }
}

/// Revokes `lease_id` after `grace` (for the connections or files still using it to move to
/// its replacement), in the background. A lease already gone is fine; a failure is logged,
/// and the lease then ends at its TTL.
pub fn revoke_after(client: Arc<Client>, lease_id: String, grace: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        match client.revoke(&lease_id).await {
            Ok(()) => tracing::debug!(%lease_id, "replaced lease revoked"),
            // Unknown to pgwarden: it already ended at its max TTL.
            Err(error) if error.is_unknown_lease() => {
                tracing::debug!(%lease_id, "replaced lease already gone")
            }
            Err(error) => {
                tracing::warn!(%lease_id, %error, "revoking a replaced lease failed; it will expire on its own")
            }
        }
    });
}

impl CredentialProvider {
    /// Fetches the first credential from `path` and starts keeping it fresh.
    pub async fn start(
        client: Arc<Client>,
        path: &str,
        options: ProviderOptions,
    ) -> Result<CredentialProvider, ClientError> {
        let first = client.credential(path).await?;
        let valid_for = first.lease_duration;
        Ok(CredentialProvider::adopt(
            client, path, first, valid_for, options,
        ))
    }

    /// Keeps fresh a credential obtained earlier (e.g. by an init container) whose lease has
    /// `valid_for` left, instead of issuing a second one.
    pub fn adopt(
        client: Arc<Client>,
        path: &str,
        credential: Credential,
        valid_for: Duration,
        options: ProviderOptions,
    ) -> CredentialProvider {
        let (current, _) = watch::channel(Current {
            expires_at: instant_after(Instant::now(), valid_for),
            credential: Arc::new(credential),
            generation: 0,
            capped: false,
            since: std::time::Instant::now(),
        });
        let shared = Arc::new(Shared {
            client,
            path: path.to_string(),
            options,
            current,
            reissue: Mutex::new(()),
        });
        let task = tokio::spawn(shared.clone().run());
        CredentialProvider { shared, task }
    }

    /// The credential to use now.
    pub fn current(&self) -> Current {
        self.shared.current.borrow().clone()
    }

    /// A receiver that sees every new credential (and every renewal).
    pub fn subscribe(&self) -> watch::Receiver<Current> {
        self.shared.current.subscribe()
    }

    /// Replaces the credential of generation `stale` now (e.g. after the database rejected its
    /// password); if it was already replaced, returns the newer one.
    pub async fn refresh(&self, stale: u64) -> Result<Current, ClientError> {
        self.shared.reissue(stale).await
    }

    /// Stops refreshing; with `revoke`, drops the current lease's user too.
    pub async fn stop(self, revoke: bool) -> Result<(), ClientError> {
        self.task.abort();
        if revoke {
            let lease_id = self.current().credential.lease_id.clone();
            self.shared.client.revoke(&lease_id).await?;
        }
        Ok(())
    }
}

impl CredentialProvider {
    /// Stops renewing and replacing the credential (the agent stopping), without revoking.
    pub fn halt(&self) {
        self.task.abort();
    }
}

impl Drop for CredentialProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_ttl_is_far_away_not_a_panic() {
        let now = Instant::now();
        let far = instant_after(now, Duration::from_secs(u64::MAX));
        assert!(far > instant_after(now, Duration::from_secs(99 * 365 * 24 * 3600)));
        assert_eq!(
            instant_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }

    #[test]
    fn renewal_comes_at_two_thirds() {
        assert_eq!(two_thirds(Duration::from_secs(3)), Duration::from_secs(2));
    }

    #[test]
    fn retries_are_quick_once_the_credential_is_gone() {
        let max = Duration::from_secs(30);
        // Broker down for a while: backoff has grown to the cap.
        let attempt = 10;
        let healthy = retry_delay(attempt, max, Duration::from_secs(3600));
        assert!(healthy >= Duration::from_secs(15), "{healthy:?}");
        for left in [
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(29),
        ] {
            assert!(
                retry_delay(attempt, max, left) <= URGENT_RETRY,
                "{left:?} left"
            );
        }
        // Early attempts are already quicker than the urgent cap.
        assert!(retry_delay(1, max, Duration::ZERO) <= URGENT_RETRY);
    }
}
