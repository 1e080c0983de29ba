//! An application on the auto-renewing pool never sees a stale password: with leases of 3 s
//! (max 8 s) it runs queries for 30 s without one failure while credentials come and go, and
//! every replaced user is dropped after the grace period. A lease revoked in pgwarden is
//! replaced at the next look-up.

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

/// Leases of an hour: their renewal is 40 minutes away, so only a look-up replaces them.
const LONG: &str = "      long: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }";

/// Waits up to `within` for `provider` to publish a credential after `generation`.
async fn replaced_within(
    provider: &CredentialProvider,
    generation: u64,
    within: Duration,
) -> Option<pgwarden_client::Current> {
    let mut changes = provider.subscribe();
    tokio::time::timeout(
        within,
        changes.wait_for(|current| current.generation > generation),
    )
    .await
    .ok()
    .map(|seen| seen.expect("the provider runs").clone())
}

/// Whether `credential`'s user can log in to appdb with its password.
async fn logs_in(cluster: &PgCluster, credential: &pgwarden_client::Credential) -> bool {
    use secrecy::ExposeSecret;
    let password = credential.password.expose_secret();
    cluster
        .connect_as(&credential.username, password, "appdb")
        .await
        .is_ok()
}

#[tokio::test]
async fn a_lease_revoked_in_pgwarden_is_replaced_at_the_next_look_up() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let mut broker = TestBroker::start(&cluster, LONG, "").await;
    let client = Arc::new(Client::new(
        &broker.base,
        Auth::Token(SecretString::from(ROOT)),
    ));
    let start = |check_interval| {
        let options = ProviderOptions {
            grace: Duration::from_secs(1),
            check_interval,
            ..ProviderOptions::default()
        };
        CredentialProvider::start(client.clone(), "database/creds/long", options)
    };

    // Without look-ups, a lease revoked behind the provider's back stays published.
    let unchecked = start(None).await.unwrap();
    let first = unchecked.current();
    client.revoke(&first.credential.lease_id).await.unwrap();
    assert!(!logs_in(&cluster, &first.credential).await);
    assert!(
        replaced_within(&unchecked, first.generation, Duration::from_secs(3))
            .await
            .is_none(),
        "replaced with no look-up"
    );
    unchecked.stop(false).await.unwrap();

    // With them, it is replaced within the interval by a credential that works.
    let checked = start(Some(Duration::from_secs(1))).await.unwrap();
    let first = checked.current();
    assert!(logs_in(&cluster, &first.credential).await);
    client.revoke(&first.credential.lease_id).await.unwrap();
    let second = replaced_within(&checked, first.generation, Duration::from_secs(5))
        .await
        .expect("replaced within the look-up interval");
    assert_ne!(second.credential.username, first.credential.username);
    assert!(logs_in(&cluster, &second.credential).await);
    assert!(!logs_in(&cluster, &first.credential).await);

    // A lease that still stands is left alone: no new credential over three look-ups.
    assert!(
        replaced_within(&checked, second.generation, Duration::from_secs(3))
            .await
            .is_none(),
        "a standing lease was replaced"
    );
    // Revoked with its prefix, as an operator ends every lease of a role.
    let revoked = reqwest::Client::new()
        .put(format!(
            "{}/v1/sys/leases/revoke-prefix/database/creds/long",
            broker.base
        ))
        .header("X-Vault-Token", ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let third = replaced_within(&checked, second.generation, Duration::from_secs(5))
        .await
        .expect("replaced after a prefix revocation");
    assert!(logs_in(&cluster, &third.credential).await);
    checked.stop(true).await.unwrap();
    broker.stop().await;
}
