//! A real `pgwarden server` killed with SIGKILL in the middle of a static role's rotation
//! never leaves a password nobody knows. The test stops the rotation at each step by holding
//! a lock the next step needs, kills the server there, and restarts it:
//! 1. after the new password is stored, before `ALTER ROLE` (the test holds the user's row
//!    in `pg_authid`): the old password still works, and after the restart `static-creds`
//!    finishes the rotation and hands out the new one;
//! 2. after `ALTER ROLE` committed, before the store records it (the test holds SQLite's
//!    write lock): the old password is already dead, and after the restart the stored
//!    pending password is the one handed out, and it works.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use serde_json::json;
use std::time::{Duration, Instant};

const USER: &str = "legacy_app";
const SEAL_KEY: &str = "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000";

/// Waits up to 20 seconds for `check`.
async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn signs_in(cluster: &PgCluster, password: &str) -> bool {
    cluster.connect_as(USER, password, "appdb").await.is_ok()
}

async fn current_password(server: &Server) -> String {
    let (status, body) = call(
        &server.base,
        ROOT,
        "GET",
        "database/static-creds/appdb-legacy",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["password"].as_str().unwrap().to_string()
}

fn sigkill(mut server: Server) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    server.child.wait().unwrap();
}

/// Starts `rotate-role` in the background (it will hang on the test's lock) and waits until
/// its `ALTER ROLE` waits for the row lock: by then the new password is stored. `watch` is a
/// connection outside the transaction holding the lock (a transaction sees one snapshot of
/// `pg_stat_activity`).
async fn rotation_blocked_at_alter(server: &Server, watch: &tokio_postgres::Client) {
    // The answer never comes: the server is killed while the request waits.
    let request = reqwest::Client::new()
        .post(format!(
            "{}/v1/database/rotate-role/appdb-legacy",
            server.base
        ))
        .header("X-Vault-Token", ROOT)
        .send();
    tokio::spawn(request);
    wait_for("the rotation's ALTER ROLE to wait for the lock", || async {
        let rows = watch
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%ALTER ROLE%'",
                &[],
            )
            .await
            .unwrap();
        !rows.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_each_step_of_a_rotation_loses_no_password() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("appdb").await.unwrap();
    let watch = cluster.connect_superuser("appdb").await.unwrap();
    cluster
        .create_static_user(USER, "initial-password")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "pgwarden.yaml",
        &cluster,
        &format!("data_dir: \"{}\"", data.display()),
        "      appdb-readonly: { db_name: appdb, preset: readonly }",
    );
    let env = [APPDB_ENV[0], ("PGWARDEN_SEAL_KEY", SEAL_KEY)];
    let port = free_port();
    let server = spawn_server(&config, port, &env).await;
    let (status, body) = call(
        &server.base,
        ROOT,
        "POST",
        "database/static-roles/appdb-legacy",
        Some(json!({"db_name": "appdb", "username": USER, "rotation_period": "1h"})),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let first = current_password(&server).await;

    // Step 1: killed after storing the new password, before ALTER ROLE.
    su.batch_execute(&format!("BEGIN; ALTER ROLE {USER} CONNECTION LIMIT 50;"))
        .await
        .unwrap();
    rotation_blocked_at_alter(&server, &watch).await;
    sigkill(server);
    su.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        signs_in(&cluster, &first).await,
        "the database never got the new password"
    );
    let server = spawn_server(&config, port, &env).await;
    let second = current_password(&server).await;
    assert_ne!(second, first, "the stored pending password was finished");
    assert!(signs_in(&cluster, &second).await);
    assert!(!signs_in(&cluster, &first).await);

    // Step 2: killed after ALTER ROLE committed, before the store recorded it.
    su.batch_execute(&format!("BEGIN; ALTER ROLE {USER} CONNECTION LIMIT 50;"))
        .await
        .unwrap();
    rotation_blocked_at_alter(&server, &watch).await;
    let state = rusqlite::Connection::open(data.join("state.db")).unwrap();
    state.execute_batch("BEGIN EXCLUSIVE").unwrap();
    su.batch_execute("ROLLBACK").await.unwrap();
    wait_for("ALTER ROLE to take the new password", || async {
        !signs_in(&cluster, &second).await
    })
    .await;
    sigkill(server);
    state.execute_batch("ROLLBACK").unwrap();
    drop(state);
    let server = spawn_server(&config, port, &env).await;
    let third = current_password(&server).await;
    assert_ne!(third, second);
    assert!(
        signs_in(&cluster, &third).await,
        "the password handed out after the crash is the one the database has"
    );
}
