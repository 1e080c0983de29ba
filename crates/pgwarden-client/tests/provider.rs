//! An application on the auto-renewing pool never sees a stale password: with leases of 3 s
//! (max 8 s) it runs queries for 30 s without one failure while credentials come and go, and
//! every replaced user is dropped after the grace period.

use pgwarden_client::{Auth, Client, CredentialProvider, ProviderOptions, pool};
use pgwarden_server::Config;
use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use secrecy::SecretString;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOT: &str = "provider-test-root-token";

async fn broker(cluster: &PgCluster, data: &std::path::Path) -> pgwarden_server::Running {
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
mounts:
  database:
    connections:
      appdb:
        connection_url: "{url}"
        username: {APP_ADMIN}
        password: {APP_ADMIN_PASSWORD}
        allowed_roles: ["*"]
    roles:
      short: {{ db_name: appdb, preset: readonly, default_ttl: 3s, max_ttl: 8s }}
"#,
        url = cluster.templated_url("appdb")
    );
    let mut config = Config::parse(&yaml).unwrap();
    config.data_dir = data.to_path_buf();
    config.root_token = Some(SecretString::from(ROOT));
    pgwarden_server::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_queries_across_credential_changes() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = broker(&cluster, data.path()).await;
    let client = Arc::new(Client::new(
        &format!("http://{}", server.addr),
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
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejected_password_fetches_a_new_credential_and_retries_once() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = broker(&cluster, data.path()).await;
    let client = Arc::new(Client::new(
        &format!("http://{}", server.addr),
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
    server.shutdown().await.unwrap();
}
