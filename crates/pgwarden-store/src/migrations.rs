//! Schema migrations, applied in order and tracked in SQLite's `user_version`.

use rusqlite::Connection;

/// Each entry upgrades the schema by one version; never edit one that has shipped, append.
const MIGRATIONS: &[&str] = &[
    // 1: leases, roles, connections.
    "CREATE TABLE leases (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        owner TEXT NOT NULL,
        mount TEXT NOT NULL,
        role_json TEXT NOT NULL,
        state TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        max_expires_at_ms INTEGER NOT NULL,
        last_renewal_ms INTEGER,
        revoke_attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    ) WITHOUT ROWID;
    CREATE TABLE roles (
        mount TEXT NOT NULL,
        name TEXT NOT NULL,
        role_json TEXT NOT NULL,
        PRIMARY KEY (mount, name)
    ) WITHOUT ROWID;
    CREATE TABLE connections (
        mount TEXT NOT NULL,
        name TEXT NOT NULL,
        connection_url TEXT NOT NULL,
        username TEXT NOT NULL,
        sealed_password BLOB NOT NULL,
        allowed_roles_json TEXT NOT NULL,
        verify_connection INTEGER NOT NULL,
        PRIMARY KEY (mount, name)
    ) WITHOUT ROWID;",
    // 2: lease ownership by identity and token; tokens (hashes only).
    "ALTER TABLE leases ADD COLUMN subject TEXT NOT NULL DEFAULT 'root';
    ALTER TABLE leases ADD COLUMN token_accessor TEXT;
    CREATE INDEX leases_by_token ON leases (token_accessor) WHERE token_accessor IS NOT NULL;
    CREATE TABLE tokens (
        accessor TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        identity_json TEXT NOT NULL,
        mount TEXT NOT NULL,
        role TEXT NOT NULL,
        issued_at_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        max_expires_at_ms INTEGER NOT NULL,
        ttl_secs INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: access requests and the audit chain.
    "CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        request_json TEXT NOT NULL,
        sealed_credential BLOB
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        outcome TEXT NOT NULL,
        request_id TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit (time_ms);",
    // 4: static roles.
    "CREATE TABLE static_roles (
        mount TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        role_json TEXT NOT NULL,
        sealed_password BLOB,
        sealed_pending BLOB,
        last_rotation_ms INTEGER,
        next_rotation_ms INTEGER NOT NULL,
        from_file INTEGER NOT NULL,
        PRIMARY KEY (mount, name)
    ) WITHOUT ROWID;",
    // 5: a connection's administrative password being rotated.
    "ALTER TABLE connections ADD COLUMN sealed_pending_password BLOB;",
    // 6: why a lease's revocation began (NULL before: counted as requested).
    "ALTER TABLE leases ADD COLUMN revoke_reason TEXT;",
];

/// Brings the schema up to date inside one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index as i64).saturating_add(1))?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_harmless() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }
}
