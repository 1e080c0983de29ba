//! The cluster really uses scram-sha-256: the right password logs in, a wrong one does not.

use pgwarden_testkit::{PgCluster, SUPERUSER};

#[tokio::test]
async fn cluster_requires_the_password() {
    let cluster = PgCluster::start().unwrap();
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
    cluster
        .create_app_database("appdb", "pgwarden_admin", "adminpw")
        .await
        .unwrap();
    let admin = cluster
        .connect_as("pgwarden_admin", "adminpw", "appdb")
        .await
        .unwrap();
    let n: i64 = admin
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}
