//! Crash safety: a lease left half-created is rolled back on the next start, and a restart
//! loses no lease.

mod common;

use common::*;
use pgwarden_core::LeaseState;
use pgwarden_store::{SqliteStore, Store};
use serde_json::json;
use std::time::Duration;

/// Puts the leases of `creds` back to `pending` in the stopped broker's state, as a crash
/// after their users were created, before they were marked active, leaves them.
async fn rewind_to_pending(env: &Env, creds: &[&Creds]) {
    let store = SqliteStore::open(env.broker.data.path()).unwrap();
    for creds in creds {
        let mut lease = store.get_lease(&creds.lease_id).await.unwrap().unwrap();
        lease.state = LeaseState::Pending;
        store
            .update_lease(
                &lease,
                LeaseState::Active,
                pgwarden_store::Durability::Synced,
            )
            .await
            .unwrap();
    }
}

/// The lookup of `lease_id`.
async fn lookup(env: &Env, lease_id: &str) -> serde_json::Value {
    let (_, body) = env
        .call(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": lease_id })),
        )
        .await;
    body
}

/// How many users `metrics` count as dropped for `reason`.
fn revoked(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("pgwarden_leases_revoked_total{{reason=\"{reason}\"}}"),
    )
}

/// Waits until no lease is failing revocation, then returns the metrics.
async fn metrics_once_nothing_fails(env: &Env) -> String {
    poll_until(Duration::from_secs(30), || async {
        metric(&env.metrics().await, "pgwarden_leases_failing_revocation") == 0.0
    })
    .await
    .expect("no lease left failing");
    env.metrics().await
}

#[tokio::test]
async fn half_created_leases_are_rolled_back_on_start() {
    let mut env = Env::start(ROLES).await;
    let kept = env.creds("appdb-readonly").await;
    let half = env.creds("appdb-user").await;
    let never = env.creds("custom-reader").await;
    env.stop().await;

    // Rewind two leases to "pending": one whose user exists (crash after CREATE ROLE, before
    // the lease was marked active), one whose user was never created.
    rewind_to_pending(&env, &[&half, &never]).await;
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!(
        "DROP OWNED BY \"{0}\"; DROP ROLE \"{0}\"",
        never.username
    ))
    .await
    .unwrap();

    env.boot().await;
    env.wait_role_gone(&half.username, Duration::from_secs(5))
        .await
        .expect("half-created user rolled back");
    for id in [&half.lease_id, &never.lease_id] {
        let mut gone = false;
        for _ in 0..50 {
            let (status, _) = env
                .call("PUT", "sys/leases/lookup", Some(json!({ "lease_id": id })))
                .await;
            if status == 400 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "pending lease {id} was forgotten after rollback");
    }
    // The active lease survived the restart untouched.
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": kept.lease_id })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["state"], "active");
    env.login(&kept).await.expect("kept credential still works");
    assert_eq!(revoked(&env.metrics().await, "rollback"), 2.0);
}

/// Roles with rollback statements of their own: `marked`, whose revocation and rollback each
/// say, in table `dropped`, which of them ran; `minimal`, whose rollback only drops the user,
/// as most are written.
const CUSTOM_ROLLBACKS: &str = r#"
      marked:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
        revocation_statements:
          - INSERT INTO dropped VALUES ('{{name}}', 'revocation');
          - DROP ROLE "{{name}}";
        rollback_statements:
          - INSERT INTO dropped VALUES ('{{name}}', 'rollback');
          - DROP ROLE IF EXISTS "{{name}}";
        default_ttl: 1h
        max_ttl: 2h
      minimal:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
          - GRANT CREATE ON SCHEMA public TO "{{name}}";
        rollback_statements:
          - DROP ROLE IF EXISTS "{{name}}";
        default_ttl: 1h
        max_ttl: 2h
"#;

#[tokio::test]
async fn a_rollback_that_fails_is_retried_as_a_rollback() {
    let mut env = Env::start(CUSTOM_ROLLBACKS).await;
    let half = env.creds("marked").await;
    env.stop().await;
    rewind_to_pending(&env, &[&half]).await;

    // The rollback fails at start-up: its table is not there yet. So does its retry, which
    // tries the full revocation as well.
    env.boot().await;
    poll_until(Duration::from_secs(30), || async {
        lookup(&env, &half.lease_id).await["data"]["revocation_attempts"].as_u64() >= Some(2)
    })
    .await
    .expect("the rollback and its retry fail");
    let failing = lookup(&env, &half.lease_id).await;
    assert_eq!(failing["data"]["state"], "revoking");
    assert_eq!(failing["data"]["revocation_reason"], "rollback");
    let error = failing["data"]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "the rollback failed (running the rollback statements of user {:?}: ",
            half.username
        )) && error.contains(&format!(
            "and so did the full revocation: running the revocation statements of user {:?}: ",
            half.username
        )) && error.ends_with("relation \"dropped\" does not exist (SQLSTATE 42P01)"),
        "{error}"
    );

    // Once it can work, asking for the revocation runs the rollback statements, not the
    // revocation's.
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE dropped (name text, how text); GRANT INSERT ON dropped TO {ADMIN}"
    ))
    .await
    .unwrap();
    let (status, body) = env.revoke(&half.lease_id).await;
    // (Unless the reaper's next retry got there first.)
    assert!(
        status == 204
            || body["errors"][0]
                == format!(
                    "lease {:?} not found (it may have expired or been revoked)",
                    half.lease_id
                ),
        "{status} {body}"
    );
    assert!(!env.role_exists(&half.username).await);
    let rows = su
        .query("SELECT name, how FROM dropped", &[])
        .await
        .unwrap();
    let ran: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(ran, [(half.username.clone(), "rollback".to_string())]);
    let metrics = metrics_once_nothing_fails(&env).await;
    assert_eq!(revoked(&metrics, "rollback"), 1.0);
    assert!(!metrics.contains("reason=\"requested\""), "{metrics}");
}

#[tokio::test]
async fn a_rollback_its_statements_cannot_finish_falls_back_to_the_full_revocation() {
    let mut env = Env::start(CUSTOM_ROLLBACKS).await;
    let used = env.creds("minimal").await;
    // Its activation is lost in a crash after its credential made a table.
    env.login(&used)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE made_by_the_user (id int)")
        .await
        .unwrap();
    env.stop().await;
    rewind_to_pending(&env, &[&used]).await;

    // `DROP ROLE` alone fails on what the user owns; the retry's full revocation drops it.
    env.boot().await;
    env.wait_role_gone(&used.username, Duration::from_secs(30))
        .await
        .expect("the user is dropped");
    let metrics = metrics_once_nothing_fails(&env).await;
    assert_eq!(revoked(&metrics, "rollback"), 1.0);
    assert!(metric(&metrics, "pgwarden_revocation_failures_total") >= 1.0);
}
