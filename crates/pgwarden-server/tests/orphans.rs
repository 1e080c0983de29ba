//! The orphan sweep: a user no lease names (here: the state restored from an older backup) is
//! reported, then dropped after its grace period; tracked users and others are left alone.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const SWEEP: &str = "orphans: { interval: 1s, grace: 5s }";

/// Copies the state files of `from` into `to`, replacing what is there.
fn copy_state(from: &Path, to: &Path) {
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(to.join(name));
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

async fn orphans(env: &Env) -> serde_json::Value {
    let (status, body) = env.call("GET", "sys/orphans", None).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["orphans"].clone()
}

#[tokio::test]
async fn users_lost_from_the_state_are_reported_then_dropped() {
    let mut env = Env::start_with(ROLES, SWEEP).await;
    let kept = env.creds("appdb-readonly").await;
    env.stop().await;
    let backup = tempfile::tempdir().unwrap();
    copy_state(env.broker.data.path(), backup.path());
    env.boot().await;
    let lost = env.creds("appdb-readonly").await;
    env.stop().await;
    copy_state(backup.path(), env.broker.data.path());
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute("CREATE ROLE app_owner LOGIN PASSWORD 'x'")
        .await
        .unwrap();
    env.boot().await;

    // Reported at the first sweep, while its grace period runs: it still exists.
    poll_until(Duration::from_secs(10), || async {
        orphans(&env)
            .await
            .as_array()
            .is_some_and(|found| !found.is_empty())
    })
    .await
    .expect("the orphan is reported");
    let found = orphans(&env).await;
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["username"], json!(lost.username));
    assert_eq!(found[0]["connection"], "database/appdb");
    assert!(found[0]["drop_at"].is_string());
    assert_eq!(metric(&env.metrics().await, "pgwarden_orphan_users"), 1.0);
    assert!(env.role_exists(&lost.username).await);

    // Dropped once the grace period is over; the tracked user and others stay.
    assert!(
        env.wait_role_gone(&lost.username, Duration::from_secs(20))
            .await
            .is_some(),
        "the orphan is dropped"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(orphans(&env).await, json!([]));
    let metrics = env.metrics().await;
    assert_eq!(metric(&metrics, "pgwarden_orphan_users_dropped_total"), 1.0);
    assert_eq!(metric(&metrics, "pgwarden_orphan_users"), 0.0);
    env.login(&kept)
        .await
        .expect("the tracked user is untouched");
    assert!(env.role_exists("app_owner").await);

    // Only root may look.
    let (status, _) = env.call_as("nobody", "GET", "sys/orphans", None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn with_drop_off_orphans_are_only_reported() {
    let env = Env::start_with(ROLES, "orphans: { interval: 1s, grace: 1s, drop: false }").await;
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    let ghost = "v-ghost-gone-AAAAAAAAAAAAAAAAAAAA-1700000000";
    su.batch_execute(&format!("CREATE ROLE \"{ghost}\" LOGIN"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let found = orphans(&env).await;
    assert_eq!(found[0]["username"], ghost);
    assert_eq!(found[0]["drop_at"], json!(null));
    assert!(env.role_exists(ghost).await);
}

/// The sessions pass every second; the user sweep waits an hour.
const SESSIONS_PASS: &str = "orphans: { interval: 1h, sessions_interval: 1s, grace: 1h }";

/// A session of `creds`' user, and its backend's pid.
async fn session_of(env: &Env, creds: &Creds) -> (tokio_postgres::Client, i32) {
    let session = env.login(creds).await.unwrap();
    let pid: i32 = session
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    (session, pid)
}

/// Drops role `username` by hand through `su` (which leaves its sessions running), then
/// says whether its session's backend `pid` is gone within `limit`.
async fn ended_after_dropping(
    su: &tokio_postgres::Client,
    username: &str,
    pid: i32,
    limit: Duration,
) -> bool {
    su.batch_execute(&format!("DROP ROLE \"{username}\""))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let running: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            return true;
        }
    }
    false
}

/// A session whose role was dropped without ending it (PostgreSQL leaves it running: here a
/// drop by hand; in a revocation, a session still starting up when the drop committed) is
/// ended by the sessions pass (`orphans.sessions_interval`; the user sweep here waits an
/// hour); sessions of existing roles are left alone.
#[tokio::test]
async fn sessions_of_dropped_roles_are_ended_by_the_sessions_pass() {
    let env = Env::start_with(ROLES, SESSIONS_PASS).await;
    let gone = env.creds("appdb-readonly").await;
    let kept = env.creds("appdb-readonly").await;
    let (dangling, pid) = session_of(&env, &gone).await;
    let alive = env.login(&kept).await.unwrap();
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    assert!(
        ended_after_dropping(&su, &gone.username, pid, Duration::from_secs(4)).await,
        "the sessions pass ended the session of the dropped role"
    );
    assert!(dangling.query_one("SELECT 1", &[]).await.is_err());
    alive
        .query_one("SELECT 1", &[])
        .await
        .expect("the session of an existing role is left alone");
}

/// Connections whose database does not answer (here four listeners that never speak: each
/// attempt waits for the pool's 5 s create timeout) delay neither the sessions pass on the
/// other connection nor the next pass: a session of a role dropped while a pass waits on them
/// is ended within a few periods (a pass serving the connections in turn would reach `appdb`,
/// sorted after them, only once the first had used up its 5 s).
#[tokio::test]
async fn connections_that_do_not_answer_delay_no_other_sessions_pass() {
    let env = Env::start_with(ROLES, SESSIONS_PASS).await;
    let mut silent = Vec::new();
    for n in 1..=4 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/appdb");
        let (status, body) = env
            .call(
                "POST",
                &format!("database/config/aaa-silent-{n}"),
                Some(json!({ "connection_url": url, "username": "u", "password": "p", "verify_connection": false })),
            )
            .await;
        assert_eq!(status, 204, "{body}");
        silent.push(listener);
    }
    let gone = env.creds("appdb-readonly").await;
    let (_dangling, pid) = session_of(&env, &gone).await;
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    // A pass now waits on the first silent connection (kept open, never answered).
    let (_waiting, _) = tokio::time::timeout(Duration::from_secs(10), silent[0].accept())
        .await
        .expect("a sessions pass tried the silent connection")
        .unwrap();
    assert!(
        ended_after_dropping(&su, &gone.username, pid, Duration::from_millis(4500)).await,
        "the session of the dropped role was ended while the silent connections were waited on"
    );
}
