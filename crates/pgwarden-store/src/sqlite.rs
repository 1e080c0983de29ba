//! The embedded backend: one SQLite file in WAL mode in the data directory.

use crate::encoding::{
    AUDIT_COLUMNS, Columns, LEASE_COLUMNS, REQUEST_COLUMNS, STATIC_ROLE_COLUMNS, TOKEN_COLUMNS,
    audit_from, from_millis, lease_state, mark_token_leases, millis, request_from, revoke_reason,
    static_role_from, to_json, version_column,
};
use crate::writer::{BUSY_TIMEOUT, Writer};
use crate::{
    AuditQuery, ConnectionChange, Durability, Expect, Store, StoreError, StoredConnection,
    StoredRequest, StoredStaticRole, migrations,
};
use parking_lot::Mutex;
use pgwarden_core::audit::GENESIS_HASH;
use pgwarden_core::{
    AuditEvent, AuditRecord, ChainKey, Identity, Lease, LeaseState, Owner, RoleDef, TokenRecord,
    Ttl,
};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, named_params, params};
use serde::de::DeserializeOwned;
use std::path::Path;
use time::OffsetDateTime;

/// A [`Store`] in one SQLite file in WAL mode: one connection for reads, and a writer thread
/// that commits concurrent writes together (see [`Writer`]). Safe against a killed process;
/// against power loss as the [`Store`] trait says.
pub struct SqliteStore {
    // Dropped in this order: the writer's connection closes last, checkpointing the log.
    reader: Mutex<Connection>,
    writer: Writer,
}

/// A stored value that does not decode. It travels inside rusqlite's conversion error and
/// comes out as [`StoreError::Corrupt`].
#[derive(Debug, thiserror::Error)]
#[error("corrupt {what}: {reason}")]
struct Corrupt {
    what: &'static str,
    reason: String,
}

fn corrupt(what: &'static str, reason: String) -> FromSqlError {
    FromSqlError::other(Corrupt { what, reason })
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        match error {
            rusqlite::Error::FromSqlConversionFailure(index, kind, source) => {
                match source.downcast::<Corrupt>() {
                    Ok(corrupt) => StoreError::Corrupt {
                        what: corrupt.what,
                        reason: corrupt.reason,
                    },
                    Err(source) => StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
                        index, kind, source,
                    )),
                }
            }
            error => StoreError::Sqlite(error),
        }
    }
}

/// A point in time, stored as whole milliseconds since the Unix epoch (`*_ms` columns).
struct Millis(OffsetDateTime);

impl ToSql for Millis {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(millis(self.0)))
    }
}

impl FromSql for Millis {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Millis> {
        match from_millis(i64::column_result(value)?) {
            Ok(t) => Ok(Millis(t)),
            Err(StoreError::Corrupt { what, reason }) => Err(corrupt(what, reason)),
            Err(other) => Err(corrupt("timestamp", other.to_string())),
        }
    }
}

/// A lease's state, stored by name (`state`) and, while revoking, why (`revoke_reason`).
struct State(LeaseState);

impl ToSql for State {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_str()))
    }
}

impl State {
    /// The state of a lease row.
    fn of(row: &Row<'_>) -> rusqlite::Result<LeaseState> {
        let name: String = row.get("state")?;
        let reason: Option<String> = row.get("revoke_reason")?;
        lease_state(&name, reason.as_deref()).map_err(|stored| {
            let corrupt = Corrupt {
                what: "lease state",
                reason: stored,
            };
            let column = row.as_ref().column_index("state").unwrap_or_default();
            rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(corrupt))
        })
    }
}

/// A token's TTL, stored in whole seconds (`ttl_secs`).
struct Secs(Ttl);

impl ToSql for Secs {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_secs() as i64))
    }
}

impl FromSql for Secs {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Secs> {
        let secs = i64::column_result(value)?;
        Ok(Secs(Ttl::from_secs(secs.max(0) as u64)))
    }
}

/// A value stored as JSON text (`*_json` columns), and what a corrupt one is called.
trait JsonColumn: DeserializeOwned {
    const WHAT: &'static str;
}

impl JsonColumn for RoleDef {
    const WHAT: &'static str = "role";
}

impl JsonColumn for Identity {
    const WHAT: &'static str = "token identity";
}

/// The one list stored: a connection's allowed roles.
impl JsonColumn for Vec<String> {
    const WHAT: &'static str = "connection";
}

/// A JSON column read back. Values are written with [`to_json`], before the query, so an
/// encoding error stays a [`StoreError::Encode`].
struct Json<T>(T);

impl<T: JsonColumn> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Json<T>> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|e| corrupt(T::WHAT, e.to_string()))
    }
}

/// A row of `leases` (all of [`LEASE_COLUMNS`]).
fn lease(row: &Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        state: State::of(row)?,
        role: row.get::<_, Json<RoleDef>>("role_json")?.0,
        issued_at: row.get::<_, Millis>("issued_at_ms")?.0,
        expires_at: row.get::<_, Millis>("expires_at_ms")?.0,
        max_expires_at: row.get::<_, Millis>("max_expires_at_ms")?.0,
        last_renewal: row
            .get::<_, Option<Millis>>("last_renewal_ms")?
            .map(|t| t.0),
        id: row.get("id")?,
        username: row.get("username")?,
        owner: Owner {
            display_name: row.get("owner")?,
            subject: row.get("subject")?,
            token_accessor: row.get("token_accessor")?,
        },
        mount: row.get("mount")?,
        revoke_attempts: row.get("revoke_attempts")?,
        last_error: row.get("last_error")?,
    })
}

/// A row of `tokens` (all of [`TOKEN_COLUMNS`]).
fn token(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        identity: row.get::<_, Json<Identity>>("identity_json")?.0,
        issued_at: row.get::<_, Millis>("issued_at_ms")?.0,
        expires_at: row.get::<_, Millis>("expires_at_ms")?.0,
        max_expires_at: row.get::<_, Millis>("max_expires_at_ms")?.0,
        ttl: row.get::<_, Secs>("ttl_secs")?.0,
        accessor: row.get("accessor")?,
        hash: row.get("hash")?,
        mount: row.get("mount")?,
        role: row.get("role")?,
    })
}

/// Creates or replaces connection `conn` of `mount` (`allowed`: its allowed roles as JSON);
/// whether a row changed.
fn upsert_connection(
    c: &Connection,
    mount: &str,
    conn: &StoredConnection,
    allowed: &str,
) -> Result<bool, StoreError> {
    Ok(c.execute(
        "INSERT INTO connections (mount, name, connection_url, username, sealed_password, \
         allowed_roles_json, verify_connection, sealed_pending_password) VALUES (:mount, \
         :name, :connection_url, :username, :sealed_password, :allowed_roles_json, \
         :verify_connection, :sealed_pending_password) \
         ON CONFLICT (mount, name) DO UPDATE SET connection_url = excluded.connection_url, \
         username = excluded.username, sealed_password = excluded.sealed_password, \
         allowed_roles_json = excluded.allowed_roles_json, verify_connection = excluded.verify_connection, \
         sealed_pending_password = excluded.sealed_pending_password",
        named_params! {
            ":mount": mount,
            ":name": conn.name,
            ":connection_url": conn.connection_url,
            ":username": conn.username,
            ":sealed_password": conn.sealed_password,
            ":allowed_roles_json": allowed,
            ":verify_connection": conn.verify_connection,
            ":sealed_pending_password": conn.sealed_pending_password,
        },
    )? > 0)
}

/// A row of `connections`, with its mount.
fn connection(row: &Row<'_>) -> rusqlite::Result<(String, StoredConnection)> {
    Ok((
        row.get("mount")?,
        StoredConnection {
            allowed_roles: row.get::<_, Json<Vec<String>>>("allowed_roles_json")?.0,
            name: row.get("name")?,
            connection_url: row.get("connection_url")?,
            username: row.get("username")?,
            sealed_password: row.get("sealed_password")?,
            verify_connection: row.get("verify_connection")?,
            sealed_pending_password: row.get("sealed_pending_password")?,
        },
    ))
}

impl Columns for Row<'_> {
    fn int(&self, name: &str) -> Result<i64, StoreError> {
        Ok(self.get(name)?)
    }
    fn text(&self, name: &str) -> Result<String, StoreError> {
        Ok(self.get(name)?)
    }
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(name)?)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(name)?)
    }
    fn flag(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.get(name)?)
    }
}

/// Rows of `stmt` run with `params`, each read by `read`.
fn collect<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    read: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read(row)?);
    }
    Ok(out)
}

/// Inserts `record` into `audit` as it is.
fn insert_audit(c: &Connection, r: &AuditRecord) -> Result<(), StoreError> {
    c.prepare_cached(&format!(
        "INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?
    .execute(params![
        version_column(r.seq),
        Millis(r.event.time),
        r.event.actor,
        r.event.action,
        r.event.object,
        r.event.outcome.as_str(),
        r.event.request_id,
        r.event.detail,
        r.prev_hash,
        r.hash,
    ])?;
    Ok(())
}

impl SqliteStore {
    /// Writes static role `r` with `sql`, durably: its parameters ?1 to ?9 are the row's
    /// columns in [`STATIC_ROLE_COLUMNS`] order, ?10 `from_version` when given. Whether a row
    /// changed.
    async fn write_static_role(
        &self,
        sql: String,
        r: &StoredStaticRole,
        from_version: Option<u64>,
    ) -> Result<bool, StoreError> {
        let json = to_json("static role", &r.def)?;
        let r = r.clone();
        self.writer
            .write(DURABLE, move |c| {
                let version = version_column(r.version);
                let (last, next) = (r.last_rotation.map(Millis), Millis(r.next_rotation));
                let from = from_version.map(version_column);
                let mut values: Vec<&dyn ToSql> = vec![
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
                Ok(c.prepare_cached(&sql)?.execute(values.as_slice())? > 0)
            })
            .await
    }

    /// Records lease `l`, only while its connection is stored with `connection_url` when one
    /// is given; whether it was recorded.
    async fn insert_lease_if(
        &self,
        l: &Lease,
        connection_url: Option<String>,
    ) -> Result<bool, StoreError> {
        let role = to_json("role", &l.role)?;
        let l = l.clone();
        self.writer
            .write(DURABLE, move |c| {
                let values = ":id, :username, :owner, :mount, :role_json, :state, :issued_at_ms, \
                     :expires_at_ms, :max_expires_at_ms, :last_renewal_ms, :revoke_attempts, \
                     :last_error, :subject, :token_accessor, :revoke_reason";
                let sql = match connection_url {
                    None => format!("INSERT INTO leases ({LEASE_COLUMNS}) VALUES ({values})"),
                    Some(_) => format!(
                        "INSERT INTO leases ({LEASE_COLUMNS}) SELECT {values} WHERE EXISTS \
                         (SELECT 1 FROM connections WHERE mount = :mount AND name = :connection \
                         AND connection_url = :connection_url)"
                    ),
                };
                let mut statement = c.prepare_cached(&sql)?;
                let state = State(l.state);
                let reason = revoke_reason(l.state);
                let times = (
                    Millis(l.issued_at),
                    Millis(l.expires_at),
                    Millis(l.max_expires_at),
                );
                let last_renewal = l.last_renewal.map(Millis);
                let mut params: Vec<(&str, &dyn ToSql)> = vec![
                    (":id", &l.id),
                    (":username", &l.username),
                    (":owner", &l.owner.display_name),
                    (":mount", &l.mount),
                    (":role_json", &role),
                    (":state", &state),
                    (":revoke_reason", &reason),
                    (":issued_at_ms", &times.0),
                    (":expires_at_ms", &times.1),
                    (":max_expires_at_ms", &times.2),
                    (":last_renewal_ms", &last_renewal),
                    (":revoke_attempts", &l.revoke_attempts),
                    (":last_error", &l.last_error),
                    (":subject", &l.owner.subject),
                    (":token_accessor", &l.owner.token_accessor),
                ];
                if let Some(url) = &connection_url {
                    params.push((":connection", &l.role.db_name));
                    params.push((":connection_url", url));
                }
                Ok(statement.execute(params.as_slice())? > 0)
            })
            .await
    }

    /// Changes connection `name` of `mount` with `change` (returning whether a row changed),
    /// if it is the one `expect`ed and, when `unused` is asked, no lease has users through
    /// it. (The writer thread runs one write at a time.)
    async fn change_connection(
        &self,
        mount: &str,
        name: &str,
        expect: Expect,
        unused: bool,
        change: impl FnOnce(&Connection) -> Result<bool, StoreError> + Send + 'static,
    ) -> Result<ConnectionChange, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        self.writer
            .write(DURABLE, move |c| {
                let stored: Option<String> = c
                    .prepare_cached(
                        "SELECT connection_url FROM connections WHERE mount = ?1 AND name = ?2",
                    )?
                    .query_row([&mount, &name], |row| row.get(0))
                    .optional()?;
                if !expect.holds(stored.as_deref()) {
                    return Ok(ConnectionChange::Stale);
                }
                if unused {
                    let used: i64 = c
                        .prepare_cached(LEASES_VIA)?
                        .query_row([&mount, &name], |row| row.get(0))?;
                    if used > 0 {
                        return Ok(ConnectionChange::UsedBy(used.unsigned_abs()));
                    }
                }
                Ok(if change(c)? {
                    ConnectionChange::Changed
                } else {
                    ConnectionChange::Missing
                })
            })
            .await
    }

    /// Opens (creating if needed) `state.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join("state.db");
        let shown = path.display().to_string();
        let open_err = |source| StoreError::Open {
            path: shown.clone(),
            source,
        };
        let file_err = |source| StoreError::File {
            path: shown.clone(),
            source,
        };
        make_private_file(&path).map_err(file_err)?;
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        migrations::migrate(&mut conn).map_err(open_err)?;
        // Readers never wait for the writer in WAL mode, nor for its disk syncs.
        let reader = Connection::open(&path).map_err(open_err)?;
        reader
            .pragma_update(None, "query_only", true)
            .and_then(|()| reader.busy_timeout(BUSY_TIMEOUT))
            .map_err(open_err)?;
        Ok(SqliteStore {
            reader: Mutex::new(reader),
            writer: Writer::start(conn).map_err(file_err)?,
        })
    }

    /// Runs the query `f` on the read connection, on the caller's thread: reads are short
    /// lookups by key (a full scan only at start-up and for the rare sweeps), and in WAL mode
    /// they never wait for the writer or its disk syncs.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.reader.lock())
    }

    /// The token whose `column` (accessor or hash) equals `value`.
    fn token_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {column} = ?1"
            ))?
            .query_row([value], token)
            .optional()?)
        })
    }
}

/// The leases due for the reaper (see [`Store::due_lease_ids`]).
const DUE_LEASES: &str = "SELECT id FROM leases WHERE (state = 'active' AND expires_at_ms <= :now) \
     OR (state = 'revoking' AND (COALESCE(revoke_reason, '') <> 'rollback' OR issued_at_ms <= :stale)) \
     OR (state = 'pending' AND issued_at_ms <= :stale) ORDER BY expires_at_ms";

/// The ids of the leases of the token whose accessor is `?1`, in order.
const TOKEN_LEASE_IDS: &str = "SELECT id FROM leases WHERE token_accessor = ?1 ORDER BY id";

/// How many leases of mount `?1` have users made through its connection `?2`.
const LEASES_VIA: &str =
    "SELECT count(*) FROM leases WHERE mount = ?1 AND json_extract(role_json, '$.db_name') = ?2";

/// Durable writes: a new lease must survive power loss, or a committed user could go
/// untracked; so must tokens, definitions and failed revocations.
const DURABLE: bool = true;
/// Writes whose loss in a power cut errs on the safe side: an activation or renewal lost ends
/// a credential early; a deletion lost makes the revocation run again, finding the user gone.
const RELAXED: bool = false;

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_lease(&self, l: &Lease) -> Result<(), StoreError> {
        self.insert_lease_if(l, None).await.map(drop)
    }

    async fn insert_lease_via(&self, l: &Lease, connection_url: &str) -> Result<bool, StoreError> {
        self.insert_lease_if(l, Some(connection_url.to_string()))
            .await
    }

    async fn update_lease(
        &self,
        l: &Lease,
        from: LeaseState,
        durability: Durability,
    ) -> Result<bool, StoreError> {
        let durable = durability == Durability::Synced;
        let l = l.clone();
        self.writer
            .write(durable, move |c| {
                let changed = c
                    .prepare_cached(
                        "UPDATE leases SET state = :state, revoke_reason = :revoke_reason, \
                         expires_at_ms = :expires_at_ms, last_renewal_ms = :last_renewal_ms, \
                         revoke_attempts = :revoke_attempts, last_error = :last_error \
                         WHERE id = :id AND state = :from",
                    )?
                    .execute(named_params! {
                        ":id": l.id,
                        ":state": State(l.state),
                        ":revoke_reason": revoke_reason(l.state),
                        ":expires_at_ms": Millis(l.expires_at),
                        ":last_renewal_ms": l.last_renewal.map(Millis),
                        ":revoke_attempts": l.revoke_attempts,
                        ":last_error": l.last_error,
                        ":from": State(from),
                    })?;
                Ok(changed > 0)
            })
            .await
    }

    async fn delete_lease(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer
            .write(RELAXED, move |c| {
                c.prepare_cached("DELETE FROM leases WHERE id = ?1")?
                    .execute([id])?;
                Ok(())
            })
            .await
    }

    async fn get_lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1"))?
                    .query_row([id], lease)
                    .optional()?,
            )
        })
    }

    async fn lease_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id FROM leases WHERE id >= ?1 AND substr(id, 1, length(?1)) = ?1 ORDER BY id",
            )?;
            let ids = stmt.query_map([prefix], |row| row.get("id"))?.collect::<Result<_, _>>()?;
            Ok(ids)
        })
    }

    async fn all_leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases ORDER BY expires_at_ms"
            ))?;
            let leases = stmt.query_map([], lease)?.collect::<Result<_, _>>()?;
            Ok(leases)
        })
    }

    async fn due_lease_ids(
        &self,
        now: OffsetDateTime,
        stale: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(DUE_LEASES)?;
            let ids = stmt
                .query_map(
                    named_params! {":now": Millis(now), ":stale": Millis(stale)},
                    |row| row.get("id"),
                )?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
    }

    async fn lead(&self, _holder: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        // One process owns the file: it always leads.
        Ok(true)
    }

    async fn resign(&self, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_role(&self, mount: &str, role: &RoleDef) -> Result<(), StoreError> {
        let json = to_json("role", role)?;
        let (mount, name) = (mount.to_string(), role.name.clone());
        self.writer
            .write(DURABLE, move |c| {
                c.execute(
                    "INSERT INTO roles (mount, name, role_json) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (mount, name) DO UPDATE SET role_json = excluded.role_json",
                    params![mount, name, json],
                )?;
                Ok(())
            })
            .await
    }

    async fn delete_role(&self, mount: &str, name: &str) -> Result<bool, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        self.writer
            .write(DURABLE, move |c| {
                Ok(c.execute(
                    "DELETE FROM roles WHERE mount = ?1 AND name = ?2",
                    [mount, name],
                )? > 0)
            })
            .await
    }

    async fn roles(&self) -> Result<Vec<(String, RoleDef)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT mount, role_json FROM roles ORDER BY mount, name")?;
            let roles = stmt
                .query_map([], |row| {
                    Ok((
                        row.get("mount")?,
                        row.get::<_, Json<RoleDef>>("role_json")?.0,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            Ok(roles)
        })
    }

    async fn put_connection(&self, mount: &str, conn: &StoredConnection) -> Result<(), StoreError> {
        let allowed = to_json("allowed_roles list", &conn.allowed_roles)?;
        let (mount, conn) = (mount.to_string(), conn.clone());
        self.writer
            .write(DURABLE, move |c| {
                upsert_connection(c, &mount, &conn, &allowed).map(drop)
            })
            .await
    }

    async fn write_connection(
        &self,
        mount: &str,
        conn: &StoredConnection,
        expected_url: Option<&str>,
        moves: bool,
    ) -> Result<ConnectionChange, StoreError> {
        let allowed = to_json("allowed_roles list", &conn.allowed_roles)?;
        let expect = Expect::Url(expected_url.map(str::to_string));
        let (owned_mount, conn) = (mount.to_string(), conn.clone());
        self.change_connection(mount, &conn.name.clone(), expect, moves, move |c| {
            upsert_connection(c, &owned_mount, &conn, &allowed)
        })
        .await
    }

    async fn delete_connection(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<ConnectionChange, StoreError> {
        let (owned_mount, owned_name) = (mount.to_string(), name.to_string());
        self.change_connection(mount, name, Expect::Any, true, move |c| {
            Ok(c.execute(
                "DELETE FROM connections WHERE mount = ?1 AND name = ?2",
                [owned_mount, owned_name],
            )? > 0)
        })
        .await
    }

    async fn connections(&self) -> Result<Vec<(String, StoredConnection)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT mount, name, connection_url, username, sealed_password, allowed_roles_json, \
                 verify_connection, sealed_pending_password FROM connections ORDER BY mount, name",
            )?;
            let connections = stmt.query_map([], connection)?.collect::<Result<_, _>>()?;
            Ok(connections)
        })
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let identity = to_json("token identity", &t.identity)?;
        let t = t.clone();
        self.writer
            .write(DURABLE, move |c| {
                c.prepare_cached(&format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (:accessor, :hash, :identity_json, \
                     :mount, :role, :issued_at_ms, :expires_at_ms, :max_expires_at_ms, :ttl_secs)"
                ))?
                .execute(named_params! {
                    ":accessor": t.accessor,
                    ":hash": t.hash,
                    ":identity_json": identity,
                    ":mount": t.mount,
                    ":role": t.role,
                    ":issued_at_ms": Millis(t.issued_at),
                    ":expires_at_ms": Millis(t.expires_at),
                    ":max_expires_at_ms": Millis(t.max_expires_at),
                    ":ttl_secs": Secs(t.ttl),
                })?;
                Ok(())
            })
            .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.token_where("hash", hash)
    }

    async fn token_by_accessor(&self, accessor: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.token_where("accessor", accessor)
    }

    async fn set_token_expiry(
        &self,
        accessor: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let accessor = accessor.to_string();
        self.writer
            .write(DURABLE, move |c| {
                c.prepare_cached("UPDATE tokens SET expires_at_ms = ?2 WHERE accessor = ?1")?
                    .execute(params![accessor, Millis(expires_at)])?;
                Ok(())
            })
            .await
    }

    async fn delete_token(&self, accessor: &str) -> Result<bool, StoreError> {
        let accessor = accessor.to_string();
        self.writer
            .write(DURABLE, move |c| {
                Ok(c.prepare_cached("DELETE FROM tokens WHERE accessor = ?1")?
                    .execute([accessor])?
                    > 0)
            })
            .await
    }

    async fn revoke_token(&self, accessor: &str) -> Result<Vec<String>, StoreError> {
        let accessor = accessor.to_string();
        self.writer
            .write(DURABLE, move |c| {
                // One job: its savepoint makes the statements one change.
                c.prepare_cached("DELETE FROM tokens WHERE accessor = ?1")?
                    .execute([&accessor])?;
                c.prepare_cached(&mark_token_leases("leases", "?1"))?
                    .execute([&accessor])?;
                let mut stmt = c.prepare_cached(TOKEN_LEASE_IDS)?;
                let ids = stmt
                    .query_map([&accessor], |row| row.get("id"))?
                    .collect::<Result<_, _>>()?;
                Ok(ids)
            })
            .await
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY accessor"
            ))?;
            let tokens = stmt.query_map([], token)?.collect::<Result<_, _>>()?;
            Ok(tokens)
        })
    }

    async fn delete_expired_tokens(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        self.writer
            .write(DURABLE, move |c| {
                Ok(c.execute("DELETE FROM tokens WHERE expires_at_ms < ?1", [Millis(now)])?)
            })
            .await
    }

    async fn insert_static_role(&self, r: &StoredStaticRole) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO static_roles ({STATIC_ROLE_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING"
        );
        self.write_static_role(sql, r, None).await
    }

    async fn update_static_role(
        &self,
        r: &StoredStaticRole,
        from_version: u64,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE static_roles SET version = ?3, role_json = ?4, sealed_password = ?5, \
                   sealed_pending = ?6, last_rotation_ms = ?7, next_rotation_ms = ?8, \
                   from_file = ?9 WHERE mount = ?1 AND name = ?2 AND version = ?10";
        self.write_static_role(sql.to_string(), r, Some(from_version))
            .await
    }

    async fn delete_static_role(
        &self,
        mount: &str,
        name: &str,
        from_version: u64,
    ) -> Result<bool, StoreError> {
        let (mount, name) = (mount.to_string(), name.to_string());
        self.writer
            .write(DURABLE, move |c| {
                let deleted = c
                    .prepare_cached(
                        "DELETE FROM static_roles WHERE mount = ?1 AND name = ?2 AND version = ?3",
                    )?
                    .execute(params![mount, name, version_column(from_version)])?;
                Ok(deleted > 0)
            })
            .await
    }

    async fn get_static_role(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Option<StoredStaticRole>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {STATIC_ROLE_COLUMNS} FROM static_roles WHERE mount = ?1 AND name = ?2"
            ))?;
            Ok(collect(&mut stmt, [mount, name], |row| static_role_from(row))?.pop())
        })
    }

    async fn static_roles(&self) -> Result<Vec<StoredStaticRole>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {STATIC_ROLE_COLUMNS} FROM static_roles ORDER BY mount, name"
            ))?;
            collect(&mut stmt, [], |row| static_role_from(row))
        })
    }

    async fn insert_request(&self, r: &StoredRequest) -> Result<(), StoreError> {
        let json = to_json("access request", &r.request)?;
        let r = r.clone();
        self.writer
            .write(DURABLE, move |c| {
                c.prepare_cached(&format!(
                    "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ))?
                .execute(params![
                    r.request.id,
                    version_column(r.request.version),
                    r.request.state.as_str(),
                    Millis(r.request.created_at),
                    json,
                    r.sealed_credential,
                ])?;
                Ok(())
            })
            .await
    }

    async fn update_request(
        &self,
        r: &StoredRequest,
        from_version: u64,
    ) -> Result<bool, StoreError> {
        let json = to_json("access request", &r.request)?;
        let r = r.clone();
        self.writer
            .write(DURABLE, move |c| {
                let changed = c
                    .prepare_cached(
                        "UPDATE requests SET version = ?2, state = ?3, request_json = ?4, \
                         sealed_credential = ?5 WHERE id = ?1 AND version = ?6",
                    )?
                    .execute(params![
                        r.request.id,
                        version_column(r.request.version),
                        r.request.state.as_str(),
                        json,
                        r.sealed_credential,
                        version_column(from_version),
                    ])?;
                Ok(changed > 0)
            })
            .await
    }

    async fn delete_request(&self, id: &str, version: u64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.writer
            .write(DURABLE, move |c| {
                let deleted = c
                    .prepare_cached("DELETE FROM requests WHERE id = ?1 AND version = ?2")?
                    .execute(params![id, version_column(version)])?;
                Ok(deleted > 0)
            })
            .await
    }

    async fn get_request(&self, id: &str) -> Result<Option<StoredRequest>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"
            ))?;
            Ok(collect(&mut stmt, [id], |row| request_from(row))?.pop())
        })
    }

    async fn all_requests(&self) -> Result<Vec<StoredRequest>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests ORDER BY created_at_ms DESC, id"
            ))?;
            collect(&mut stmt, [], |row| request_from(row))
        })
    }

    async fn append_audit(
        &self,
        events: &[AuditEvent],
        durability: Durability,
        key: Option<&ChainKey>,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (events, key) = (events.to_vec(), key.cloned());
        self.writer
            .write(durability == Durability::Synced, move |c| {
                // The writer runs one write at a time (its connection is behind a mutex):
                // nothing appends in between.
                let last: Option<(i64, String)> = c
                    .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let (mut seq, mut prev) = last
                    .map(|(seq, hash)| (u64::try_from(seq).unwrap_or(0), hash))
                    .unwrap_or((0, GENESIS_HASH.to_string()));
                let mut records = Vec::with_capacity(events.len());
                for event in events {
                    seq = seq.saturating_add(1);
                    let record = AuditRecord::chain(seq, event, &prev, key.as_ref());
                    insert_audit(c, &record)?;
                    prev.clone_from(&record.hash);
                    records.push(record);
                }
                Ok(records)
            })
            .await
    }

    async fn audit_records(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ?1 \
                 AND (?2 IS NULL OR time_ms >= ?2) AND (?3 IS NULL OR actor = ?3) \
                 AND (?4 IS NULL OR action = ?4) ORDER BY seq LIMIT ?5"
            ))?;
            collect(
                &mut stmt,
                params![
                    version_column(q.after),
                    q.since.map(Millis),
                    q.actor,
                    q.action,
                    i64::try_from(q.limit).unwrap_or(i64::MAX),
                ],
                |row| audit_from(row),
            )
        })
    }

    async fn import_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let records = records.to_vec();
        self.writer
            .write(DURABLE, move |c| {
                records.iter().try_for_each(|r| insert_audit(c, r))
            })
            .await
    }
}

/// Creates `path` with mode 0600, or narrows an existing file to it. SQLite gives its WAL and
/// shared-memory files the database file's mode, so they stay private too.
fn make_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::{RevokeReason, RoleSpec};
    use time::macros::datetime;

    #[tokio::test]
    async fn state_files_are_private_even_when_created_loose() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = SqliteStore::open(dir.path()).unwrap();
        store.all_leases().await.unwrap();
        assert_eq!(mode(&db), 0o600);
        for name in ["state.db-wal", "state.db-shm"] {
            let file = dir.path().join(name);
            if file.exists() {
                assert_eq!(mode(&file), 0o600, "{name}");
            }
        }
        drop(store);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        SqliteStore::open(dir.path()).unwrap();
        assert_eq!(mode(&db), 0o600, "an existing loose file is narrowed");
    }

    fn role() -> RoleDef {
        serde_json::from_str::<RoleSpec>(
            r#"{"db_name":"appdb","preset":"readonly","default_ttl":60,"max_ttl":600}"#,
        )
        .unwrap()
        .into_def("ro")
        .unwrap()
    }

    /// A pending lease of the root token, for role [`role`], issued at `t0`.
    fn root_lease(username: &str, t0: OffsetDateTime) -> Lease {
        Lease::new_pending(
            "database",
            &role(),
            username.into(),
            Owner::root(),
            Ttl::default(),
            t0,
        )
    }

    #[tokio::test]
    async fn values_that_do_not_decode_are_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let t0 = datetime!(2026-11-22 10:00:00 UTC);
        let lease = root_lease("u", t0);
        store.insert_lease(&lease).await.unwrap();
        let raw = Connection::open(dir.path().join("state.db")).unwrap();
        let sql = |sql: &str| raw.execute_batch(sql).unwrap();
        fn corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>) -> (&'static str, String) {
            match result {
                Err(StoreError::Corrupt { what, reason }) => (what, reason),
                other => panic!("not corrupt: {other:?}"),
            }
        }

        sql("UPDATE leases SET state = 'bogus'");
        assert_eq!(
            corrupt(store.get_lease(&lease.id).await),
            ("lease state", "bogus".to_string())
        );
        assert_eq!(corrupt(store.all_leases().await).0, "lease state");
        sql("UPDATE leases SET state = 'revoking', revoke_reason = 'bored'");
        assert_eq!(
            corrupt(store.get_lease(&lease.id).await),
            ("lease state", "revoking (bored)".to_string())
        );
        // Stored before reasons were kept.
        sql("UPDATE leases SET revoke_reason = NULL");
        assert_eq!(
            store.get_lease(&lease.id).await.unwrap().unwrap().state,
            LeaseState::Revoking(RevokeReason::Requested)
        );
        sql("UPDATE leases SET state = 'active', role_json = '{'");
        assert_eq!(corrupt(store.get_lease(&lease.id).await).0, "role");
        sql(&format!(
            "UPDATE leases SET role_json = '{}', last_renewal_ms = {}",
            to_json("role", &role()).unwrap(),
            i64::MAX
        ));
        assert_eq!(corrupt(store.get_lease(&lease.id).await).0, "timestamp");
        sql("UPDATE leases SET last_renewal_ms = NULL, revoke_attempts = -1");
        assert!(matches!(
            store.get_lease(&lease.id).await,
            Err(StoreError::Sqlite(_))
        ));

        sql("INSERT INTO roles VALUES ('database', 'x', 'null')");
        assert_eq!(corrupt(store.roles().await).0, "role");
        sql("INSERT INTO connections VALUES ('database', 'c', 'u', 'a', x'00', '{}', 1, NULL)");
        assert_eq!(corrupt(store.connections().await).0, "connection");
        sql("INSERT INTO tokens VALUES ('acc', 'h', '[]', 'kubernetes', 'r', 0, 0, 0, 60)");
        assert_eq!(
            corrupt(store.token_by_accessor("acc").await).0,
            "token identity"
        );
    }
}
