//! Integration with `deadpool-postgres`: a pool whose new connections always use the
//! provider's current credential. A connection attempt refused with SQLSTATE 28P01 (invalid
//! password) fetches a new credential (at most one per 5 s) and is retried once, and a pooled
//! connection opened before the credential was replaced is not handed out again.

use crate::CredentialProvider;
use crate::provider::Current;
use deadpool::managed::{Hook, HookError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use secrecy::ExposeSecret;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, Error, NoTls};

/// Least time between two new credentials fetched because a password was rejected: a
/// database that keeps rejecting new ones (a connection pooler's stale password cache, a
/// replica not yet caught up) would otherwise get a new user per connection attempt.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Opens connections with the provider's credential (deadpool-postgres's `Connect`).
struct ProviderConnect {
    provider: Arc<CredentialProvider>,
    /// When a rejected password last fetched a new credential.
    last_refresh: std::sync::Mutex<Option<Instant>>,
}

impl ProviderConnect {
    /// Whether a rejected password may fetch a new credential now (and notes that it does).
    fn may_refresh(&self) -> bool {
        let mut last = self
            .last_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

async fn connect(base: &Config, current: &Current) -> Result<(Client, JoinHandle<()>), Error> {
    let c = &current.credential;
    let mut config = base.clone();
    config
        .host(&c.host)
        .port(c.port)
        .dbname(&c.database)
        .user(&c.username)
        .password(c.password.expose_secret());
    let (client, connection) = config.connect(NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

impl deadpool_postgres::Connect for ProviderConnect {
    fn connect(
        &self,
        base: &Config,
    ) -> Pin<Box<dyn Future<Output = Result<(Client, JoinHandle<()>), Error>> + Send + '_>> {
        let base = base.clone();
        Box::pin(async move {
            let current = self.provider.current();
            match connect(&base, &current).await {
                Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                    // Replaced meanwhile (another connection's refusal did it): the new one.
                    let newer = self.provider.current();
                    if newer.generation != current.generation {
                        return connect(&base, &newer).await;
                    }
                    if !self.may_refresh() {
                        tracing::warn!(lease_id = %current.credential.lease_id, "password rejected again soon after a new credential; not fetching another yet");
                        return Err(e);
                    }
                    tracing::info!(lease_id = %current.credential.lease_id, "password rejected; fetching a new credential");
                    match self.provider.refresh(current.generation).await {
                        Ok(fresh) => connect(&base, &fresh).await,
                        Err(error) => {
                            tracing::warn!(%error, "could not fetch a new credential");
                            Err(e)
                        }
                    }
                }
                other => other,
            }
        })
    }
}

/// A `deadpool-postgres` pool of at most `max_size` connections using `provider`'s credential;
/// `base` supplies everything but user, password, host, port and database (timeouts,
/// application name…).
pub fn pool(
    provider: Arc<CredentialProvider>,
    base: Config,
    max_size: usize,
) -> Result<Pool, deadpool_postgres::BuildError> {
    let manager = Manager::from_connect(
        base,
        ProviderConnect {
            provider: provider.clone(),
            last_refresh: std::sync::Mutex::new(None),
        },
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .pre_recycle(Hook::sync_fn(move |_, metrics| {
            if metrics.created < provider.current().since {
                return Err(HookError::message("opened with a replaced credential"));
            }
            Ok(())
        }))
        .build()
}
