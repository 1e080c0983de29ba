//! pgwarden tokens: issued at login, stored only as SHA-256 hashes and looked up by hash (so
//! lookup timing says nothing about a token), renewable up to their max TTL, revocable (which
//! revokes the leases they created).

use crate::error::ServerError;
use pgwarden_core::lease::extend;
use pgwarden_core::token::{generate_accessor, generate_token, hash_token};
use pgwarden_core::{Identity, Renewal, TokenRecord, Ttl};
use pgwarden_store::Store;
use secrecy::SecretString;
use std::sync::Arc;
use time::OffsetDateTime;

/// Issues and checks tokens.
pub struct Tokens {
    store: Arc<dyn Store>,
}

impl Tokens {
    /// Tokens kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Tokens {
        Tokens { store }
    }

    /// A new token for `identity`, logged in through `mount`/`role`.
    pub async fn issue(
        &self,
        identity: Identity,
        mount: &str,
        role: &str,
        ttl: Ttl,
        max_ttl: Ttl,
    ) -> Result<(SecretString, TokenRecord), ServerError> {
        let now = OffsetDateTime::now_utc();
        let (token, hash) = generate_token();
        let record = TokenRecord {
            accessor: generate_accessor(),
            hash,
            identity,
            mount: mount.to_string(),
            role: role.to_string(),
            issued_at: now,
            expires_at: ttl.after(now),
            max_expires_at: max_ttl.after(now),
            ttl,
        };
        self.store.insert_token(&record).await?;
        Ok((token, record))
    }

    /// The live token `token`, or `permission denied`. An expired token is forgotten (its
    /// leases live on to their own TTL).
    pub async fn authenticate(&self, token: &str) -> Result<TokenRecord, ServerError> {
        let hash = hash_token(token);
        let record = self
            .store
            .token_by_hash(&hash)
            .await?
            .ok_or(ServerError::PermissionDenied)?;
        if OffsetDateTime::now_utc() >= record.expires_at {
            self.store.delete_token(&record.accessor).await?;
            return Err(ServerError::PermissionDenied);
        }
        Ok(record)
    }

    /// The token with `accessor`.
    pub async fn by_accessor(&self, accessor: &str) -> Result<TokenRecord, ServerError> {
        self.store
            .token_by_accessor(accessor)
            .await?
            .ok_or_else(|| ServerError::BadRequest(format!("no token with accessor {accessor:?}")))
    }

    /// Extends `record` by `increment` (zero: its TTL), never past its max TTL.
    pub async fn renew(
        &self,
        record: &mut TokenRecord,
        increment: Ttl,
    ) -> Result<Renewal, ServerError> {
        let now = OffsetDateTime::now_utc();
        let renewal = extend(now, increment, record.ttl, record.max_expires_at);
        self.store
            .set_token_expiry(&record.accessor, renewal.expires_at)
            .await?;
        record.expires_at = renewal.expires_at;
        Ok(renewal)
    }

    /// Forgets tokens that have expired.
    pub async fn purge_expired(&self) -> Result<usize, ServerError> {
        Ok(self
            .store
            .delete_expired_tokens(OffsetDateTime::now_utc())
            .await?)
    }
}
