//! The pools by key: made once per key even when many clients arrive together, swept when
//! unused, closed (their leases revoked) at exit.

use crate::pool::{Pool, PoolKey};
use crate::reply::PgError;
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
    /// The pool for `key`, made by `make` if there is none (one maker at a time per key; a
    /// failed one leaves no pool behind, so the next client tries again).
    pub async fn get<F>(
        &self,
        key: &PoolKey,
        make: impl FnOnce() -> F,
    ) -> Result<Arc<Pool>, PgError>
    where
        F: Future<Output = Result<Arc<Pool>, PgError>>,
    {
        let slot = self.pools.lock().entry(key.clone()).or_default().clone();
        let made = slot.get_or_try_init(make).await.cloned();
        if made.is_err() {
            let mut pools = self.pools.lock();
            if pools
                .get(key)
                .is_some_and(|s| Arc::ptr_eq(s, &slot) && !s.initialized())
            {
                pools.remove(key);
            }
        }
        made
    }

    /// Closes idle connections past `idle_timeout`, and removes (revoking their leases) the
    /// pools unused that long.
    pub async fn sweep(&self, idle_timeout: Duration) {
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
            pool.close().await;
        }
    }

    /// Closes every pool (at exit).
    pub async fn close_all(&self) {
        let all: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .drain()
            .filter_map(|(_, slot)| slot.get().cloned())
            .collect();
        for pool in all {
            pool.close().await;
        }
    }
}
