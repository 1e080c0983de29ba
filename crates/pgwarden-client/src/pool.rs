//! A `deadpool` pool of `tokio-postgres` connections that always connect with the provider's
//! current credential. A connection opened with a replaced credential is not reused; a
//! connection attempt refused with SQLSTATE 28P01 (invalid password) fetches a new credential
//! and is retried once.

use crate::CredentialProvider;
use crate::provider::Current;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use secrecy::ExposeSecret;
use std::sync::Arc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// A pooled connection and the credential generation it was opened with.
pub struct PooledClient {
    client: Client,
    generation: u64,
}

impl std::ops::Deref for PooledClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The pool's connection factory.
pub struct PgwardenManager {
    provider: Arc<CredentialProvider>,
    base: tokio_postgres::Config,
}

/// A pool of connections that never use a stale password.
pub type PgPool = managed::Pool<PgwardenManager>;

/// A pool of at most `max_size` connections using `provider`'s credential; `base` supplies
/// everything but user, password, host, port and database (timeouts, application name…).
pub fn pool(
    provider: Arc<CredentialProvider>,
    base: tokio_postgres::Config,
    max_size: usize,
) -> Result<PgPool, managed::BuildError> {
    PgPool::builder(PgwardenManager { provider, base })
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
}

impl PgwardenManager {
    async fn connect(&self, current: &Current) -> Result<PooledClient, tokio_postgres::Error> {
        let c = &current.credential;
        let mut config = self.base.clone();
        config
            .host(&c.host)
            .port(c.port)
            .dbname(&c.database)
            .user(&c.username)
            .password(c.password.expose_secret());
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(PooledClient {
            client,
            generation: current.generation,
        })
    }
}

impl managed::Manager for PgwardenManager {
    type Type = PooledClient;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PooledClient, tokio_postgres::Error> {
        let current = self.provider.current();
        match self.connect(&current).await {
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => {
                tracing::info!(lease_id = %current.credential.lease_id, "password rejected; fetching a new credential");
                let fresh = match self.provider.refresh(current.generation).await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        tracing::warn!(%error, "could not fetch a new credential");
                        return Err(e);
                    }
                };
                self.connect(&fresh).await
            }
            other => other,
        }
    }

    async fn recycle(
        &self,
        conn: &mut PooledClient,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        if conn.generation != self.provider.current().generation {
            return Err(RecycleError::message("opened with a replaced credential"));
        }
        Ok(())
    }
}
