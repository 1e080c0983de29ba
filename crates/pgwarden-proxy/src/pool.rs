//! Pools of server connections, one per identity, role and database, each with its own
//! credential kept fresh by a [`CredentialProvider`]. A connection made with a replaced
//! credential is not reused: it closes when its client lets go of it, and once the last one
//! has closed the replaced lease is revoked.

use crate::metrics::Metrics;
use crate::reply::PgError;
use crate::upstream::{ConnectError, Connector, Server};
use parking_lot::Mutex;
use pgwarden_client::{Client, CredentialProvider};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a pool is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity's subject.
    pub subject: String,
    /// The credential path, e.g. `database/creds/appdb-readonly`.
    pub path: String,
    /// The database connected to.
    pub database: String,
}

/// An idle server connection.
struct Idle {
    server: Server,
    generation: u64,
    since: Instant,
}

/// The open connections of one credential generation and its lease.
struct Generation {
    lease_id: String,
    open: usize,
}

/// A pool of server connections for one [`PoolKey`].
pub struct Pool {
    key: PoolKey,
    client: Arc<Client>,
    provider: CredentialProvider,
    connector: Arc<Connector>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    generations: Mutex<HashMap<u64, Generation>>,
    /// The parameters the last server connection reported, for clients welcomed before they
    /// hold one (transaction pooling).
    parameters: Mutex<Vec<(String, String)>>,
    last_used: Mutex<Instant>,
}

/// A server connection taken from a pool; give it back with [`Pool::release`]. Dropped
/// without that, the connection is closed.
pub struct Checkout {
    /// The connection.
    pub server: Server,
    generation: u64,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `size` connections for `key`, whose credential `provider` keeps fresh
    /// through `client`.
    pub fn new(
        key: PoolKey,
        client: Arc<Client>,
        provider: CredentialProvider,
        connector: Arc<Connector>,
        metrics: Arc<Metrics>,
        size: usize,
    ) -> Arc<Pool> {
        let first = provider.current();
        let pool = Arc::new(Pool {
            key,
            client,
            provider,
            connector,
            metrics,
            permits: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::new()),
            generations: Mutex::new(HashMap::from([(
                first.generation,
                Generation {
                    lease_id: first.credential.lease_id.clone(),
                    open: 0,
                },
            )])),
            parameters: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
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

    /// The parameters of the server, as last reported.
    pub fn parameters(&self) -> Vec<(String, String)> {
        self.parameters.lock().clone()
    }

    /// A server connection: an idle one made with the current credential, else a new one;
    /// waits at most `wait` for a free slot.
    pub async fn acquire(&self, wait: Duration) -> Result<Checkout, PgError> {
        let started = Instant::now();
        let permit = match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                self.metrics.pool_wait_timeouts.inc();
                return Err(PgError::new(
                    "53300",
                    format!(
                        "no server connection free within {}s (pool of {:?} for {})",
                        wait.as_secs(),
                        self.key.path,
                        self.key.subject
                    ),
                ));
            }
        };
        self.metrics
            .pool_wait
            .observe(started.elapsed().as_secs_f64());
        *self.last_used.lock() = Instant::now();
        let current = self.provider.current();
        let reusable = {
            let mut idle = self.idle.lock();
            let mut found = None;
            while let Some(candidate) = idle.pop() {
                if candidate.generation == current.generation {
                    found = Some(candidate);
                    break;
                }
                self.closed(candidate.generation);
            }
            found
        };
        if let Some(idle) = reusable {
            return Ok(Checkout {
                server: idle.server,
                generation: idle.generation,
                _permit: permit,
            });
        }
        let mut current = current;
        let server = match self
            .connector
            .connect(&current.credential, &self.key.database)
            .await
        {
            Err(ConnectError::PasswordRefused(_)) => {
                // Revoked behind the proxy's back, or expired: a new credential, once.
                current = self
                    .provider
                    .refresh(current.generation)
                    .await
                    .map_err(|e| {
                        PgError::new("08006", format!("cannot get a new credential: {e}"))
                    })?;
                self.connector
                    .connect(&current.credential, &self.key.database)
                    .await
            }
            other => other,
        }
        .map_err(|e| PgError::new("08006", format!("cannot connect to the database: {e}")))?;
        self.metrics.server_connects.inc();
        self.metrics.servers.inc();
        *self.parameters.lock() = server.parameters.clone();
        self.generations
            .lock()
            .entry(current.generation)
            .or_insert_with(|| Generation {
                lease_id: current.credential.lease_id.clone(),
                open: 0,
            })
            .open += 1;
        Ok(Checkout {
            server,
            generation: current.generation,
            _permit: permit,
        })
    }

    /// Gives a connection back: kept for reuse if `reusable` and made with the current
    /// credential, else closed.
    pub fn release(&self, checkout: Checkout, reusable: bool) {
        *self.last_used.lock() = Instant::now();
        if reusable && checkout.generation == self.provider.current().generation {
            self.idle.lock().push(Idle {
                server: checkout.server,
                generation: checkout.generation,
                since: Instant::now(),
            });
        } else {
            self.closed(checkout.generation);
        }
    }

    /// Closes a connection taken out of a checkout without releasing it (it broke).
    pub fn discard(&self, checkout: Checkout) {
        self.closed(checkout.generation);
    }

    /// Counts a closed connection of `generation`; revokes a replaced lease whose last
    /// connection it was.
    fn closed(&self, generation: u64) {
        self.metrics.servers.dec();
        let current = self.provider.current().generation;
        let mut generations = self.generations.lock();
        let Some(entry) = generations.get_mut(&generation) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0
            && generation != current
            && let Some(done) = generations.remove(&generation)
        {
            self.revoke_later(done.lease_id);
        }
    }

    /// Revokes `lease_id` in the background.
    fn revoke_later(&self, lease_id: String) {
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            match client.revoke(&lease_id).await {
                Ok(()) => {
                    metrics.leases_revoked.inc();
                    tracing::info!(%lease_id, "replaced lease revoked after its last connection closed");
                }
                Err(error) => {
                    tracing::warn!(%lease_id, %error, "revoking a replaced lease failed; it ends at its TTL")
                }
            }
        });
    }

    /// Closes idle connections unused for `idle_timeout`; true when the pool itself has been
    /// unused that long with nothing open (it can go).
    pub fn sweep(&self, idle_timeout: Duration) -> bool {
        let now = Instant::now();
        let stale: Vec<Idle> = {
            let mut idle = self.idle.lock();
            let (stale, kept) = idle
                .drain(..)
                .partition(|i| now.duration_since(i.since) >= idle_timeout);
            *idle = kept;
            stale
        };
        for idle in stale {
            self.closed(idle.generation);
        }
        let open: usize = self.generations.lock().values().map(|g| g.open).sum();
        open == 0 && now.duration_since(*self.last_used.lock()) >= idle_timeout
    }

    /// Closes every idle connection and revokes every lease (at exit, or when the pool goes).
    pub async fn close(self: Arc<Self>) {
        let idle: Vec<Idle> = self.idle.lock().drain(..).collect();
        for connection in idle {
            self.closed(connection.generation);
        }
        let leases: Vec<String> = self
            .generations
            .lock()
            .drain()
            .map(|(_, g)| g.lease_id)
            .collect();
        for lease_id in leases {
            match self.client.revoke(&lease_id).await {
                Ok(()) => {
                    self.metrics.leases_revoked.inc();
                }
                Err(error) => {
                    tracing::warn!(%lease_id, %error, "revoking a lease at close failed; it ends at its TTL")
                }
            }
        }
    }
}

/// Follows the pool's credential: on each replacement, counts it, closes the idle
/// connections of the replaced one and revokes its lease if none is left open.
async fn follow_rotations(pool: std::sync::Weak<Pool>) {
    let Some(mut updates) = pool.upgrade().map(|p| p.provider.subscribe()) else {
        return;
    };
    let mut seen = updates.borrow().generation;
    while updates.changed().await.is_ok() {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let current = updates.borrow().clone();
        if current.generation == seen {
            continue;
        }
        seen = current.generation;
        pool.metrics.rotations.inc();
        let replaced: Vec<(u64, String, usize)> = {
            let mut generations = pool.generations.lock();
            generations
                .entry(current.generation)
                .or_insert_with(|| Generation {
                    lease_id: current.credential.lease_id.clone(),
                    open: 0,
                });
            generations
                .iter()
                .filter(|(g, _)| **g != current.generation)
                .map(|(g, e)| (*g, e.lease_id.clone(), e.open))
                .collect()
        };
        let stale: Vec<Idle> = {
            let mut idle = pool.idle.lock();
            let (stale, kept) = idle
                .drain(..)
                .partition(|i| i.generation != current.generation);
            *idle = kept;
            stale
        };
        for idle in stale {
            pool.closed(idle.generation);
        }
        for (generation, lease_id, open) in replaced {
            if open == 0 && pool.generations.lock().remove(&generation).is_some() {
                pool.revoke_later(lease_id);
            }
        }
    }
}
