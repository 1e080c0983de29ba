//! The shared backend: tables in a PostgreSQL database that several pgwarden replicas use at
//! once. Every write is one statement committed before the call returns: with the database's
//! durability, except a lease's activation, renewal and deletion, which do not wait for its
//! disk (see [`PostgresStore::open`]). Leadership of the reaper is a row whose lease is judged
//! by the database's clock.

use crate::encoding::{
    AUDIT_COLUMNS, Columns, LEASE_COLUMNS, REQUEST_COLUMNS, STATIC_ROLE_COLUMNS, TOKEN_COLUMNS,
    audit_from, from_millis, lease_state, mark_token_leases, millis, request_from, revoke_reason,
    static_role_from, to_json, version_column,
};
use crate::{
    AuditQuery, ConnectionChange, Durability, Expect, Store, StoreError, StoredConnection,
    StoredRequest, StoredStaticRole,
};
use deadpool_postgres::Pool;
use pgwarden_core::audit::GENESIS_HASH;
use pgwarden_core::{
    AuditEvent, AuditRecord, ChainKey, Identity, Lease, LeaseState, Owner, RoleDef, TokenRecord,
    Ttl,
};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Each entry upgrades the schema by one version; never edit one that has shipped, append.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite backend holds, and the reaper's leadership.
    "CREATE TABLE pgwarden_leases (
        id text PRIMARY KEY,
        username text NOT NULL,
        owner text NOT NULL,
        mount text NOT NULL,
        role_json text NOT NULL,
        state text NOT NULL,
        issued_at_ms bigint NOT NULL,
        expires_at_ms bigint NOT NULL,
        max_expires_at_ms bigint NOT NULL,
        last_renewal_ms bigint,
        revoke_attempts bigint NOT NULL DEFAULT 0,
        last_error text,
        subject text NOT NULL,
        token_accessor text
    );
    CREATE INDEX pgwarden_leases_by_token ON pgwarden_leases (token_accessor)
        WHERE token_accessor IS NOT NULL;
    CREATE INDEX pgwarden_leases_by_expiry ON pgwarden_leases (expires_at_ms);
    CREATE INDEX pgwarden_leases_unsettled ON pgwarden_leases (state) WHERE state <> 'active';
    CREATE TABLE pgwarden_roles (
        mount text NOT NULL,
        name text NOT NULL,
        role_json text NOT NULL,
        PRIMARY KEY (mount, name)
    );
    CREATE TABLE pgwarden_connections (
        mount text NOT NULL,
        name text NOT NULL,
        connection_url text NOT NULL,
        username text NOT NULL,
        sealed_password bytea NOT NULL,
        allowed_roles_json text NOT NULL,
        verify_connection boolean NOT NULL,
        PRIMARY KEY (mount, name)
    );
    CREATE TABLE pgwarden_tokens (
        accessor text PRIMARY KEY,
        hash text NOT NULL UNIQUE,
        identity_json text NOT NULL,
        mount text NOT NULL,
        role text NOT NULL,
        issued_at_ms bigint NOT NULL,
        expires_at_ms bigint NOT NULL,
        max_expires_at_ms bigint NOT NULL,
        ttl_secs bigint NOT NULL
    );
    CREATE TABLE pgwarden_leader (
        name text PRIMARY KEY,
        holder text NOT NULL,
        valid_until timestamptz NOT NULL
    );",
    // 2: access requests and the audit chain.
    "CREATE TABLE pgwarden_requests (
        id text PRIMARY KEY,
        version bigint NOT NULL,
        state text NOT NULL,
        created_at_ms bigint NOT NULL,
        request_json text NOT NULL,
        sealed_credential bytea
    );
    CREATE TABLE pgwarden_audit (
        seq bigint PRIMARY KEY,
        time_ms bigint NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        object text NOT NULL,
        outcome text NOT NULL,
        request_id text NOT NULL,
        detail text NOT NULL,
        prev_hash text NOT NULL,
        hash text NOT NULL
    );
    CREATE INDEX pgwarden_audit_by_time ON pgwarden_audit (time_ms);",
    // 3: static roles.
    "CREATE TABLE pgwarden_static_roles (
        mount text NOT NULL,
        name text NOT NULL,
        version bigint NOT NULL,
        role_json text NOT NULL,
        sealed_password bytea,
        sealed_pending bytea,
        last_rotation_ms bigint,
        next_rotation_ms bigint NOT NULL,
        from_file boolean NOT NULL,
        PRIMARY KEY (mount, name)
    );",
    // 4: a connection's administrative password being rotated.
    "ALTER TABLE pgwarden_connections ADD COLUMN sealed_pending_password bytea;",
    // 5: why a lease's revocation began (NULL before: counted as requested).
    "ALTER TABLE pgwarden_leases ADD COLUMN revoke_reason text;",
];

/// How long checking (and upgrading) the schema at start-up may take.
const MIGRATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The advisory lock that serialises replicas migrating at the same time.
const MIGRATION_LOCK: i64 = 0x7067_7761_7264_656e; // "pgwarden"

/// The advisory lock that serialises appends to the audit chain across replicas.
const AUDIT_LOCK: i64 = 0x7067_7761_7564_6974; // "pgwaudit"

/// A [`Store`] in a PostgreSQL database, shared by every replica that connects to it.
pub struct PostgresStore {
    pool: Pool,
    relaxed: Pool,
}

impl PostgresStore {
    /// Writes static role `r` with `sql`: its parameters $1 to $9 are the row's columns in
    /// [`STATIC_ROLE_COLUMNS`] order, $10 `from_version` when given. Whether a row changed.
    async fn write_static_role(
        &self,
        sql: &str,
        r: &StoredStaticRole,
        from_version: Option<u64>,
    ) -> Result<bool, StoreError> {
        let version = version_column(r.version);
        let json = to_json("static role", &r.def)?;
        let (last, next) = (r.last_rotation.map(millis), millis(r.next_rotation));
        let from = from_version.map(version_column);
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![
            &r.mount,
            &r.def.name,
            &version,
            &json,
            &r.sealed_password,
            &r.sealed_pending,
            &last,
            &next,
            &r.from_file,
        ];
        if let Some(from) = &from {
            values.push(from);
        }
        self.execute(sql, &values).await.map(|n| n > 0)
    }

    /// The pool whose connections commit as durably as `durability` says.
    fn pool_for(&self, durability: Durability) -> &Pool {
        match durability {
            Durability::Synced => &self.pool,
            Durability::Relaxed => &self.relaxed,
        }
    }

    /// A store over `pool`'s database, its schema created or upgraded first. `relaxed` is a
    /// pool to the same database whose sessions run with `synchronous_commit = off`, for the
    /// writes whose loss in a crash of the state database errs on the safe side (as the
    /// [`Store`] trait allows): a lease's activation, renewal and deletion.
    pub async fn open(pool: Pool, relaxed: Pool) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore { pool, relaxed };
        tokio::time::timeout(MIGRATION_TIMEOUT, store.migrate())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "the state database did not answer within {MIGRATION_TIMEOUT:?} while \
                     checking its schema"
                ))
            })??;
        Ok(store)
    }

    /// Applies the migrations this database lacks, in one transaction, one replica at a time.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        // Up to date needs no DDL, so the state user may lose its CREATE privilege once set up.
        let tracked: bool = tx
            .query_one("SELECT to_regclass('pgwarden_schema') IS NOT NULL", &[])
            .await
            .map_err(db)?
            .get(0);
        if !tracked {
            tx.batch_execute("CREATE TABLE pgwarden_schema (version integer NOT NULL)")
                .await
                .map_err(db)?;
        }
        let current: i32 = tx
            .query_opt("SELECT version FROM pgwarden_schema", &[])
            .await
            .map_err(db)?
            .map_or(0, |row| row.get(0));
        if current as usize > MIGRATIONS.len() {
            return Err(StoreError::Corrupt {
                what: "schema version",
                reason: format!(
                    "the state database is at version {current}, newer than this pgwarden \
                     knows ({}): upgrade pgwarden",
                    MIGRATIONS.len()
                ),
            });
        }
        if current as usize == MIGRATIONS.len() {
            return tx.commit().await.map_err(db);
        }
        for sql in MIGRATIONS.iter().skip(current.max(0) as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
        }
        let version = MIGRATIONS.len() as i32;
        tx.execute("DELETE FROM pgwarden_schema", &[])
            .await
            .map_err(db)?;
        tx.execute("INSERT INTO pgwarden_schema VALUES ($1)", &[&version])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Records lease `l`, only while its connection has `connection_url` when one is given;
    /// whether it was recorded. A lease with neither a token nor a connection to lock is a
    /// plain insert.
    async fn insert_lease_if(
        &self,
        l: &Lease,
        connection_url: Option<&str>,
    ) -> Result<bool, StoreError> {
        let role = to_json("role", &l.role)?;
        let (state, reason) = (l.state.as_str(), revoke_reason(l.state));
        let times = (
            millis(l.issued_at),
            millis(l.expires_at),
            millis(l.max_expires_at),
            l.last_renewal.map(millis),
        );
        let attempts = i64::from(l.revoke_attempts);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &l.id,
            &l.username,
            &l.owner.display_name,
            &l.mount,
            &role,
            &state,
            &times.0,
            &times.1,
            &times.2,
            &times.3,
            &attempts,
            &l.last_error,
            &l.owner.subject,
            &l.owner.token_accessor,
            &reason,
        ];
        if l.owner.token_accessor.is_none() && connection_url.is_none() {
            let sql = format!(
                "INSERT INTO pgwarden_leases ({LEASE_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            );
            return self.execute(&sql, &params).await.map(|n| n > 0);
        }
        params.push(&l.role.db_name);
        params.push(&connection_url);
        self.execute(&INSERT_LEASE_LOCKED, &params)
            .await
            .map(|n| n > 0)
    }

    /// Runs `change` (with `params`, whose first two are `mount` and `name`) on connection
    /// `name` of `mount`, if it is the one `expect`ed and, when `unused` is asked, no lease
    /// has users through it: in one transaction that first locks the connection against new
    /// leases and other changes, then checks.
    async fn change_connection(
        &self,
        mount: &str,
        name: &str,
        expect: Expect,
        unused: bool,
        change: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<ConnectionChange, StoreError> {
        within_timeout(&self.pool, async |client| {
            in_transaction(client, async |client| {
                let stored: Option<String> = client
                    .query_opt(LOCK_CONNECTION, &[&mount, &name])
                    .await
                    .map_err(db)?
                    .map(|row| row.get(0));
                if !expect.holds(stored.as_deref()) {
                    return Ok(ConnectionChange::Stale);
                }
                if unused {
                    let used: i64 = client
                        .query_one(LEASES_VIA, &[&mount, &name])
                        .await
                        .map_err(db)?
                        .get(0);
                    if used > 0 {
                        return Ok(ConnectionChange::UsedBy(used.unsigned_abs()));
                    }
                }
                let changed = client.execute(change, params).await.map_err(db)?;
                Ok(if changed > 0 {
                    ConnectionChange::Changed
                } else {
                    ConnectionChange::Missing
                })
            })
            .await
        })
        .await
    }

    /// Runs `sql` with `params`, committed durably; the number of rows changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.execute_on(&self.pool, sql, params).await
    }

    /// Runs `sql` with `params` on a connection of `pool`; the number of rows changed.
    async fn execute_on(
        &self,
        pool: &Pool,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        within_timeout(pool, async |client| {
            let statement = client.prepare_cached(sql).await.map_err(db)?;
            client.execute(&statement, params).await.map_err(db)
        })
        .await
    }

    /// Runs the query `sql` with `params`.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        within_timeout(&self.pool, async |client| {
            let statement = client.prepare_cached(sql).await.map_err(db)?;
            client.query(&statement, params).await.map_err(db)
        })
        .await
    }

    /// The token whose `column` (accessor or hash) equals `value`.
    async fn token_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM pgwarden_tokens WHERE {column} = $1");
        self.query(&sql, &[&value])
            .await?
            .first()
            .map(token)
            .transpose()
    }
}

/// How long getting a connection, and then one statement, may each take before the state
/// database counts as unavailable (a network partition can leave a connection hanging, not
/// failing).
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `work` on a connection of `pool`, giving up after [`STATEMENT_TIMEOUT`]: then the
/// connection, whose answer may still come, is closed rather than returned to the pool.
async fn within_timeout<T>(
    pool: &Pool,
    work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let timed_out = || StoreError::Unavailable(format!("no answer within {STATEMENT_TIMEOUT:?}"));
    let client = tokio::time::timeout(STATEMENT_TIMEOUT, pool.get())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let outcome = tokio::time::timeout(STATEMENT_TIMEOUT, work(&client)).await;
    match outcome {
        Ok(result) => result,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(timed_out())
        }
    }
}

/// A database error: unavailable (the caller answers 503, and it may pass) when the
/// connection failed or the server is shutting down, starting or out of resources; else the
/// statement itself was refused.
fn db(error: tokio_postgres::Error) -> StoreError {
    let message = pgwarden_core::chain(&error);
    let transient = error.code().is_none_or(|code| {
        let code = code.code();
        ["08", "53", "57P"]
            .iter()
            .any(|class| code.starts_with(class))
    });
    if transient {
        StoreError::Unavailable(message)
    } else {
        StoreError::Refused(message)
    }
}

fn from_json<T: DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// The state of a lease row (`state`, and `revoke_reason` while revoking).
fn state(row: &Row) -> Result<LeaseState, StoreError> {
    lease_state(row.get("state"), row.get("revoke_reason")).map_err(|stored| StoreError::Corrupt {
        what: "lease state",
        reason: stored,
    })
}

/// A row of `pgwarden_leases` (all of [`LEASE_COLUMNS`]).
fn lease(row: &Row) -> Result<Lease, StoreError> {
    let attempts: i64 = row.get("revoke_attempts");
    Ok(Lease {
        id: row.get("id"),
        username: row.get("username"),
        owner: Owner {
            display_name: row.get("owner"),
            subject: row.get("subject"),
            token_accessor: row.get("token_accessor"),
        },
        mount: row.get("mount"),
        role: from_json("role", row.get("role_json"))?,
        state: state(row)?,
        issued_at: from_millis(row.get("issued_at_ms"))?,
        expires_at: from_millis(row.get("expires_at_ms"))?,
        max_expires_at: from_millis(row.get("max_expires_at_ms"))?,
        last_renewal: row
            .get::<_, Option<i64>>("last_renewal_ms")
            .map(from_millis)
            .transpose()?,
        revoke_attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt {
            what: "lease",
            reason: format!("revoke_attempts {attempts}"),
        })?,
        last_error: row.get("last_error"),
    })
}

/// A row of `pgwarden_tokens` (all of [`TOKEN_COLUMNS`]).
fn token(row: &Row) -> Result<TokenRecord, StoreError> {
    let ttl: i64 = row.get("ttl_secs");
    Ok(TokenRecord {
        accessor: row.get("accessor"),
        hash: row.get("hash"),
        identity: from_json::<Identity>("token identity", row.get("identity_json"))?,
        mount: row.get("mount"),
        role: row.get("role"),
        issued_at: from_millis(row.get("issued_at_ms"))?,
        expires_at: from_millis(row.get("expires_at_ms"))?,
        max_expires_at: from_millis(row.get("max_expires_at_ms"))?,
        ttl: Ttl::from_secs(u64::try_from(ttl).unwrap_or(0)),
    })
}

impl Columns for Row {
    fn int(&self, name: &str) -> Result<i64, StoreError> {
        self.try_get(name).map_err(db)
    }
    fn text(&self, name: &str) -> Result<String, StoreError> {
        self.try_get(name).map_err(db)
    }
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.try_get(name).map_err(db)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(name).map_err(db)
    }
    fn flag(&self, name: &str) -> Result<bool, StoreError> {
        self.try_get(name).map_err(db)
    }
}

/// Inserts `records` into `pgwarden_audit` as they are, inside the caller's transaction.
async fn insert_audit(
    client: &deadpool_postgres::Object,
    records: &[AuditRecord],
) -> Result<(), StoreError> {
    let insert = client
        .prepare_cached(&format!(
            "INSERT INTO pgwarden_audit ({AUDIT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .await
        .map_err(db)?;
    for r in records {
        client
            .execute(
                &insert,
                &[
                    &version_column(r.seq),
                    &millis(r.event.time),
                    &r.event.actor,
                    &r.event.action,
                    &r.event.object,
                    &r.event.outcome.as_str(),
                    &r.event.request_id,
                    &r.event.detail,
                    &r.prev_hash,
                    &r.hash,
                ],
            )
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// Runs `work` between `BEGIN` and `COMMIT` on `client`, at READ COMMITTED whatever the
/// database's default (each statement sees what committed before it, as the audit append
/// needs once it holds its lock), rolling back when it fails (a connection dropped mid-way
/// rolls back by itself).
async fn in_transaction<T>(
    client: &deadpool_postgres::Object,
    work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await
        .map_err(db)?;
    match work(client).await {
        Ok(value) => {
            client.batch_execute("COMMIT").await.map_err(db)?;
            Ok(value)
        }
        Err(error) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}

/// Records a lease (its columns `$1` to `$15` in [`LEASE_COLUMNS`] order) in one statement
/// that first locks, until it commits, the row of its token (`$14`, if any) against its
/// deletion, and that of its connection (`$16`, when its expected URL `$17` is given) against
/// its deletion or rewrite. The lease is recorded only while that connection still has that
/// URL. So a logout of the token (which deletes the token's row, then marks its leases)
/// either waits for this lease and marks it too, or has committed before it is recorded:
/// then the issuer, reading the token afterwards, finds it gone and undoes the lease itself.
/// And a deletion or rewrite of the connection ([`LOCK_CONNECTION`]) either waits for this
/// lease (a deletion, or a move to another server, is then refused), or has committed
/// first: then no lease is recorded.
static INSERT_LEASE_LOCKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH token AS (SELECT 1 FROM pgwarden_tokens WHERE accessor = $14 FOR KEY SHARE), \
         via AS (SELECT 1 FROM pgwarden_connections \
         WHERE mount = $4 AND name = $16 AND connection_url = $17 FOR KEY SHARE) \
         INSERT INTO pgwarden_leases ({LEASE_COLUMNS}) \
         SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::bigint, \
         $8::bigint, $9::bigint, $10::bigint, $11::bigint, $12::text, $13::text, $14::text, \
         $15::text \
         WHERE (SELECT count(*) FROM token) >= 0 \
         AND ($17::text IS NULL OR EXISTS (SELECT 1 FROM via))"
    )
});

/// Locks connection `$2` of mount `$1` until the transaction ends, against new leases
/// through it (which lock it to be recorded, see [`INSERT_LEASE_LOCKED`]) and other changes;
/// its URL.
const LOCK_CONNECTION: &str =
    "SELECT connection_url FROM pgwarden_connections WHERE mount = $1 AND name = $2 FOR UPDATE";

/// How many leases of mount `$1` have users made through its connection `$2`.
const LEASES_VIA: &str = "SELECT count(*) FROM pgwarden_leases \
     WHERE mount = $1 AND role_json::json ->> 'db_name' = $2";

/// Creates or replaces connection `$2` of mount `$1` (the other columns in order).
const UPSERT_CONNECTION: &str = "INSERT INTO pgwarden_connections (mount, name, connection_url, \
     username, sealed_password, allowed_roles_json, verify_connection, sealed_pending_password) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (mount, name) DO UPDATE SET connection_url = excluded.connection_url, \
     username = excluded.username, sealed_password = excluded.sealed_password, \
     allowed_roles_json = excluded.allowed_roles_json, \
     verify_connection = excluded.verify_connection, \
     sealed_pending_password = excluded.sealed_pending_password";

/// The parameters of [`UPSERT_CONNECTION`] for connection `c` of `mount` (`allowed`: its
/// allowed roles as JSON).
fn connection_params<'a>(
    mount: &'a &'a str,
    c: &'a StoredConnection,
    allowed: &'a String,
) -> [&'a (dyn ToSql + Sync); 8] {
    [
        mount,
        &c.name,
        &c.connection_url,
        &c.username,
        &c.sealed_password,
        allowed,
        &c.verify_connection,
        &c.sealed_pending_password,
    ]
}

/// The ids of the leases of the token whose accessor is `$1`, in order.
const TOKEN_LEASE_IDS: &str =
    "SELECT id FROM pgwarden_leases WHERE token_accessor = $1 ORDER BY id COLLATE \"C\"";

fn ids(rows: &[Row]) -> Vec<String> {
    rows.iter().map(|row| row.get("id")).collect()
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn insert_lease(&self, l: &Lease) -> Result<(), StoreError> {
        self.insert_lease_if(l, None).await.map(drop)
    }

    async fn insert_lease_via(&self, l: &Lease, connection_url: &str) -> Result<bool, StoreError> {
        self.insert_lease_if(l, Some(connection_url)).await
    }

    async fn update_lease(
        &self,
        l: &Lease,
        from: LeaseState,
        durability: Durability,
    ) -> Result<bool, StoreError> {
        self.execute_on(
            self.pool_for(durability),
            "UPDATE pgwarden_leases SET state = $2, expires_at_ms = $3, last_renewal_ms = $4, \
             revoke_attempts = $5, last_error = $6, revoke_reason = $8 \
             WHERE id = $1 AND state = $7",
            &[
                &l.id,
                &l.state.as_str(),
                &millis(l.expires_at),
                &l.last_renewal.map(millis),
                &i64::from(l.revoke_attempts),
                &l.last_error,
                &from.as_str(),
                &revoke_reason(l.state),
            ],
        )
        .await
        .map(|changed| changed > 0)
    }

    async fn delete_lease(&self, id: &str) -> Result<(), StoreError> {
        self.execute_on(
            &self.relaxed,
            "DELETE FROM pgwarden_leases WHERE id = $1",
            &[&id],
        )
        .await
        .map(drop)
    }

    async fn get_lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM pgwarden_leases WHERE id = $1");
        self.query(&sql, &[&id])
            .await?
            .first()
            .map(lease)
            .transpose()
    }

    async fn lease_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT id FROM pgwarden_leases WHERE starts_with(id, $1) ORDER BY id COLLATE \"C\"",
                &[&prefix],
            )
            .await?;
        Ok(ids(&rows))
    }

    async fn all_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM pgwarden_leases ORDER BY expires_at_ms");
        self.query(&sql, &[]).await?.iter().map(lease).collect()
    }

    async fn due_lease_ids(
        &self,
        now: OffsetDateTime,
        stale: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT id FROM pgwarden_leases WHERE (state = 'active' AND expires_at_ms <= $1) \
                 OR (state = 'revoking' AND (COALESCE(revoke_reason, '') <> 'rollback' OR issued_at_ms <= $2)) \
                 OR (state = 'pending' AND issued_at_ms <= $2) ORDER BY expires_at_ms",
                &[&millis(now), &millis(stale)],
            )
            .await?;
        Ok(ids(&rows))
    }

    async fn lead(&self, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "INSERT INTO pgwarden_leader AS l (name, holder, valid_until) \
                 VALUES ('reaper', $1, clock_timestamp() + $2 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 valid_until = excluded.valid_until \
                 WHERE l.holder = excluded.holder OR l.valid_until < clock_timestamp() \
                 RETURNING holder",
                &[&holder, &(millis as f64)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn resign(&self, holder: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM pgwarden_leader WHERE name = 'reaper' AND holder = $1",
            &[&holder],
        )
        .await
        .map(drop)
    }

    async fn put_role(&self, mount: &str, role: &RoleDef) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO pgwarden_roles (mount, name, role_json) VALUES ($1, $2, $3) \
             ON CONFLICT (mount, name) DO UPDATE SET role_json = excluded.role_json",
            &[&mount, &role.name, &to_json("role", role)?],
        )
        .await
        .map(drop)
    }

    async fn delete_role(&self, mount: &str, name: &str) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM pgwarden_roles WHERE mount = $1 AND name = $2",
            &[&mount, &name],
        )
        .await
        .map(|n| n > 0)
    }

    async fn roles(&self) -> Result<Vec<(String, RoleDef)>, StoreError> {
        self.query(
            "SELECT mount, role_json FROM pgwarden_roles ORDER BY mount COLLATE \"C\", name COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(|row| Ok((row.get("mount"), from_json("role", row.get("role_json"))?)))
        .collect()
    }

    async fn put_connection(&self, mount: &str, c: &StoredConnection) -> Result<(), StoreError> {
        let allowed = to_json("allowed_roles list", &c.allowed_roles)?;
        self.execute(UPSERT_CONNECTION, &connection_params(&mount, c, &allowed))
            .await
            .map(drop)
    }

    async fn write_connection(
        &self,
        mount: &str,
        c: &StoredConnection,
        expected_url: Option<&str>,
        moves: bool,
    ) -> Result<ConnectionChange, StoreError> {
        let allowed = to_json("allowed_roles list", &c.allowed_roles)?;
        self.change_connection(
            mount,
            &c.name,
            Expect::Url(expected_url.map(str::to_string)),
            moves,
            UPSERT_CONNECTION,
            &connection_params(&mount, c, &allowed),
        )
        .await
    }

    async fn delete_connection(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<ConnectionChange, StoreError> {
        self.change_connection(
            mount,
            name,
            Expect::Any,
            true,
            "DELETE FROM pgwarden_connections WHERE mount = $1 AND name = $2",
            &[&mount, &name],
        )
        .await
    }

    async fn connections(&self) -> Result<Vec<(String, StoredConnection)>, StoreError> {
        self.query(
            "SELECT mount, name, connection_url, username, sealed_password, allowed_roles_json, \
             verify_connection, sealed_pending_password FROM pgwarden_connections \
             ORDER BY mount COLLATE \"C\", name COLLATE \"C\"",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.get("mount"),
                StoredConnection {
                    name: row.get("name"),
                    connection_url: row.get("connection_url"),
                    username: row.get("username"),
                    sealed_password: row.get("sealed_password"),
                    allowed_roles: from_json("connection", row.get("allowed_roles_json"))?,
                    verify_connection: row.get("verify_connection"),
                    sealed_pending_password: row.get("sealed_pending_password"),
                },
            ))
        })
        .collect()
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO pgwarden_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        self.execute(
            &sql,
            &[
                &t.accessor,
                &t.hash,
                &to_json("token identity", &t.identity)?,
                &t.mount,
                &t.role,
                &millis(t.issued_at),
                &millis(t.expires_at),
                &millis(t.max_expires_at),
                &i64::try_from(t.ttl.as_secs()).unwrap_or(i64::MAX),
            ],
        )
        .await
        .map(drop)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.token_where("hash", hash).await
    }

    async fn token_by_accessor(&self, accessor: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.token_where("accessor", accessor).await
    }

    async fn set_token_expiry(
        &self,
        accessor: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE pgwarden_tokens SET expires_at_ms = $2 WHERE accessor = $1",
            &[&accessor, &millis(expires_at)],
        )
        .await
        .map(drop)
    }

    async fn delete_token(&self, accessor: &str) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM pgwarden_tokens WHERE accessor = $1",
            &[&accessor],
        )
        .await
        .map(|n| n > 0)
    }

    async fn revoke_token(&self, accessor: &str) -> Result<Vec<String>, StoreError> {
        let mark = mark_token_leases("pgwarden_leases", "$1");
        within_timeout(&self.pool, async |client| {
            in_transaction(client, async |client| {
                client
                    .execute(
                        "DELETE FROM pgwarden_tokens WHERE accessor = $1",
                        &[&accessor],
                    )
                    .await
                    .map_err(db)?;
                client.execute(&mark, &[&accessor]).await.map_err(db)?;
                let rows = client
                    .query(TOKEN_LEASE_IDS, &[&accessor])
                    .await
                    .map_err(db)?;
                Ok(ids(&rows))
            })
            .await
        })
        .await
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM pgwarden_tokens ORDER BY accessor COLLATE \"C\"");
        self.query(&sql, &[]).await?.iter().map(token).collect()
    }

    async fn delete_expired_tokens(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        self.execute(
            "DELETE FROM pgwarden_tokens WHERE expires_at_ms < $1",
            &[&millis(now)],
        )
        .await
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
    async fn insert_static_role(&self, r: &StoredStaticRole) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO pgwarden_static_roles ({STATIC_ROLE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (mount, name) DO NOTHING"
        );
        self.write_static_role(&sql, r, None).await
    }

    async fn update_static_role(
        &self,
        r: &StoredStaticRole,
        from_version: u64,
    ) -> Result<bool, StoreError> {
        self.write_static_role(
            "UPDATE pgwarden_static_roles SET version = $3, role_json = $4, \
             sealed_password = $5, sealed_pending = $6, last_rotation_ms = $7, \
             next_rotation_ms = $8, from_file = $9 \
             WHERE mount = $1 AND name = $2 AND version = $10",
            r,
            Some(from_version),
        )
        .await
    }

    async fn delete_static_role(
        &self,
        mount: &str,
        name: &str,
        from_version: u64,
    ) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM pgwarden_static_roles WHERE mount = $1 AND name = $2 AND version = $3",
            &[&mount, &name, &version_column(from_version)],
        )
        .await
        .map(|n| n > 0)
    }

    async fn get_static_role(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<StoredStaticRole>, StoreError> {
        let sql = format!(
            "SELECT {STATIC_ROLE_COLUMNS} FROM pgwarden_static_roles \
             WHERE mount = $1 AND name = $2"
        );
        self.query(&sql, &[&mount, &name])
            .await?
            .first()
            .map(static_role_from)
            .transpose()
    }

    async fn static_roles(&self) -> Result<Vec<StoredStaticRole>, StoreError> {
        let sql = format!(
            "SELECT {STATIC_ROLE_COLUMNS} FROM pgwarden_static_roles \
             ORDER BY mount COLLATE \"C\", name COLLATE \"C\""
        );
        self.query(&sql, &[])
            .await?
            .iter()
            .map(static_role_from)
            .collect()
    }

    async fn insert_request(&self, r: &StoredRequest) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO pgwarden_requests ({REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        self.execute(
            &sql,
            &[
                &r.request.id,
                &version_column(r.request.version),
                &r.request.state.as_str(),
                &millis(r.request.created_at),
                &to_json("access request", &r.request)?,
                &r.sealed_credential,
            ],
        )
        .await
        .map(drop)
    }

    async fn update_request(
        &self,
        r: &StoredRequest,
        from_version: u64,
    ) -> Result<bool, StoreError> {
        self.execute(
            "UPDATE pgwarden_requests SET version = $2, state = $3, request_json = $4, \
             sealed_credential = $5 WHERE id = $1 AND version = $6",
            &[
                &r.request.id,
                &version_column(r.request.version),
                &r.request.state.as_str(),
                &to_json("access request", &r.request)?,
                &r.sealed_credential,
                &version_column(from_version),
            ],
        )
        .await
        .map(|n| n > 0)
    }

    async fn delete_request(&self, id: &str, version: u64) -> Result<bool, StoreError> {
        self.execute(
            "DELETE FROM pgwarden_requests WHERE id = $1 AND version = $2",
            &[&id, &version_column(version)],
        )
        .await
        .map(|n| n > 0)
    }

    async fn get_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM pgwarden_requests WHERE id = $1");
        self.query(&sql, &[&id])
            .await?
            .first()
            .map(request_from)
            .transpose()
    }

    async fn all_requests(&self) -> Result<Vec<StoredRequest>, StoreError> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM pgwarden_requests \
             ORDER BY created_at_ms DESC, id COLLATE \"C\""
        );
        self.query(&sql, &[])
            .await?
            .iter()
            .map(request_from)
            .collect()
    }

    async fn append_audit(
        &self,
        events: &[AuditEvent],
        durability: Durability,
        key: Option<&ChainKey>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        within_timeout(self.pool_for(durability), async |client| {
            in_transaction(client, async |client| {
                // Held to the commit: replicas append one at a time, each after the last.
                client
                    .execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                    .await
                    .map_err(db)?;
                let last = client
                    .query_opt(
                        "SELECT seq, hash FROM pgwarden_audit ORDER BY seq DESC LIMIT 1",
                        &[],
                    )
                    .await
                    .map_err(db)?;
                let (mut seq, mut prev) = match last {
                    Some(row) => (
                        u64::try_from(row.int("seq")?).unwrap_or(0),
                        row.text("hash")?,
                    ),
                    None => (0, GENESIS_HASH.to_string()),
                };
                let mut records = Vec::with_capacity(events.len());
                for event in events {
                    seq = seq.saturating_add(1);
                    let record = AuditRecord::chain(seq, event.clone(), &prev, key);
                    prev.clone_from(&record.hash);
                    records.push(record);
                }
                insert_audit(client, &records).await?;
                Ok(records)
            })
            .await
        })
        .await
    }

    async fn audit_records(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM pgwarden_audit WHERE seq > $1 \
             AND ($2::bigint IS NULL OR time_ms >= $2) AND ($3::text IS NULL OR actor = $3) \
             AND ($4::text IS NULL OR action = $4) ORDER BY seq LIMIT $5"
        );
        self.query(
            &sql,
            &[
                &version_column(q.after),
                &q.since.map(millis),
                &q.actor,
                &q.action,
                &i64::try_from(q.limit).unwrap_or(i64::MAX),
            ],
        )
        .await?
        .iter()
        .map(audit_from)
        .collect()
    }

    async fn import_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        within_timeout(&self.pool, async |client| {
            in_transaction(client, async |client| insert_audit(client, records).await).await
        })
        .await
    }
}
