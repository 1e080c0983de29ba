//! The embedded backend: one SQLite file in WAL mode in the data directory.

use crate::{Store, StoreError, StoredConnection, migrations};
use pgwarden_core::{Identity, Lease, LeaseState, Owner, RoleDef, TokenRecord, Ttl};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::Mutex;
use time::OffsetDateTime;

/// A [`Store`] in one SQLite file. Safe against a killed process and against power loss: every
/// write is committed to the write-ahead log and synced to disk before the call returns.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const LEASE_COLUMNS: &str = "id, username, owner, mount, role_json, state, issued_at_ms, expires_at_ms, \
     max_expires_at_ms, last_renewal_ms, revoke_attempts, last_error, subject, token_accessor";
const TOKEN_COLUMNS: &str = "accessor, hash, identity_json, mount, role, issued_at_ms, expires_at_ms, max_expires_at_ms, ttl_secs";

fn millis(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
        .saturating_mul(1000)
        .saturating_add(i64::from(t.millisecond()))
}

fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms).saturating_mul(1_000_000)).map_err(
        |e| StoreError::Corrupt {
            what: "timestamp",
            reason: e.to_string(),
        },
    )
}

/// `value` as JSON for a column.
fn to_json(what: &'static str, value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

fn role_json(role: &RoleDef) -> Result<String, StoreError> {
    to_json("role", role)
}

fn parse_role(json: &str) -> Result<RoleDef, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        what: "role",
        reason: e.to_string(),
    })
}

/// The raw columns of a lease row, converted after the SQLite borrow ends.
type LeaseRow = (
    (String, String, String, String, String, String),
    (i64, i64, i64, Option<i64>, u32, Option<String>),
    (String, Option<String>),
);

fn lease_row(row: &Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok((
        (
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
        ),
        (
            row.get(6)?,
            row.get(7)?,
            row.get(8)?,
            row.get(9)?,
            row.get(10)?,
            row.get(11)?,
        ),
        (row.get(12)?, row.get(13)?),
    ))
}

fn lease_from_row(r: LeaseRow) -> Result<Lease, StoreError> {
    let (
        (id, username, display_name, mount, role, state),
        (issued, expires, max_expires, renewed, attempts, last_error),
        (subject, token_accessor),
    ) = r;
    Ok(Lease {
        state: LeaseState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            what: "lease state",
            reason: state.clone(),
        })?,
        role: parse_role(&role)?,
        issued_at: from_millis(issued)?,
        expires_at: from_millis(expires)?,
        max_expires_at: from_millis(max_expires)?,
        last_renewal: renewed.map(from_millis).transpose()?,
        id,
        username,
        owner: Owner {
            display_name,
            subject,
            token_accessor,
        },
        mount,
        revoke_attempts: attempts,
        last_error,
    })
}

/// The raw columns of a token row.
type TokenRow = (String, String, String, String, String, i64, i64, i64, i64);

fn token_from_row(r: TokenRow) -> Result<TokenRecord, StoreError> {
    let (accessor, hash, identity, mount, role, issued, expires, max_expires, ttl) = r;
    let identity: Identity = serde_json::from_str(&identity).map_err(|e| StoreError::Corrupt {
        what: "token identity",
        reason: e.to_string(),
    })?;
    Ok(TokenRecord {
        accessor,
        hash,
        identity,
        mount,
        role,
        issued_at: from_millis(issued)?,
        expires_at: from_millis(expires)?,
        max_expires_at: from_millis(max_expires)?,
        ttl: Ttl::from_secs(ttl.max(0) as u64),
    })
}

impl SqliteStore {
    /// The token whose `column` (accessor or hash) equals `value`.
    fn token_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row: Option<TokenRow> = self.with(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {column} = ?1"
            ))?
            .query_row([value], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .optional()?)
        })?;
        row.map(token_from_row).transpose()
    }

    /// Opens (creating if needed) `state.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join("state.db");
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        make_private_file(&path).map_err(|source| StoreError::File {
            path: path.display().to_string(),
            source,
        })?;
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a lease row must survive power loss, or a committed user could go untracked.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&mut conn).map_err(open_err)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }
}

impl Store for SqliteStore {
    fn insert_lease(&self, l: &Lease) -> Result<(), StoreError> {
        let role = role_json(&l.role)?;
        self.with(|c| {
            c.prepare_cached(&format!(
                "INSERT INTO leases ({LEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?
            .execute(params![
                l.id,
                l.username,
                l.owner.display_name,
                l.mount,
                role,
                l.state.as_str(),
                millis(l.issued_at),
                millis(l.expires_at),
                millis(l.max_expires_at),
                l.last_renewal.map(millis),
                l.revoke_attempts,
                l.last_error,
                l.owner.subject,
                l.owner.token_accessor,
            ])?;
            Ok(())
        })
    }

    fn update_lease(&self, l: &Lease) -> Result<bool, StoreError> {
        self.with(|c| {
            let changed = c
                .prepare_cached(
                    "UPDATE leases SET state = ?2, expires_at_ms = ?3, last_renewal_ms = ?4, \
                 revoke_attempts = ?5, last_error = ?6 WHERE id = ?1",
                )?
                .execute(params![
                    l.id,
                    l.state.as_str(),
                    millis(l.expires_at),
                    l.last_renewal.map(millis),
                    l.revoke_attempts,
                    l.last_error,
                ])?;
            Ok(changed > 0)
        })
    }

    fn delete_lease(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM leases WHERE id = ?1")?
                .execute([id])?;
            Ok(())
        })
    }

    fn get_lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        let row = self.with(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = ?1"))?
                    .query_row([id], lease_row)
                    .optional()?,
            )
        })?;
        row.map(lease_from_row).transpose()
    }

    fn lease_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id FROM leases WHERE id >= ?1 AND substr(id, 1, length(?1)) = ?1 ORDER BY id",
            )?;
            let ids = stmt.query_map([prefix], |row| row.get(0))?.collect::<Result<_, _>>()?;
            Ok(ids)
        })
    }

    fn lease_ids_for_token(&self, accessor: &str) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT id FROM leases WHERE token_accessor = ?1 ORDER BY id")?;
            let ids = stmt
                .query_map([accessor], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
    }

    fn all_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let rows: Vec<LeaseRow> = self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {LEASE_COLUMNS} FROM leases ORDER BY expires_at_ms"
            ))?;
            let rows = stmt.query_map([], lease_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })?;
        rows.into_iter().map(lease_from_row).collect()
    }

    fn put_role(&self, mount: &str, role: &RoleDef) -> Result<(), StoreError> {
        let json = role_json(role)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO roles (mount, name, role_json) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (mount, name) DO UPDATE SET role_json = excluded.role_json",
                params![mount, role.name, json],
            )?;
            Ok(())
        })
    }

    fn delete_role(&self, mount: &str, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM roles WHERE mount = ?1 AND name = ?2",
                [mount, name],
            )? > 0)
        })
    }

    fn roles(&self) -> Result<Vec<(String, RoleDef)>, StoreError> {
        let rows: Vec<(String, String)> = self.with(|c| {
            let mut stmt = c.prepare("SELECT mount, role_json FROM roles ORDER BY mount, name")?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(mount, json)| Ok((mount, parse_role(&json)?)))
            .collect()
    }

    fn put_connection(&self, mount: &str, conn: &StoredConnection) -> Result<(), StoreError> {
        let allowed = to_json("allowed_roles list", &conn.allowed_roles)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO connections (mount, name, connection_url, username, sealed_password, \
                 allowed_roles_json, verify_connection) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (mount, name) DO UPDATE SET connection_url = excluded.connection_url, \
                 username = excluded.username, sealed_password = excluded.sealed_password, \
                 allowed_roles_json = excluded.allowed_roles_json, verify_connection = excluded.verify_connection",
                params![
                    mount,
                    conn.name,
                    conn.connection_url,
                    conn.username,
                    conn.sealed_password,
                    allowed,
                    conn.verify_connection
                ],
            )?;
            Ok(())
        })
    }

    fn delete_connection(&self, mount: &str, name: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM connections WHERE mount = ?1 AND name = ?2",
                [mount, name],
            )? > 0)
        })
    }

    fn connections(&self) -> Result<Vec<(String, StoredConnection)>, StoreError> {
        type Raw = (String, String, String, String, Vec<u8>, String, bool);
        let rows: Vec<Raw> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT mount, name, connection_url, username, sealed_password, allowed_roles_json, \
                 verify_connection FROM connections ORDER BY mount, name",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(
                |(
                    mount,
                    name,
                    connection_url,
                    username,
                    sealed_password,
                    allowed,
                    verify_connection,
                )| {
                    let allowed_roles =
                        serde_json::from_str(&allowed).map_err(|e| StoreError::Corrupt {
                            what: "connection",
                            reason: e.to_string(),
                        })?;
                    Ok((
                        mount,
                        StoredConnection {
                            name,
                            connection_url,
                            username,
                            sealed_password,
                            allowed_roles,
                            verify_connection,
                        },
                    ))
                },
            )
            .collect()
    }

    fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        let identity = to_json("token identity", &t.identity)?;
        self.with(|c| {
            c.prepare_cached(&format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                t.accessor,
                t.hash,
                identity,
                t.mount,
                t.role,
                millis(t.issued_at),
                millis(t.expires_at),
                millis(t.max_expires_at),
                t.ttl.as_secs() as i64,
            ])?;
            Ok(())
        })
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.token_where("hash", hash)
    }

    fn token_by_accessor(&self, accessor: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.token_where("accessor", accessor)
    }

    fn set_token_expiry(
        &self,
        accessor: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.prepare_cached("UPDATE tokens SET expires_at_ms = ?2 WHERE accessor = ?1")?
                .execute(params![accessor, millis(expires_at)])?;
            Ok(())
        })
    }

    fn delete_token(&self, accessor: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.prepare_cached("DELETE FROM tokens WHERE accessor = ?1")?
                .execute([accessor])?
                > 0)
        })
    }

    fn delete_expired_tokens(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM tokens WHERE expires_at_ms < ?1", [millis(now)])?))
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
    use pgwarden_core::RoleSpec;
    use time::macros::datetime;

    #[test]
    fn state_files_are_private_even_when_created_loose() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = SqliteStore::open(dir.path()).unwrap();
        store.all_leases().unwrap();
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

    #[test]
    fn leases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = datetime!(2026-11-22 10:00:00.123 UTC);
        let mut lease = Lease::new_pending(
            "database",
            &role(),
            "v-x".into(),
            Owner::root(),
            Ttl::default(),
            t0,
        );
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store.insert_lease(&lease).unwrap();
            lease.state = LeaseState::Revoking;
            lease.revoke_attempts = 2;
            lease.last_error = Some("boom".into());
            store.update_lease(&lease).unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.get_lease(&lease.id).unwrap(), Some(lease.clone()));
        assert_eq!(store.all_leases().unwrap(), vec![lease.clone()]);
        assert_eq!(
            store.lease_ids_with_prefix("database/creds/").unwrap(),
            vec![lease.id.clone()]
        );
        assert!(
            store
                .lease_ids_with_prefix("database/creds/r_")
                .unwrap()
                .is_empty()
        );
        store.delete_lease(&lease.id).unwrap();
        assert_eq!(store.get_lease(&lease.id).unwrap(), None);
    }

    #[test]
    fn tokens_round_trip_and_find_their_leases() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let t0 = datetime!(2026-11-22 10:00:00 UTC);
        let token = TokenRecord {
            accessor: "acc1".into(),
            hash: "h1".into(),
            identity: Identity {
                subject: "system:serviceaccount:a:b".into(),
                groups: vec![],
                display_name: "kubernetes-a-b".into(),
                metadata: Default::default(),
            },
            mount: "kubernetes".into(),
            role: "r".into(),
            issued_at: t0,
            expires_at: t0 + std::time::Duration::from_secs(60),
            max_expires_at: t0 + std::time::Duration::from_secs(600),
            ttl: Ttl::from_secs(60),
        };
        store.insert_token(&token).unwrap();
        assert_eq!(store.token_by_hash("h1").unwrap(), Some(token.clone()));
        let owner = Owner {
            display_name: "kubernetes-a-b".into(),
            subject: token.identity.subject.clone(),
            token_accessor: Some("acc1".into()),
        };
        let lease = Lease::new_pending("database", &role(), "u".into(), owner, Ttl::default(), t0);
        store.insert_lease(&lease).unwrap();
        assert_eq!(
            store.get_lease(&lease.id).unwrap().unwrap().owner,
            lease.owner
        );
        assert_eq!(
            store.lease_ids_for_token("acc1").unwrap(),
            vec![lease.id.clone()]
        );
        store
            .set_token_expiry("acc1", t0 + std::time::Duration::from_secs(120))
            .unwrap();
        assert_eq!(
            store.token_by_accessor("acc1").unwrap().unwrap().expires_at,
            t0 + std::time::Duration::from_secs(120)
        );
        assert_eq!(
            store
                .delete_expired_tokens(t0 + std::time::Duration::from_secs(121))
                .unwrap(),
            1
        );
        assert!(!store.delete_token("acc1").unwrap());
    }

    #[test]
    fn prefix_matching_is_literal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let t0 = datetime!(2026-11-22 10:00:00 UTC);
        let mut a = Lease::new_pending(
            "database",
            &role(),
            "a".into(),
            Owner::root(),
            Ttl::default(),
            t0,
        );
        a.id = "database/creds/a%/1".into();
        let mut b = Lease::new_pending(
            "database",
            &role(),
            "b".into(),
            Owner::root(),
            Ttl::default(),
            t0,
        );
        b.id = "database/creds/ab/1".into();
        store.insert_lease(&a).unwrap();
        store.insert_lease(&b).unwrap();
        assert_eq!(
            store.lease_ids_with_prefix("database/creds/a%").unwrap(),
            vec![a.id]
        );
    }

    #[test]
    fn roles_and_connections_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        store.put_role("database", &role()).unwrap();
        store.put_role("database", &role()).unwrap();
        assert_eq!(
            store.roles().unwrap(),
            vec![("database".to_string(), role())]
        );
        assert!(store.delete_role("database", "ro").unwrap());
        assert!(!store.delete_role("database", "ro").unwrap());
        let conn = StoredConnection {
            name: "appdb".into(),
            connection_url: "postgresql://h/db".into(),
            username: "admin".into(),
            sealed_password: vec![1, 2, 3],
            allowed_roles: vec!["appdb-*".into()],
            verify_connection: true,
        };
        store.put_connection("database", &conn).unwrap();
        assert_eq!(
            store.connections().unwrap(),
            vec![("database".to_string(), conn)]
        );
        assert!(store.delete_connection("database", "appdb").unwrap());
        assert!(store.connections().unwrap().is_empty());
    }
}
