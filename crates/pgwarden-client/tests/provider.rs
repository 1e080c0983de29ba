//! An application on the auto-renewing pool never sees a stale password: with leases of 3 s
//! (max 8 s) it runs queries for 30 s without one failure while credentials come and go, and
//! every replaced user is dropped after the grace period.

use pgwarden_client::{Auth, Client, CredentialProvider, ProviderOptions, pool};
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::broker::{ROOT_TOKEN as ROOT, TestBroker};
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Leases of 3 s, renewable to 8 s.
const ROLES: &str =
    "      short: { db_name: appdb, preset: readonly, default_ttl: 3s, max_ttl: 8s }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_queries_across_credential_changes() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let mut broker = TestBroker::start(&cluster, ROLES, "").await;
    let client = Arc::new(Client::new(
        &broker.base,
        Auth::Token(SecretString::from(ROOT)),
    ));
    let options = ProviderOptions {
        grace: Duration::from_secs(1),
        ..ProviderOptions::default()
    };
    let provider = Arc::new(
        CredentialProvider::start(client, "database/creds/short", options)
            .await
            .unwrap(),
    );
    let pool = pool(provider.clone(), tokio_postgres::Config::new(), 4).unwrap();

    let mut users = BTreeSet::new();
    let mut queries = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let conn = pool
            .get()
            .await
            .expect("a connection with a valid credential");
        let row = conn
            .query_one("SELECT session_user::text, count(*) FROM items", &[])
            .await
            .unwrap_or_else(|e| panic!("query failed after {:?}: {e}", start.elapsed()));
        assert_eq!(row.get::<_, i64>(1), 3);
        users.insert(row.get::<_, String>(0));
        queries += 1;
        drop(conn);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(queries > 100, "{queries} queries");
    assert!(
        users.len() >= 3,
        "at least three credentials came and went: {users:?}"
    );

    // Every replaced user is gone once its grace period (and the reaper) have passed.
    let current = provider.current().credential.username.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in users.iter().filter(|u| **u != current) {
        assert!(
            !cluster.role_exists(user).await.unwrap(),
            "{user} still exists"
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_rejected_password_fetches_a_new_credential_and_retries_once() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let mut broker = TestBroker::start(&cluster, ROLES, "").await;
    let client = Arc::new(Client::new(
        &broker.base,
        Auth::Token(SecretString::from(ROOT)),
    ));
    let provider = Arc::new(
        CredentialProvider::start(
            client.clone(),
            "database/creds/short",
            ProviderOptions::default(),
        )
        .await
        .unwrap(),
    );
    let pool = pool(provider.clone(), tokio_postgres::Config::new(), 2).unwrap();
    let first = provider.current();
    // Someone revokes the lease behind the application's back.
    client.revoke(&first.credential.lease_id).await.unwrap();
    let conn = pool.get().await.expect("retried with a fresh credential");
    let user: String = conn
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(user, first.credential.username);
    assert_eq!(provider.current().generation, first.generation + 1);
    // Rejected again at once: no second new user within 5 s (a database that keeps
    // rejecting new passwords would get one per attempt), then one.
    drop(conn);
    pool.resize(0);
    pool.resize(2);
    let second = provider.current();
    client.revoke(&second.credential.lease_id).await.unwrap();
    let refused = pool.get().await.expect_err("not retried so soon");
    assert!(
        matches!(&refused, deadpool_postgres::PoolError::Backend(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)),
        "{refused:?}"
    );
    assert_eq!(provider.current().generation, second.generation);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let _retried = pool
        .get()
        .await
        .expect("retried with a fresh credential after 5 s");
    assert_eq!(provider.current().generation, second.generation + 1);
    broker.stop().await;
}
