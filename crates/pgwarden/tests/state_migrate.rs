//! `pgwarden state migrate`: a SQLite state copied into PostgreSQL serves on, from there.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use serde_json::json;
use std::process::Command;

fn pgwarden(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_state_moves_to_postgresql_and_serves_from_there() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE state").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state_url = cluster.superuser_url("state");
    let data_dir = format!("data_dir: \"{}\"", data.display());
    let roles =
        "      appdb-long: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }";
    let sqlite_config = write_config(dir.path(), "sqlite.yaml", &cluster, &data_dir, roles);
    let env = APPDB_ENV;

    let server = spawn_server(&sqlite_config, free_port(), &env).await;
    let (_, lease) = call(&server.base, ROOT, "GET", "database/creds/appdb-long", None).await;
    let role = json!({ "db_name": "appdb", "preset": "readonly", "default_ttl": "10m" });
    let (status, _) = call(
        &server.base,
        ROOT,
        "POST",
        "database/roles/appdb-api",
        Some(role),
    )
    .await;
    assert_eq!(status, 204);
    drop(server);

    let (ok, _, stderr) = pgwarden(&[
        "state",
        "migrate",
        "--from",
        "/nonexistent/state.db",
        "--to",
        &state_url,
    ]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: --from /nonexistent/state.db: no SQLite state there (expected a state.db file or a directory holding one)"
    );
    let from = data.join("state.db");
    let from = from.to_str().unwrap();
    let (ok, stdout, stderr) = pgwarden(&["state", "migrate", "--from", from, "--to", &state_url]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "copied 1 leases, 0 tokens, 1 roles, 0 connections, 0 static roles, 0 access requests and 3 audit records"
    );
    let (ok, _, stderr) = pgwarden(&["state", "migrate", "--from", from, "--to", &state_url]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        "error: the destination already holds state (leases, tokens, roles or connections); copy only into an empty one"
    );

    let shared_config = write_config(
        dir.path(),
        "shared.yaml",
        &cluster,
        &format!("{data_dir}\nstate: {{ postgresql: {{ url: \"{state_url}\" }} }}"),
        roles,
    );
    let server = spawn_server(&shared_config, free_port(), &env).await;
    let (status, body) = call(&server.base, ROOT, "GET", "database/creds/appdb-api", None).await;
    assert_eq!(status, 200, "the API role moved: {body}");
    let (status, _) = call(
        &server.base,
        ROOT,
        "PUT",
        "sys/leases/revoke",
        Some(json!({ "lease_id": lease["lease_id"] })),
    )
    .await;
    assert_eq!(status, 204, "the lease moved");
    assert!(
        !cluster
            .role_exists(lease["data"]["username"].as_str().unwrap())
            .await
            .unwrap()
    );
}
