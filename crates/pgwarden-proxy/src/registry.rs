//! The pools by key: made once per key even when many clients arrive together, swept when
//! unused, closed (their leases revoked) at exit.

use crate::pool::{Attached, Pool, PoolKey};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

type Slot = Arc<OnceCell<Arc<Pool>>>;

/// Every pool, by key.
#[derive(Default)]
pub struct Registry {
    pools: Mutex<HashMap<PoolKey, Slot>>,
}

impl Registry {
    /// A hold on the pool for `key`, made by `make` if there is none (one maker at a time per
    /// key; a failed one leaves no pool behind, so the next client tries again). The hold is
    /// taken under the registry's lock, so a sweep never removes a pool a client was given.
    pub async fn get<F, E>(&self, key: &PoolKey, make: impl Fn() -> F) -> Result<Attached, E>
    where
        F: Future<Output = Result<Arc<Pool>, E>>,
    {
        loop {
            let slot = self.pools.lock().entry(key.clone()).or_default().clone();
            match slot.get_or_try_init(&make).await {
                Err(error) => {
                    self.forget(key, &slot);
                    return Err(error);
                }
                Ok(pool) => {
                    if self
                        .pools
                        .lock()
                        .get(key)
                        .is_some_and(|s| Arc::ptr_eq(s, &slot))
                    {
                        return Ok(pool.attach());
                    }
                    // Swept meanwhile (its lease is being revoked): a new one.
                }
            }
        }
    }

    /// Removes `slot` from `key` if it is still there and was never filled.
    fn forget(&self, key: &PoolKey, slot: &Slot) {
        let mut pools = self.pools.lock();
        if pools
            .get(key)
            .is_some_and(|s| Arc::ptr_eq(s, slot) && !s.initialized())
        {
            pools.remove(key);
        }
    }

    /// Closes idle connections past `idle_timeout`, and removes (revoking their leases) the
    /// pools unused that long by any session. The revocations run in the background.
    pub fn sweep(&self, idle_timeout: Duration) {
        let unused: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock();
            let mut unused = Vec::new();
            pools.retain(|_, slot| match slot.get() {
                Some(pool) if pool.sweep(idle_timeout) => {
                    unused.push(pool.clone());
                    false
                }
                _ => true,
            });
            unused
        };
        for pool in unused {
            tracing::info!(path = %pool.key().path, subject = %pool.key().subject, "pool unused; its lease is revoked");
            tokio::spawn(async move { pool.close().await });
        }
    }

    /// Closes every pool (at exit), all at once.
    pub async fn close_all(&self) {
        let all: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .drain()
            .filter_map(|(_, slot)| slot.get().cloned())
            .collect();
        futures::future::join_all(all.iter().map(|pool| pool.close())).await;
    }
}
