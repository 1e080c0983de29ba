//! `pgwarden audit verify`: the audit chain a running server wrote verifies, on SQLite and on
//! shared PostgreSQL state; after a record is edited or deleted in the store, it fails and
//! names exactly that record. With a seal key, records are keyed, and a rewrite by someone
//! without the key is told apart.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use std::path::Path;
use std::process::Command;

fn verify(config: &Path) -> (bool, String, String) {
    verify_with(config, &[])
}

/// `audit verify` with `more` arguments.
fn verify_with(config: &Path, more: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .args(more)
        .envs(APPDB_ENV)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a server on `config`, leaves a few audit records (issue, revoke, a refused call).
async fn make_records(config: &Path) {
    let server = spawn_server(config, free_port(), &APPDB_ENV).await;
    for _ in 0..3 {
        let (status, lease) =
            call(&server.base, ROOT, "GET", "database/creds/appdb-ro", None).await;
        assert_eq!(status, 200, "{lease}");
        let id = lease["lease_id"].as_str().unwrap();
        let path = format!("sys/leases/revoke/{id}");
        assert_eq!(call(&server.base, ROOT, "PUT", &path, None).await.0, 204);
    }
    let (status, _) = call(
        &server.base,
        "wrong",
        "GET",
        "database/creds/appdb-ro",
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Verifying beside the running server works too.
    let (ok, stdout, stderr) = verify(config);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("audit log intact: "), "{stdout}");
}

/// The record count and last hash an intact chain's check printed.
fn count_and_last_hash(stdout: &str) -> (u64, String) {
    let rest = stdout.trim().strip_prefix("audit log intact: ").unwrap();
    let (count, hash) = rest.split_once(" records, last hash ").unwrap();
    (count.parse().unwrap(), hash.to_string())
}

/// Cuts the last record, then alters record 3, then (restored) deletes record 5, through
/// `sql`, checking each report.
async fn tamper_and_check(config: &Path, sql: impl AsyncFn(&str)) {
    let (ok, stdout, _) = verify(config);
    assert!(ok);
    let (count, last) = count_and_last_hash(&stdout);

    // Cut from the end: the chain left verifies, but not against the last hash known.
    sql(&format!("DELETE FROM {{audit}} WHERE seq = {count}")).await;
    let (ok, stdout, stderr) = verify(config);
    assert!(ok, "{stderr}");
    let (shorter, earlier) = count_and_last_hash(&stdout);
    assert_eq!(shorter, count - 1);
    assert!(verify_with(config, &["--known-hash", &earlier]).0);
    // As pasted: case and surrounding blanks do not matter; an empty chain's hash is known.
    let pasted = format!(" {} ", earlier.to_uppercase());
    assert!(verify_with(config, &["--known-hash", &pasted]).0);
    let genesis = pgwarden_core::audit::GENESIS_HASH;
    assert!(verify_with(config, &["--known-hash", genesis]).0);
    let (ok, _, stderr) = verify_with(config, &["--known-hash", &last]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: no audit record has hash {last}: records were cut from the chain's end, or \
             the chain was replaced, since that hash was printed (records 1 to {shorter} verify)"
        )
    );

    // Record 3 moved a millisecond: altered, and moving it back restores it.
    sql("UPDATE {audit} SET time_ms = time_ms + 1 WHERE seq = 3").await;
    let (ok, _, stderr) = verify(config);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: audit record 3 was altered: its contents do not match its hash (records 1 to 2 verify)"
    );
    sql("UPDATE {audit} SET time_ms = time_ms - 1 WHERE seq = 3").await;
    assert!(verify(config).0, "restored");

    sql("DELETE FROM {audit} WHERE seq = 5").await;
    let (ok, _, stderr) = verify(config);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: audit record(s) 5 to 5 were removed: record 6 follows record 4 (records 1 to 4 verify)"
    );
}

const ROLES: &str =
    "      appdb-ro: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_chain_verifies_and_tampering_is_named() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let top = format!("data_dir: \"{}\"", data.display());
    let config = write_config(dir.path(), "sqlite.yaml", &cluster, &top, ROLES);
    make_records(&config).await;
    let file = data.join("state.db");
    tamper_and_check(&config, async |sql: &str| {
        let db = rusqlite::Connection::open(&file).unwrap();
        db.execute(&sql.replace("{audit}", "audit"), []).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_chain_verifies_and_tampering_is_named() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE state").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let top = format!(
        "state: {{ postgresql: {{ url: \"{}\" }} }}",
        cluster.superuser_url("state")
    );
    let config = write_config(dir.path(), "shared.yaml", &cluster, &top, ROLES);
    make_records(&config).await;
    let state = cluster.connect_superuser("state").await.unwrap();
    tamper_and_check(&config, async |sql: &str| {
        state
            .batch_execute(&sql.replace("{audit}", "pgwarden_audit"))
            .await
            .unwrap();
    })
    .await;
}

/// Re-hashes, with plain SHA-256, the records of the SQLite state in `data` from `from` on: what
/// someone who can write the state database, but lacks the seal key, can do.
async fn rehash_without_the_key(data: &Path, from: u64) {
    use pgwarden_store::{AuditQuery, SqliteStore, Store};
    let store = SqliteStore::open(data).unwrap();
    let records = store.audit_records(&AuditQuery::all(10_000)).await.unwrap();
    drop(store);
    let db = rusqlite::Connection::open(data.join("state.db")).unwrap();
    let mut prev = records[from as usize - 2].hash.clone();
    for record in &records[from as usize - 1..] {
        let hash = pgwarden_core::audit::record_hash(record.seq, &record.event, &prev, None);
        db.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, record.seq as i64],
        )
        .unwrap();
        prev = hash;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_seal_key_the_chain_cannot_be_rewritten_without_it() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let top = format!("data_dir: \"{}\"", data.display());
    // Records from before the seal key was set, then keyed ones.
    let plain = write_config(dir.path(), "plain.yaml", &cluster, &top, ROLES);
    make_records(&plain).await;
    let key_file = dir.path().join("seal-key");
    std::fs::write(&key_file, "ab".repeat(32)).unwrap();
    let top = format!("{top}\nseal_key_file: \"{}\"", key_file.display());
    let keyed = write_config(dir.path(), "keyed.yaml", &cluster, &top, ROLES);
    make_records(&keyed).await;
    let db = rusqlite::Connection::open(data.join("state.db")).unwrap();
    let first_keyed: i64 = db
        .query_row(
            "SELECT min(seq) FROM audit WHERE hash LIKE 'hmac-sha256:%'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let first_keyed = first_keyed as u64;
    assert!(first_keyed > 1);

    // Another seal key than the one the records were keyed with.
    let other_key_file = dir.path().join("other-seal-key");
    std::fs::write(&other_key_file, "cd".repeat(32)).unwrap();
    let other_top = top.replace(
        &key_file.display().to_string(),
        &other_key_file.display().to_string(),
    );
    let other = write_config(dir.path(), "other.yaml", &cluster, &other_top, ROLES);
    let (ok, _, stderr) = verify(&other);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: audit record {first_keyed} was altered, or keyed with another seal key \
             than this configuration's: its contents do not match its hash (records 1 to {} \
             verify)",
            first_keyed - 1
        )
    );

    let (ok, _, stderr) = verify(&plain);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: audit record {first_keyed} is keyed with the seal key: give the \
             configuration that has it (records 1 to {} verify)",
            first_keyed - 1
        )
    );

    // Rewritten from the third keyed record on: it no longer follows keyed records.
    rehash_without_the_key(&data, first_keyed + 2).await;
    let (ok, _, stderr) = verify(&keyed);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: audit record {} is not keyed, though records before it are: it was \
             rewritten without the seal key, or written by pgwarden without one (records 1 to \
             {} verify)",
            first_keyed + 2,
            first_keyed + 1
        )
    );
    // Rewritten from the first keyed record on: a plain chain as far as it shows, which the
    // key tells apart.
    rehash_without_the_key(&data, first_keyed).await;
    assert!(verify(&plain).0, "no key, no way to tell");
    let (ok, _, stderr) = verify(&keyed);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: the audit chain ends in records that are not keyed (from 1 on, which may \
         include records written before the seal key was set), though pgwarden keys every \
         record once it has one: the records written since were rewritten without the key, or \
         none was written since the key was set"
    );
}
