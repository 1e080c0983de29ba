//! The cluster really uses scram-sha-256: the right password logs in, a wrong one does not.

use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster, SUPERUSER};

#[tokio::test]
async fn cluster_requires_the_password() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let client = cluster.connect_superuser("postgres").await.unwrap();
    let row = client
        .query_one("SELECT current_setting('password_encryption')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "scram-sha-256");
    let err = cluster
        .connect_as(SUPERUSER, "wrong", "postgres")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    let admin = cluster
        .connect_as(APP_ADMIN, APP_ADMIN_PASSWORD, "appdb")
        .await
        .unwrap();
    let n: i64 = admin
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[tokio::test]
async fn role_exists_sees_roles_come_and_go() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    assert!(cluster.role_exists(APP_ADMIN).await.unwrap());
    assert!(!cluster.role_exists("nobody").await.unwrap());
    let url = cluster.templated_url("appdb");
    assert_eq!(
        url,
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/appdb?sslmode=disable",
            cluster.port()
        )
    );
}
