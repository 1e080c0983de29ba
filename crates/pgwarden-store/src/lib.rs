//! pgwarden's state: the [`Store`] trait, its embedded SQLite backend and its shared
//! PostgreSQL backend.
//!
//! The store holds leases (so no issued user is ever forgotten, even across crashes) and the
//! roles and connections written through the API. Secrets arrive already sealed; lease
//! passwords are never stored.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing
    )
)]

mod encoding;
mod migrations;
mod postgres;
mod sqlite;
mod writer;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use pgwarden_core::{
    AccessRequest, AuditEvent, AuditRecord, ChainKey, Lease, LeaseState, RoleDef, TokenRecord,
};
use time::OffsetDateTime;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or written.
    #[error("state store {path}: {source}")]
    Open {
        /// The file's path.
        path: String,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database file could not be created or made private (mode 0600).
    #[error("state store {path}: {source}")]
    File {
        /// The file's path.
        path: String,
        /// The filesystem error.
        source: std::io::Error,
    },
    /// A query failed. (`From<rusqlite::Error>` is in `sqlite.rs`: it turns a stored value
    /// that does not decode into [`StoreError::Corrupt`].)
    #[error("state store: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A value could not be encoded for storage.
    #[error("state store cannot encode a {what}: {source}")]
    Encode {
        /// What kind of value.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A batch of writes could not be committed (a full or failing disk); none of it was
    /// stored.
    #[error("state store could not commit: {0}")]
    Commit(String),
    /// The state database cannot be reached (or is restarting); the request may be retried
    /// once it is back.
    #[error("state database unavailable: {0}")]
    Unavailable(String),
    /// The state database refused a statement.
    #[error("state database: {0}")]
    Refused(String),
    /// A copy's destination already holds state.
    #[error(
        "the destination already holds state (leases, tokens, roles or connections); \
         copy only into an empty one"
    )]
    NotEmpty,
    /// The store's writer has stopped.
    #[error("state store is closed")]
    Closed,
    /// A stored row could not be read back.
    #[error("state store holds a corrupt {what}: {reason}")]
    Corrupt {
        /// What kind of row.
        what: &'static str,
        /// Why it cannot be read.
        reason: String,
    },
}

/// How durable a lease update must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced to disk before the call returns: a revocation that failed, or one promised but
    /// not done yet (`sync: false`), whose loss would bring the lease back active.
    Synced,
    /// Survives a crash of pgwarden, but not necessarily a power cut (or a crash of a shared
    /// state database): for changes whose loss errs on the safe side (an activation or
    /// renewal lost ends a credential early; a mark lost during a revocation that goes on to
    /// finish changes nothing).
    Relaxed,
}

/// What a write or deletion of a connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionChange {
    /// Done.
    Changed,
    /// There was no such connection (a deletion).
    Missing,
    /// The stored connection is not the one the writer read (another replica changed it):
    /// nothing was changed.
    Stale,
    /// This many leases have users through it: nothing was changed.
    UsedBy(u64),
}

/// Which stored connection a change applies to, checked under the connection's lock.
pub(crate) enum Expect {
    /// Whichever there is.
    Any,
    /// Only one with this URL (`None`: only if there is none).
    Url(Option<String>),
}

impl Expect {
    /// Whether a stored connection with `url` (`None`: none) is the one expected.
    pub(crate) fn holds(&self, url: Option<&str>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Url(expected) => expected.as_deref() == url,
        }
    }
}

/// What [`copy_state`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Leases, in whatever state.
    pub leases: usize,
    /// Login tokens (hashes only).
    pub tokens: usize,
    /// Roles written through the API.
    pub roles: usize,
    /// Connections written through the API (passwords still sealed with the same key).
    pub connections: usize,
    /// Access requests.
    pub requests: usize,
    /// Static roles (passwords still sealed with the same key).
    pub static_roles: usize,
    /// Audit records, hashes unchanged.
    pub audit_records: usize,
}

/// Copies everything in `from` into `to`, which must hold nothing yet (so nothing is merged or
/// overwritten by mistake): leases, tokens, the definitions written through the API, access
/// requests and the audit chain (records copied as they are, so it still verifies).
pub async fn copy_state(from: &dyn Store, to: &dyn Store) -> Result<Copied, StoreError> {
    let empty = to.all_leases().await?.is_empty()
        && to.all_tokens().await?.is_empty()
        && to.roles().await?.is_empty()
        && to.connections().await?.is_empty()
        && to.all_requests().await?.is_empty()
        && to.static_roles().await?.is_empty()
        && to.audit_records(&AuditQuery::all(1)).await?.is_empty();
    if !empty {
        return Err(StoreError::NotEmpty);
    }
    let mut copied = Copied::default();
    for (mount, role) in from.roles().await? {
        to.put_role(&mount, &role).await?;
        copied.roles = copied.roles.saturating_add(1);
    }
    for (mount, connection) in from.connections().await? {
        to.put_connection(&mount, &connection).await?;
        copied.connections = copied.connections.saturating_add(1);
    }
    for token in from.all_tokens().await? {
        to.insert_token(&token).await?;
        copied.tokens = copied.tokens.saturating_add(1);
    }
    for lease in from.all_leases().await? {
        to.insert_lease(&lease).await?;
        copied.leases = copied.leases.saturating_add(1);
    }
    for role in from.static_roles().await? {
        to.insert_static_role(&role).await?;
        copied.static_roles = copied.static_roles.saturating_add(1);
    }
    for request in from.all_requests().await? {
        to.insert_request(&request).await?;
        copied.requests = copied.requests.saturating_add(1);
    }
    let mut page = AuditQuery::all(AUDIT_COPY_PAGE);
    loop {
        let records = from.audit_records(&page).await?;
        let Some(last) = records.last() else { break };
        page.after = last.seq;
        to.import_audit(&records).await?;
        copied.audit_records = copied.audit_records.saturating_add(records.len());
    }
    Ok(copied)
}

/// Audit records copied per round trip.
const AUDIT_COPY_PAGE: usize = 1000;

/// An access request as stored: the credential issued on approval sealed by the server, so
/// every replica can hand it to the request's subjects until the lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    /// The request.
    pub request: AccessRequest,
    /// The credential (JSON of the response's `data`), encrypted by the server.
    pub sealed_credential: Option<Vec<u8>>,
}

/// Which audit records to read, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records after this sequence number (0: from the start).
    pub after: u64,
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only this action's.
    pub action: Option<String>,
    /// At most this many.
    pub limit: usize,
}

impl AuditQuery {
    /// The first `limit` records, unfiltered.
    pub fn all(limit: usize) -> AuditQuery {
        AuditQuery {
            after: 0,
            since: None,
            actor: None,
            action: None,
            limit,
        }
    }
}

/// A static role as stored: its definition, the password in force and a new one being set,
/// both sealed by the server, and when it was and will be rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStaticRole {
    /// The mount it belongs to.
    pub mount: String,
    /// The definition.
    pub def: pgwarden_core::static_role::StaticRoleDef,
    /// Bumped by every write; updates compare and set on it.
    pub version: u64,
    /// The password the database user has, encrypted; `None` before the first rotation.
    pub sealed_password: Option<Vec<u8>>,
    /// A new password stored before the database is told, kept until the change is
    /// confirmed, so a crash in between never leaves a password nobody knows.
    pub sealed_pending: Option<Vec<u8>>,
    /// When the password last changed.
    pub last_rotation: Option<OffsetDateTime>,
    /// When it changes next.
    pub next_rotation: OffsetDateTime,
    /// Defined in the configuration file (forgotten when it leaves the file), not the API.
    pub from_file: bool,
}

/// A connection definition as stored: the password sealed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConnection {
    /// Name within its mount.
    pub name: String,
    /// URL with optional `{{username}}`/`{{password}}` placeholders.
    pub connection_url: String,
    /// Administrative user.
    pub username: String,
    /// The administrative password, encrypted by the server.
    pub sealed_password: Vec<u8>,
    /// A new administrative password being set (`rotate-root`), stored before the database
    /// is told and kept until the change is confirmed.
    pub sealed_pending_password: Option<Vec<u8>>,
    /// Role globs allowed to use the connection.
    pub allowed_roles: Vec<String>,
    /// Whether to check the connection when written.
    pub verify_connection: bool,
}

/// Durable state, shared by the API and the reaper. Every write survives a crash of
/// pgwarden once it returns; inserts, tokens, definitions and failed revocations survive
/// power loss too, while a lease's other updates and its deletion may be lost in a power cut
/// only in the safe direction (an activation or renewal lost ends a credential early; a
/// deletion lost repeats a revocation).
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a new lease (normally pending, before its user is created).
    async fn insert_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Records a new lease as [`Store::insert_lease`] does, only while the API connection its
    /// user is made through (its mount's connection named by its role's `db_name`) is stored
    /// with `connection_url`, the URL the issuer read; false, with nothing recorded, once it
    /// was deleted or its URL rewritten (through any replica). Ordered with
    /// [`Store::delete_connection`] and [`Store::write_connection`]: each sees the lease, or
    /// the lease is not recorded.
    async fn insert_lease_via(
        &self,
        lease: &Lease,
        connection_url: &str,
    ) -> Result<bool, StoreError>;
    /// Replaces a lease's mutable fields (state, expiries, revocation attempts) if its stored
    /// state is still `from` (compared by name: a revocation's stored reason is not compared,
    /// and is replaced by `lease`'s); false when it is not, or no lease has this id (another
    /// request, perhaps on another replica, moved it on: revoked it meanwhile). `durability`
    /// says whether the change must survive a power cut (or a crash of a shared state
    /// database).
    async fn update_lease(
        &self,
        lease: &Lease,
        from: LeaseState,
        durability: Durability,
    ) -> Result<bool, StoreError>;
    /// Forgets a lease whose user is gone.
    async fn delete_lease(&self, id: &str) -> Result<(), StoreError>;
    /// One lease by id.
    async fn get_lease(&self, id: &str) -> Result<Option<Lease>, StoreError>;
    /// Ids of leases starting with `prefix`, sorted.
    async fn lease_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Every lease, for start-up recovery.
    async fn all_leases(&self) -> Result<Vec<Lease>, StoreError>;
    /// Ids of the leases the reaper must act on at `now`: active ones that have expired,
    /// revocations under way or failed, and pending ones issued before `stale` (whose issuer
    /// died: a live one finishes long before). A rollback (of a lease marked while pending)
    /// issued after `stale` waits like a pending lease: its issuer may still be creating the
    /// user.
    async fn due_lease_ids(
        &self,
        now: OffsetDateTime,
        stale: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError>;
    /// Takes or keeps the reaper's leadership for `holder` for `ttl` (judged by the state
    /// database's clock); false while another holder has it.
    async fn lead(&self, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError>;
    /// Gives up the reaper's leadership if `holder` has it.
    async fn resign(&self, holder: &str) -> Result<(), StoreError>;
    /// Creates or replaces a role of `mount`.
    async fn put_role(&self, mount: &str, role: &RoleDef) -> Result<(), StoreError>;
    /// Deletes a role; false when there was none.
    async fn delete_role(&self, mount: &str, name: &str) -> Result<bool, StoreError>;
    /// Every stored role with its mount.
    async fn roles(&self) -> Result<Vec<(String, RoleDef)>, StoreError>;
    /// Creates or replaces a connection of `mount`.
    async fn put_connection(
        &self,
        mount: &str,
        connection: &StoredConnection,
    ) -> Result<(), StoreError>;
    /// Creates or replaces a connection written through the API, only while the stored one
    /// has `expected_url` (`None`: there is none), as the writer read it; when the write
    /// `moves` it to another server, only while no lease has users through it. Never
    /// [`ConnectionChange::Missing`].
    async fn write_connection(
        &self,
        mount: &str,
        connection: &StoredConnection,
        expected_url: Option<&str>,
        moves: bool,
    ) -> Result<ConnectionChange, StoreError>;
    /// Deletes a connection, unless leases have users through it. Never
    /// [`ConnectionChange::Stale`].
    async fn delete_connection(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<ConnectionChange, StoreError>;
    /// Every stored connection with its mount.
    async fn connections(&self) -> Result<Vec<(String, StoredConnection)>, StoreError>;
    /// Records a token issued at login.
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// The token whose hash is `hash`.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// The token with `accessor`.
    async fn token_by_accessor(&self, accessor: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Moves a token's end.
    async fn set_token_expiry(
        &self,
        accessor: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Forgets a token; false when there was none.
    async fn delete_token(&self, accessor: &str) -> Result<bool, StoreError>;
    /// Forgets a token and, in the same write, marks every lease it created that is not being
    /// revoked yet `revoking` (a rollback for one still pending), so that nothing the token
    /// left is forgotten should pgwarden stop before revoking them; returns the ids of all the
    /// token's leases, by id. A lease recorded for the token at the same time (on another
    /// replica) is either marked too, or recorded only once the token is gone for every
    /// reader: never recorded unmarked while its issuer can still read the token.
    async fn revoke_token(&self, accessor: &str) -> Result<Vec<String>, StoreError>;
    /// Every token, for copying the state elsewhere.
    async fn all_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Forgets tokens that ended before `now`; returns how many.
    async fn delete_expired_tokens(&self, now: OffsetDateTime) -> Result<usize, StoreError>;
    /// Records a new access request, durably.
    async fn insert_request(&self, request: &StoredRequest) -> Result<(), StoreError>;
    /// Replaces a request, durably, if its stored version is still `from_version`; false when
    /// it is not (another request, perhaps on another replica, changed it first).
    async fn update_request(
        &self,
        request: &StoredRequest,
        from_version: u64,
    ) -> Result<bool, StoreError>;
    /// Forgets a request, durably, if its stored version is still `version`; false when it
    /// is not (changed meanwhile) or it is gone.
    async fn delete_request(&self, id: &str, version: u64) -> Result<bool, StoreError>;
    /// One request by id.
    async fn get_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError>;
    /// Every request, newest first.
    async fn all_requests(&self) -> Result<Vec<StoredRequest>, StoreError>;
    /// Records a new static role, durably; false when `(mount, name)` exists already.
    async fn insert_static_role(&self, role: &StoredStaticRole) -> Result<bool, StoreError>;
    /// Replaces a static role, durably, if its stored version is still `from_version`.
    async fn update_static_role(
        &self,
        role: &StoredStaticRole,
        from_version: u64,
    ) -> Result<bool, StoreError>;
    /// Deletes a static role if its stored version is still `from_version`.
    async fn delete_static_role(
        &self,
        mount: &str,
        name: &str,
        from_version: u64,
    ) -> Result<bool, StoreError>;
    /// One static role.
    async fn get_static_role(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<StoredStaticRole>, StoreError>;
    /// Every static role, by mount and name.
    async fn static_roles(&self) -> Result<Vec<StoredStaticRole>, StoreError>;
    /// Appends `events` to the audit chain in order, as durably as `durability` says, each
    /// hashed with the one before, keyed with `key` if given (appends from several replicas
    /// are serialised); returns the records as chained. A relaxed append becomes durable with
    /// the next synced write.
    async fn append_audit(
        &self,
        events: &[AuditEvent],
        durability: Durability,
        key: Option<&ChainKey>,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Audit records matching `query`, oldest first.
    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
    /// Stores records exactly as given (sequence numbers and hashes), when copying state.
    async fn import_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;
}
