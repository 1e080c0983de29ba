//! The agent's life: log in, fetch or adopt each credential (or sign each RDS token, or read
//! each static role's password), write its files, then (as a sidecar) keep them fresh until
//! told to stop.

use crate::config::{Agent, AuthConfig, Delivery, Source};
use crate::files::{load_state, lock_state, render, save_state, write_atomically};
use crate::health::{Slot, Status};
use crate::on_change::fire;
use crate::rds::RdsKept;
use crate::refresh::{Refresher, keep, refresh_and_write, slot};
use crate::static_creds::StaticKept;
use pgwarden_client::{Auth, Client, ClientError, CredentialProvider, Current, ProviderOptions};
use secrecy::SecretString;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A lease found beside the files is adopted only if it has at least this long left.
const MIN_ADOPTABLE: Duration = Duration::from_secs(2);
/// First wait before trying a failed step again (writing the files, revoking a replaced
/// lease, reaching pgwarden at a restart); it doubles up to [`MAX_RETRY`].
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a failed step.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long the agent keeps trying to revoke a replaced lease (pgwarden unreachable, say)
/// before leaving it to its TTL.
const RETIRE_FOR: Duration = Duration::from_secs(3600);

/// Why the agent stopped; the message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(String);

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError(e.to_string())
    }
}

impl From<String> for AgentError {
    fn from(e: String) -> Self {
        AgentError(e)
    }
}

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write the files and keep them fresh until stopped.
    Sidecar,
    /// Write the files and exit (init container).
    Once,
}

fn client(
    address: &str,
    ca_file: Option<&std::path::Path>,
    auth: &AuthConfig,
) -> Result<Client, AgentError> {
    let auth = match auth {
        AuthConfig::Kubernetes {
            role,
            token_file,
            mount,
        } => Auth::Kubernetes {
            mount: mount.clone(),
            role: role.clone(),
            token_file: token_file.clone(),
        },
        AuthConfig::Token { token_file } => {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                AgentError(format!(
                    "cannot read the token file {}: {e}",
                    token_file.display()
                ))
            })?;
            Auth::Token(SecretString::from(token.trim().to_string()))
        }
    };
    Client::with_ca_file(address, auth, ca_file).map_err(|e| AgentError(e.to_string()))
}

/// One credential being kept fresh. Its provider does not revoke a replaced lease: the agent
/// does, a grace period after the files hold the new one, so files it could not rewrite never
/// hold a revoked password.
struct Kept {
    delivery: Delivery,
    provider: Arc<CredentialProvider>,
    client: Arc<Client>,
    grace: Duration,
    leases: Mutex<Leases>,
}

/// The leases the agent answers for, besides its provider's current one.
struct Leases {
    /// What the files hold.
    written: Written,
    /// Replaced leases not yet handed to [`Kept::retire`]: credentials replaced again before
    /// their files could be written, and the files' previous one until the application was
    /// told of the new.
    replaced: Vec<String>,
    /// Leases being revoked ([`Kept::retire`]): listed in the state beside the files until
    /// pgwarden has revoked them, so that an agent stopped meanwhile does not leave them
    /// alive.
    retiring: Vec<String>,
}

/// The credential the files hold.
struct Written {
    generation: u64,
    lease_id: String,
}

impl Kept {
    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every lease this credential holds alive: the files', the replaced ones, those being
    /// revoked, the current.
    fn all_leases(&self) -> Vec<String> {
        let mut all = self.retired("");
        all.push(self.provider.current().credential.lease_id.clone());
        all.sort();
        all.dedup();
        all
    }

    /// The leases other than `current` that may still be alive: the files', the replaced
    /// ones and those whose revocation may not be done yet.
    fn retired(&self, current: &str) -> Vec<String> {
        let leases = self.leases();
        let mut retired: Vec<String> = leases.replaced.clone();
        retired.push(leases.written.lease_id.clone());
        retired.extend(leases.retiring.iter().cloned());
        retired.retain(|id| id != current);
        retired.sort();
        retired.dedup();
        retired
    }

    /// Revokes `lease_ids` after the grace period, in the background, trying again (for up
    /// to [`RETIRE_FOR`]) until pgwarden has revoked each or no longer knows it; each stays
    /// among the leases being revoked until then.
    fn retire(self: &Arc<Self>, lease_ids: Vec<String>) {
        for lease_id in lease_ids {
            self.leases().retiring.push(lease_id.clone());
            let kept = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(kept.grace).await;
                let started = Instant::now();
                let mut failures = 0u32;
                loop {
                    match kept.client.revoke(&lease_id).await {
                        // Revoked, or already gone (ended at its TTL).
                        Ok(()) => break,
                        Err(error) if error.is_unknown_lease() => break,
                        Err(error) if started.elapsed() >= RETIRE_FOR => {
                            tracing::warn!(%lease_id, %error, "revoking a replaced lease keeps failing; it will expire on its own");
                            break;
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            let wait = pgwarden_core::backoff(failures, RETRY, MAX_RETRY);
                            tracing::warn!(%lease_id, %error, retry_in_s = wait.as_secs(), "revoking a replaced lease failed; trying again");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                kept.leases().retiring.retain(|id| *id != lease_id);
            });
        }
    }
}

/// Writes the state beside `delivery`'s files for `current` (and the leases it replaced that
/// may still be alive, `retired`), then every file: an agent stopped in between adopts
/// `current` and revokes the others.
fn write_files(
    delivery: &Delivery,
    current: &Current,
    retired: &[String],
) -> Result<Written, AgentError> {
    save_state(
        &delivery.state_file(),
        &delivery.path,
        &current.credential,
        retired,
    )?;
    for file in &delivery.files {
        write_atomically(&file.path, &render(file, &current.credential)?)?;
    }
    tracing::info!(path = %delivery.path, lease_id = %current.credential.lease_id, files = delivery.files.len(), "credential files written");
    Ok(Written {
        generation: current.generation,
        lease_id: current.credential.lease_id.clone(),
    })
}

/// A credential to deliver, whether its lease was issued just now (rather than adopted), and
/// the leases the state beside the files says may still be alive.
struct Obtained {
    provider: CredentialProvider,
    fresh: bool,
    retired: Vec<String>,
}

/// Adopts the lease recorded beside the files if it is still valid, else issues a new one.
async fn obtain(
    client: &Arc<Client>,
    config: &Delivery,
    options: ProviderOptions,
) -> Result<Obtained, ClientError> {
    let mut retired = Vec::new();
    if let Some(state) = load_state(&config.state_file(), &config.path) {
        retired = state.retired;
        let recorded = state.credential;
        match client.lookup(&recorded.lease_id).await {
            Ok(info) if info.ttl >= MIN_ADOPTABLE => {
                tracing::info!(path = %config.path, lease_id = %recorded.lease_id, valid_for_s = info.ttl.as_secs(), "adopting the existing lease");
                return Ok(Obtained {
                    provider: CredentialProvider::adopt(
                        client.clone(),
                        &config.path,
                        recorded,
                        info.ttl,
                        options,
                    ),
                    fresh: false,
                    retired,
                });
            }
            Ok(_) => {
                tracing::info!(lease_id = %recorded.lease_id, "the recorded lease is about to end; fetching a new one")
            }
            // pgwarden cannot say now: asked again rather than replaced.
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                tracing::info!(lease_id = %recorded.lease_id, %error, "the recorded lease cannot be adopted; fetching a new one")
            }
        }
        // Not adopted, it may still be alive: revoked with the others.
        retired.push(recorded.lease_id);
    }
    Ok(Obtained {
        provider: CredentialProvider::start(client.clone(), &config.path, options).await?,
        fresh: true,
        retired,
    })
}

/// Rewrites the files and tells the application whenever the credential is replaced, then
/// revokes the replaced leases after the grace period; keeps the health status current on
/// renewals too. A write that fails is tried again; meanwhile the files keep the previous
/// credential, whose lease is not revoked but left to run to its end.
async fn watch(kept: Arc<Kept>, status: Arc<Status>) {
    let mut changes = kept.provider.subscribe();
    let mut failures = 0u32;
    loop {
        let current = changes.borrow_and_update().clone();
        if kept.leases().written.generation != current.generation {
            let retired = kept.retired(&current.credential.lease_id);
            match write_files(&kept.delivery, &current, &retired) {
                Ok(now) => {
                    failures = 0;
                    {
                        let mut leases = kept.leases();
                        let previous = std::mem::replace(&mut leases.written, now);
                        leases.replaced.push(previous.lease_id);
                        let written = leases.written.lease_id.clone();
                        leases.replaced.retain(|id| *id != written);
                    }
                    status.set(Slot::of(&kept.delivery.path, &current));
                    if let Some(action) = &kept.delivery.on_change {
                        fire(action).await;
                    }
                    // The grace period starts once the application was told.
                    let replaced = std::mem::take(&mut kept.leases().replaced);
                    kept.retire(replaced);
                }
                Err(error) => {
                    {
                        let mut leases = kept.leases();
                        let lease_id = &current.credential.lease_id;
                        if !leases.replaced.contains(lease_id) {
                            leases.replaced.push(lease_id.clone());
                        }
                    }
                    failures = failures.saturating_add(1);
                    let wait = pgwarden_core::backoff(failures, RETRY, MAX_RETRY);
                    tracing::error!(path = %kept.delivery.path, %error, retry_in_s = wait.as_secs(), "cannot write the new credential; the previous files stay, their lease left to run to its end");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        changed = changes.changed() => if changed.is_err() { return } else { continue },
                    }
                }
            }
        } else {
            // A renewal of what the files hold.
            status.set(Slot::of(&kept.delivery.path, &current));
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Starts keeping one self-refreshed credential fresh, once the agent runs as a sidecar.
type StartKeeping = Box<dyn FnOnce(Arc<Status>) -> tokio::task::JoinHandle<()> + Send>;

/// Refreshes `refresher` once, writing its files, and returns how to keep it fresh.
async fn first_refresh<R: Refresher>(
    refresher: R,
    status: &Status,
) -> Result<StartKeeping, AgentError> {
    let first = refresh_and_write(&refresher, true).await?;
    status.set(slot(refresher.delivery(), first.expires_at));
    let refresher = Arc::new(refresher);
    Ok(Box::new(move |status| {
        tokio::spawn(keep(refresher, status, first))
    }))
}

/// Runs `attempt` until it succeeds. If `waits`, a transient failure (pgwarden unreachable,
/// or answering 5xx) is tried again with backoff, for `what`, until `shutdown` (then `None`).
async fn retrying<T, F, Fut>(
    waits: bool,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    what: &str,
    mut attempt: F,
) -> Result<Option<T>, AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(done) => return Ok(Some(done)),
            Err(error) if waits && error.is_transient() => {
                failures = failures.saturating_add(1);
                let wait = pgwarden_core::backoff(failures, RETRY, MAX_RETRY);
                tracing::warn!(%error, retry_in_s = wait.as_secs(), "{what} failed; trying again, the files keep what they hold");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.as_mut() => return Ok(None),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Runs the agent until `shutdown` resolves (sidecar) or the files are written (once).
///
/// A sidecar first takes its port, and each credential's state file's lock: a second agent on
/// the same configuration or the same files stops there, having written nothing. A sidecar
/// restarted beside files it recorded a lease for waits for pgwarden when it cannot reach it.
pub async fn run(
    agent: Agent,
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let Agent { config, deliveries } = agent;
    let mut shutdown = std::pin::pin!(shutdown);
    let listener = match mode {
        Mode::Sidecar => Some(
            tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| AgentError(format!("cannot listen on {}: {e}", config.listen)))?,
        ),
        Mode::Once => None,
    };
    let leased: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| d.source == Source::Broker)
        .collect();
    let _locks = leased
        .iter()
        .map(|d| lock_state(&d.state_file(), &d.path))
        .collect::<Result<Vec<_>, _>>()?;
    let waits = mode == Mode::Sidecar
        && leased
            .iter()
            .any(|d| load_state(&d.state_file(), &d.path).is_some());
    // The health status keeps one slot per credential path.
    let paths: std::collections::BTreeSet<&str> =
        deliveries.iter().map(|d| d.path.as_str()).collect();
    let status = Arc::new(Status::expecting(paths.len()));
    if let Some(listener) = listener {
        let router = crate::health::router(status.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
    let client = if deliveries.iter().any(|d| d.source.from_pgwarden()) {
        let (Some(address), Some(auth)) = (&config.address, &config.auth) else {
            return Err(AgentError(
                "address and auth: required when a credential has a path".into(),
            ));
        };
        let client = Arc::new(client(address, config.ca_file.as_deref(), auth)?);
        let logged_in = retrying(waits, &mut shutdown, "logging in to pgwarden", || {
            client.login()
        })
        .await?;
        if logged_in.is_none() {
            return Ok(());
        }
        Some(client)
    } else {
        None
    };
    let options = ProviderOptions {
        grace: config.grace_period,
        // The watcher revokes a replaced lease once the files hold its successor.
        revoke_replaced: false,
        // Zero: the provider looks nothing up.
        check_interval: Some(config.check_interval),
        ..ProviderOptions::default()
    };
    let mut kept = Vec::new();
    let mut refreshed = Vec::new();
    for delivery in deliveries {
        let client = match (&delivery.source, &client) {
            (Source::Rds(rds), _) => {
                let rds = RdsKept::new(delivery.clone(), rds.clone());
                refreshed.push(first_refresh(rds, &status).await?);
                continue;
            }
            (Source::Static, Some(client)) => {
                let role = StaticKept::new(delivery.clone(), client.clone());
                refreshed.push(first_refresh(role, &status).await?);
                continue;
            }
            (Source::Broker, Some(client)) => client,
            (Source::Broker | Source::Static, None) => {
                unreachable!("a client exists when a credential has a path")
            }
        };
        let fetched = retrying(waits, &mut shutdown, "fetching the credential", || {
            obtain(client, &delivery, options)
        })
        .await?;
        let Some(obtained) = fetched else {
            return Ok(());
        };
        let first = obtained.provider.current();
        let mut retired = obtained.retired;
        retired.retain(|id| *id != first.credential.lease_id);
        let written = match write_files(&delivery, &first, &retired) {
            Ok(written) => written,
            Err(error) => {
                let lease_id = &first.credential.lease_id;
                let recorded = load_state(&delivery.state_file(), &delivery.path)
                    .is_some_and(|state| state.credential.lease_id == *lease_id);
                // A lease recorded beside the files is the next start's to adopt or revoke (a
                // file may hold it already); one nothing records, nobody can use.
                if obtained.fresh
                    && !recorded
                    && let Err(revoke_error) = client.revoke(lease_id).await
                {
                    tracing::warn!(%lease_id, error = %revoke_error, "revoking the undelivered lease failed; it will expire on its own");
                }
                return Err(error);
            }
        };
        status.set(Slot::of(&delivery.path, &first));
        let credential = Arc::new(Kept {
            delivery,
            provider: Arc::new(obtained.provider),
            client: client.clone(),
            grace: config.grace_period,
            leases: Mutex::new(Leases {
                written,
                replaced: Vec::new(),
                retiring: Vec::new(),
            }),
        });
        if mode == Mode::Sidecar && !retired.is_empty() {
            // Leases an earlier agent replaced but stopped before revoking (an init
            // container's run leaves them to the sidecar, in the state). The files held one
            // of them until now, perhaps: the application is told before the grace period.
            if let Some(action) = &credential.delivery.on_change {
                fire(action).await;
            }
            credential.retire(retired);
        }
        kept.push(credential);
    }
    if mode == Mode::Once {
        return Ok(());
    }
    let credentials = kept.len() + refreshed.len();
    // Each watcher starts from what the files hold: a credential replaced meanwhile (while
    // the others were set up) is written at once.
    let watchers: Vec<_> = kept
        .iter()
        .map(|k| tokio::spawn(watch(k.clone(), status.clone())))
        .chain(refreshed.into_iter().map(|start| start(status.clone())))
        .collect();
    tracing::info!(credentials, listen = %config.listen, "agent ready");
    shutdown.await;
    // No new lease while stopping: none would be written, or revoked.
    for k in &kept {
        k.provider.halt();
    }
    for w in &watchers {
        w.abort();
    }
    if let Some(client) = client.filter(|_| config.revoke_on_shutdown && !kept.is_empty()) {
        tracing::info!(
            grace_s = config.grace_period.as_secs(),
            "revoking leases after the grace period"
        );
        tokio::time::sleep(config.grace_period).await;
        for lease_id in kept.iter().flat_map(|k| k.all_leases()) {
            match client.revoke(&lease_id).await {
                Ok(()) => {}
                // Already gone (ended, or revoked after its grace period).
                Err(error) if error.is_unknown_lease() => {}
                Err(error) => {
                    tracing::warn!(%lease_id, %error, "revoking on shutdown failed; the lease will expire on its own")
                }
            }
        }
    }
    Ok(())
}
