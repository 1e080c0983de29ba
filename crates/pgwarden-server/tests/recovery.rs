//! Crash safety: a lease left half-created is rolled back on the next start, and a restart
//! loses no lease.

mod common;

use common::*;
use pgwarden_core::LeaseState;
use pgwarden_store::{SqliteStore, Store};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn half_created_leases_are_rolled_back_on_start() {
    let mut env = Env::start(ROLES).await;
    let kept = env.creds("appdb-readonly").await;
    let half = env.creds("appdb-user").await;
    let never = env.creds("custom-reader").await;
    env.stop().await;

    // Rewind two leases to "pending": one whose user exists (crash after CREATE ROLE, before
    // the lease was marked active), one whose user was never created.
    let store = SqliteStore::open(env.broker.data.path()).unwrap();
    for id in [&half.lease_id, &never.lease_id] {
        let mut lease = store.get_lease(id).await.unwrap().unwrap();
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
    drop(store);
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
    assert_eq!(
        metric(
            &env.metrics().await,
            "pgwarden_leases_revoked_total{reason=\"rollback\"}"
        ),
        2.0
    );
}

/// A role whose revocation and rollback each say, in table `dropped`, which of them ran.
const MARKED: &str = r#"
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
"#;

#[tokio::test]
async fn a_rollback_that_fails_is_retried_as_a_rollback() {
    let mut env = Env::start(MARKED).await;
    let half = env.creds("marked").await;
    env.stop().await;
    // A crash after CREATE ROLE, before the lease was marked active.
    let store = SqliteStore::open(env.broker.data.path()).unwrap();
    let mut lease = store.get_lease(&half.lease_id).await.unwrap().unwrap();
    lease.state = LeaseState::Pending;
    store
        .update_lease(
            &lease,
            LeaseState::Active,
            pgwarden_store::Durability::Synced,
        )
        .await
        .unwrap();
    drop(store);

    // The rollback fails at start-up: its table is not there yet.
    env.boot().await;
    let lookup = async || {
        let (_, body) = env
            .call(
                "PUT",
                "sys/leases/lookup",
                Some(json!({ "lease_id": half.lease_id })),
            )
            .await;
        body
    };
    poll_until(Duration::from_secs(10), || async {
        lookup().await["data"]["revocation_attempts"].as_u64() >= Some(1)
    })
    .await
    .expect("the rollback fails");
    let lookup = lookup().await;
    assert_eq!(lookup["data"]["state"], "revoking");
    assert!(
        lookup["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("relation \"dropped\" does not exist"),
        "{lookup}"
    );

    // Once it can work, the reaper's retry runs the rollback statements, not the revocation's.
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE dropped (name text, how text); GRANT INSERT ON dropped TO {ADMIN}"
    ))
    .await
    .unwrap();
    env.wait_role_gone(&half.username, Duration::from_secs(10))
        .await
        .expect("the retried rollback dropped the user");
    let rows = su
        .query("SELECT name, how FROM dropped", &[])
        .await
        .unwrap();
    let ran: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(ran, [(half.username.clone(), "rollback".to_string())]);
    let metrics = env.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pgwarden_leases_revoked_total{reason=\"rollback\"}"
        ),
        1.0
    );
    assert!(!metrics.contains("reason=\"requested\""), "{metrics}");
}
