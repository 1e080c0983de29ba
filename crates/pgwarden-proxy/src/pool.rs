//! Pools of server connections, one per principal (subject and groups) and role, each with
//! its own credential kept fresh by a [`CredentialProvider`]. A connection made with a
//! replaced credential is not reused: it closes when its client lets go of it, and once the
//! last one has closed the replaced lease is revoked.
//!
//! Every count lives in one [`State`] under one lock: a connection is counted from before it
//! is made (so a rotation meanwhile cannot revoke the lease it is being made with) until it
//! closes, and the generation in force is read under the same lock that retires old ones.

use crate::config::TargetSessionAttrs;
use crate::metrics::Metrics;
use crate::reply::PgError;
use crate::upstream::{ConnectError, Connector, Server};
use futures::FutureExt;
use parking_lot::Mutex;
use pgwarden_client::{Client, Credential, CredentialProvider, Current};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a new credential refused by a server is tried again before it counts as
/// revoked: a standby replays the user's creation a little after the primary commits it.
const REPLICATION_GRACE: Duration = Duration::from_secs(5);

/// What a pool is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity's subject.
    pub subject: String,
    /// Its groups, sorted.
    pub groups: Vec<String>,
    /// The credential path, e.g. `database/creds/appdb-readonly`.
    pub path: String,
}

/// An idle server connection.
struct Idle {
    server: Server,
    generation: u64,
    since: Instant,
}

/// The lease of one credential generation and its connections (open or being opened).
struct Generation {
    lease_id: String,
    open: usize,
}

/// Everything that changes, under one lock.
struct State {
    /// The credential generation new connections use.
    current: u64,
    generations: HashMap<u64, Generation>,
    idle: Vec<Idle>,
    /// The parameters the last server connection reported, for clients welcomed before they
    /// hold one (transaction pooling).
    parameters: Vec<(String, String)>,
    /// Client sessions using the pool.
    sessions: usize,
    last_used: Instant,
}

impl State {
    /// Takes note of `current` (the provider's credential): a newer generation becomes the
    /// one in force, idle connections of older ones close, and the older leases no
    /// connection uses any more are returned for revocation.
    fn observe(&mut self, current: &Current, metrics: &Metrics) -> Vec<String> {
        if current.generation <= self.current && self.generations.contains_key(&current.generation)
        {
            return Vec::new();
        }
        if current.generation > self.current {
            metrics.rotations.inc();
            self.current = current.generation;
        }
        self.generations
            .entry(current.generation)
            .or_insert_with(|| Generation {
                lease_id: current.credential.lease_id.clone(),
                open: 0,
            });
        let current = self.current;
        let stale: Vec<u64> = self
            .idle
            .iter()
            .filter(|i| i.generation != current)
            .map(|i| i.generation)
            .collect();
        self.idle.retain(|i| i.generation == current);
        let mut retired = Vec::new();
        for generation in stale {
            retired.extend(self.close_one(generation, metrics));
        }
        let unused: Vec<u64> = self
            .generations
            .iter()
            .filter(|(g, e)| **g != current && e.open == 0)
            .map(|(g, _)| *g)
            .collect();
        for generation in unused {
            retired.extend(self.generations.remove(&generation).map(|g| g.lease_id));
        }
        retired
    }

    /// Counts a closed connection of `generation`; the lease to revoke if it was the last
    /// connection of a replaced credential.
    fn close_one(&mut self, generation: u64, metrics: &Metrics) -> Option<String> {
        metrics.servers.dec();
        let entry = self.generations.get_mut(&generation)?;
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0 && generation != self.current {
            return self.generations.remove(&generation).map(|g| g.lease_id);
        }
        None
    }
}

/// A pool of server connections for one [`PoolKey`].
pub struct Pool {
    key: PoolKey,
    client: Arc<Client>,
    provider: CredentialProvider,
    connector: Arc<Connector>,
    attrs: TargetSessionAttrs,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

/// A server connection taken from a pool; give it back with [`Checkout::release`]. Dropped
/// without that, the connection closes and is counted as closed.
pub struct Checkout {
    /// The connection.
    pub server: Option<Server>,
    generation: u64,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
    /// The connection (present until released or dropped).
    pub fn server(&mut self) -> &mut Server {
        self.server
            .as_mut()
            .expect("a checkout holds its connection until it is released")
    }

    /// Gives the connection back: kept for reuse if `reusable` and made with the credential
    /// in force, else closed.
    pub fn release(mut self, reusable: bool) {
        let Some(server) = self.server.take() else {
            return;
        };
        let pool = self.pool.clone();
        let retired = {
            let mut state = pool.state.lock();
            state.last_used = Instant::now();
            if reusable && self.generation == state.current {
                state.idle.push(Idle {
                    server,
                    generation: self.generation,
                    since: Instant::now(),
                });
                None
            } else {
                state.close_one(self.generation, &pool.metrics)
            }
        };
        pool.revoke_later(retired);
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if self.server.take().is_some() {
            let retired = self
                .pool
                .state
                .lock()
                .close_one(self.generation, &self.pool.metrics);
            self.pool.revoke_later(retired);
        }
    }
}

/// A client session's hold on a pool: the pool is not swept while any exists.
pub struct Attached(Arc<Pool>);

impl std::ops::Deref for Attached {
    type Target = Arc<Pool>;
    fn deref(&self) -> &Arc<Pool> {
        &self.0
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.sessions = state.sessions.saturating_sub(1);
        state.last_used = Instant::now();
    }
}

impl Pool {
    /// A pool of at most `size` connections for `key`, whose credential `provider` keeps fresh
    /// through `client`, made by `connector` on hosts that fit `attrs`.
    pub fn new(
        key: PoolKey,
        client: Arc<Client>,
        provider: CredentialProvider,
        (connector, attrs): (Arc<Connector>, TargetSessionAttrs),
        metrics: Arc<Metrics>,
        size: usize,
    ) -> Arc<Pool> {
        let first = provider.current();
        let pool = Arc::new(Pool {
            key,
            client,
            provider,
            connector,
            attrs,
            metrics,
            permits: Arc::new(Semaphore::new(size)),
            state: Mutex::new(State {
                current: first.generation,
                generations: HashMap::from([(
                    first.generation,
                    Generation {
                        lease_id: first.credential.lease_id.clone(),
                        open: 0,
                    },
                )]),
                idle: Vec::new(),
                parameters: Vec::new(),
                sessions: 0,
                last_used: Instant::now(),
            }),
        });
        tokio::spawn(follow_rotations(Arc::downgrade(&pool)));
        pool
    }

    /// What this pool is for.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The pgwarden client acting as this pool's identity.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The credential in force.
    pub fn credential(&self) -> Arc<Credential> {
        self.provider.current().credential
    }

    /// The parameters of the server, as last reported (empty before the first connection).
    pub fn parameters(&self) -> Vec<(String, String)> {
        self.state.lock().parameters.clone()
    }

    /// A session's hold on this pool (see [`Attached`]).
    pub(crate) fn attach(self: &Arc<Self>) -> Attached {
        let mut state = self.state.lock();
        state.sessions += 1;
        state.last_used = Instant::now();
        Attached(self.clone())
    }

    /// A free slot, if there is one now.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A free slot, waiting at most `wait` for one (the wait is measured); cancelling the
    /// wait changes nothing.
    pub async fn wait_for_permit(&self, wait: Duration) -> Result<OwnedSemaphorePermit, PgError> {
        let started = Instant::now();
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.metrics
                    .pool_wait
                    .observe(started.elapsed().as_secs_f64());
                Ok(permit)
            }
            _ => {
                self.metrics.pool_wait_timeouts.inc();
                Err(PgError::new(
                    "53300",
                    format!(
                        "no server connection free within {:?} (pool of {:?} for {})",
                        wait, self.key.path, self.key.subject
                    ),
                ))
            }
        }
    }

    /// A server connection: an idle one made with the credential in force (if it is still
    /// healthy), else a new one; waits at most `wait` for a free slot.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Checkout, PgError> {
        let permit = match self.try_permit() {
            Some(permit) => permit,
            None => self.wait_for_permit(wait).await?,
        };
        self.acquire_with(permit).await
    }

    /// A server connection for the free slot `permit`: an idle one made with the credential
    /// in force (if it is still healthy), else a new one.
    pub async fn acquire_with(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Checkout, PgError> {
        let mut refreshed = false;
        loop {
            let current = self.provider.current();
            let (idle, generation, retired) = {
                let mut state = self.state.lock();
                state.last_used = Instant::now();
                let mut retired = state.observe(&current, &self.metrics);
                let generation = state.current;
                let mut found = None;
                while let Some(mut idle) = state.idle.pop() {
                    if healthy(&mut idle.server) {
                        found = Some(idle);
                        break;
                    }
                    // Closed by the server while idle (a timeout, a restart): another one.
                    retired.extend(state.close_one(idle.generation, &self.metrics));
                }
                if found.is_none() {
                    // Counted before it is made: a rotation meanwhile keeps its lease.
                    if let Some(entry) = state.generations.get_mut(&generation) {
                        entry.open += 1;
                    }
                    self.metrics.servers.inc();
                }
                (found, generation, retired)
            };
            self.revoke_later_all(retired);
            if let Some(idle) = idle {
                return Ok(self.checkout(idle.server, idle.generation, permit));
            }
            let credential = current.credential.clone();
            match self.connector.connect(&credential, self.attrs).await {
                Ok(server) => {
                    self.metrics.server_connects.inc();
                    self.state.lock().parameters = server.parameters.clone();
                    return Ok(self.checkout(server, generation, permit));
                }
                Err(error) => {
                    // Not made after all.
                    let retired = self.state.lock().close_one(generation, &self.metrics);
                    self.revoke_later(retired);
                    if !matches!(error, ConnectError::CredentialRefused(_)) {
                        return Err(error.into());
                    }
                    if current.since.elapsed() < REPLICATION_GRACE {
                        // A user just made on the primary may not have reached a standby yet.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    if refreshed {
                        return Err(error.into());
                    }
                    // Revoked behind the proxy's back, or expired: a new credential, once.
                    refreshed = true;
                    self.provider
                        .refresh(current.generation)
                        .await
                        .map_err(|e| {
                            let (reason, error) = crate::login::refused_credential(&self.key, e);
                            self.metrics.refused(reason);
                            error
                        })?;
                }
            }
        }
    }

    fn checkout(
        self: &Arc<Self>,
        server: Server,
        generation: u64,
        permit: OwnedSemaphorePermit,
    ) -> Checkout {
        Checkout {
            server: Some(server),
            generation,
            pool: self.clone(),
            _permit: permit,
        }
    }

    /// Revokes `lease_id`, if any, in the background.
    fn revoke_later(&self, lease_id: Option<String>) {
        self.revoke_later_all(lease_id.into_iter().collect());
    }

    /// Revokes `leases` in the background.
    fn revoke_later_all(&self, leases: Vec<String>) {
        for lease_id in leases {
            let (client, metrics) = (self.client.clone(), self.metrics.clone());
            tokio::spawn(async move { revoke(&client, &metrics, &lease_id).await });
        }
    }

    /// Closes idle connections unused for `idle_timeout`; true when the pool itself has been
    /// unused that long, with no session and nothing open (it can go).
    pub fn sweep(&self, idle_timeout: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        let stale: Vec<u64> = state
            .idle
            .iter()
            .filter(|i| now.duration_since(i.since) >= idle_timeout)
            .map(|i| i.generation)
            .collect();
        state
            .idle
            .retain(|i| now.duration_since(i.since) < idle_timeout);
        let mut retired = Vec::new();
        for generation in stale {
            retired.extend(state.close_one(generation, &self.metrics));
        }
        let open: usize = state.generations.values().map(|g| g.open).sum();
        let unused =
            state.sessions == 0 && open == 0 && now.duration_since(state.last_used) >= idle_timeout;
        drop(state);
        self.revoke_later_all(retired);
        unused
    }

    /// Closes every idle connection and revokes every lease, all at once (at exit, or when
    /// the pool goes).
    pub async fn close(&self) {
        let leases: Vec<String> = {
            let mut state = self.state.lock();
            let idle = state.idle.drain(..).count();
            self.metrics
                .servers
                .dec_by(i64::try_from(idle).unwrap_or(i64::MAX));
            state.generations.drain().map(|(_, g)| g.lease_id).collect()
        };
        let revocations = leases
            .iter()
            .map(|lease_id| revoke(&self.client, &self.metrics, lease_id));
        futures::future::join_all(revocations).await;
    }
}

/// Revokes `lease_id` (replaced, or the pool's at close), counting it; a failure is logged,
/// and the lease then ends at its TTL.
async fn revoke(client: &Client, metrics: &Metrics, lease_id: &str) {
    match client.revoke(lease_id).await {
        Ok(()) => {
            metrics.leases_revoked.inc();
            tracing::info!(%lease_id, "lease revoked");
        }
        Err(error) => {
            tracing::warn!(%lease_id, %error, "revoking a lease failed; it ends at its TTL")
        }
    }
}

/// Whether an idle connection can be handed out: nothing arrived on it meanwhile (not its
/// close, not a message that belongs to nobody).
fn healthy(server: &mut Server) -> bool {
    let mut byte = [0u8; 1];
    server.stream.read(&mut byte).now_or_never().is_none()
}

/// Follows the pool's credential: on each replacement, the state takes note (closing idle
/// connections of the replaced one, revoking its lease if none is left open).
async fn follow_rotations(pool: std::sync::Weak<Pool>) {
    let Some(mut updates) = pool.upgrade().map(|p| p.provider.subscribe()) else {
        return;
    };
    while updates.changed().await.is_ok() {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let current = updates.borrow().clone();
        let retired = pool.state.lock().observe(&current, &pool.metrics);
        pool.revoke_later_all(retired);
    }
}

impl From<ConnectError> for PgError {
    fn from(error: ConnectError) -> PgError {
        match error {
            // The database's own refusal (e.g. 3D000, 53300) passes through as it was.
            ConnectError::Server { code, message } => PgError::new(&code, message),
            other => PgError::new("08006", format!("cannot connect to the database: {other}")),
        }
    }
}
