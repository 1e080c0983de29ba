//! Rust client for pgwarden.
//!
//! - [`Client`]: the typed HTTP API (login, credentials, renew, revoke, lookup, list; access
//!   requests and the audit log).
//! - [`CredentialProvider`]: keeps one credential fresh in the background — renews it at two
//!   thirds of its duration while renewal can extend it, fetches a new one before the old one
//!   reaches its max TTL, revokes the old one after a grace period — and notifies on change.
//! - [`pool`]: a `deadpool-postgres` pool whose connections always use the current credential,
//!   retrying once with a fresh one when the database rejects a password.

mod api;
mod error;
mod paths;
mod pool;
mod provider;
mod requests;

pub use api::{Auth, Client, Credential, LeaseInfo, Renewal};
pub use error::ClientError;
pub use pool::pool;
pub use provider::{
    CHECK_INTERVAL, CredentialProvider, Current, ProviderOptions, instant_after, revoke_after,
};
pub use requests::AuditQuery;
