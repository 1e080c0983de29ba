//! A connection URL naming a primary and a streaming replica: statements run on the primary,
//! and revoking a user ends its sessions on the replica too.

use pgwarden_core::{ConnectionDef, RoleDef, RoleSpec};
use pgwarden_engine::{NewPassword, Target};
use pgwarden_testkit::{APP_ADMIN as ADMIN, APP_ADMIN_PASSWORD as ADMIN_PW, PgCluster};
use secrecy::SecretString;
use std::time::{Duration, Instant};

/// Logs in to `cluster` as `user`, retrying while the standby has not replayed its creation.
async fn login_when_replayed(
    cluster: &PgCluster,
    user: &str,
    password: &str,
) -> tokio_postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cluster.connect_as(user, password, "appdb").await {
            Ok(client) => return client,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{user} never logged in on the standby: {error}"),
        }
    }
}

/// Creates `username` for `role` through `target`, valid for ten minutes.
async fn create(target: &Target, role: &RoleDef, username: &str, password: &NewPassword) {
    target
        .create_user(
            role,
            username,
            password,
            time::OffsetDateTime::now_utc() + Duration::from_secs(600),
            &[],
            "root",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_go_to_the_primary_and_revocation_ends_standby_sessions() {
    let mut primary = PgCluster::start_with_appdb().await.unwrap();
    if !primary.can_replicate() {
        eprintln!("SKIPPED: no pg_basebackup beside these PostgreSQL binaries (npm builds)");
        return;
    }
    let replica = tokio::task::block_in_place(|| primary.start_replica()).unwrap();
    // The replica first: pgwarden must find the host that takes writes.
    let target = Target::new(&ConnectionDef {
        name: "appdb".into(),
        connection_url: format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{},127.0.0.1:{}/appdb?sslmode=disable",
            replica.port(),
            primary.port()
        ),
        username: ADMIN.into(),
        password: SecretString::from(ADMIN_PW),
        allowed_roles: vec!["*".into()],
        verify_connection: true,
        auth: Default::default(),
    })
    .unwrap();
    assert_eq!(
        target.endpoint().hosts,
        vec![
            format!("127.0.0.1:{}", replica.port()),
            format!("127.0.0.1:{}", primary.port())
        ]
    );
    let role = serde_json::from_str::<RoleSpec>(r#"{"db_name":"appdb","preset":"readonly"}"#)
        .unwrap()
        .into_def("ro")
        .unwrap();
    let username = pgwarden_core::names::generate_username("test", "ro", 1);
    let password = NewPassword::generate();
    create(&target, &role, &username, &password).await;

    use secrecy::ExposeSecret;
    let on_standby =
        login_when_replayed(&replica, &username, password.password().expose_secret()).await;
    let count: i64 = on_standby
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3, "the user reads from the replica");

    target.revoke_user(&role, &username).await.unwrap();
    assert!(
        on_standby.query_one("SELECT 1", &[]).await.is_err(),
        "the revoked user's session on the standby was ended"
    );
    let again = replica
        .connect_as(&username, password.password().expose_secret(), "appdb")
        .await;
    assert!(
        again.is_err(),
        "the revoked user cannot log in on the standby"
    );
    assert!(!primary.role_exists(&username).await.unwrap());

    // Failover: the primary stops, the replica is promoted; the same target finds it.
    let primary_port = primary.port();
    tokio::task::block_in_place(|| primary.stop());
    let su = replica.connect_superuser("appdb").await.unwrap();
    su.execute("SELECT pg_promote(true, 30)", &[])
        .await
        .unwrap();
    let after = pgwarden_core::names::generate_username("test", "ro", 2);
    create(&target, &role, &after, &password).await;
    replica
        .connect_as(&after, password.password().expose_secret(), "appdb")
        .await
        .expect("the user made after the failover logs in on the new primary");
    // The old primary is unreachable: pgwarden cannot tell that no session of the user lives
    // there, so the revocation fails (and would be retried) although the user is dropped.
    let err = target.revoke_user(&role, &after).await.unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "database of connection \"appdb (host 127.0.0.1:{primary_port})\" is unreachable"
        )),
        "{err}"
    );
    assert!(!replica.role_exists(&after).await.unwrap());
    // Once the dead host leaves the URL, the retry completes.
    let repaired = Target::new(&ConnectionDef {
        name: "appdb".into(),
        connection_url: format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/appdb?sslmode=disable",
            replica.port()
        ),
        username: ADMIN.into(),
        password: SecretString::from(ADMIN_PW),
        allowed_roles: vec!["*".into()],
        verify_connection: true,
        auth: Default::default(),
    })
    .unwrap();
    repaired.revoke_user(&role, &after).await.unwrap();
}
