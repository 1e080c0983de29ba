//! `rotate-root` on a connection written through the API: the administrator gets a password
//! only pgwarden knows, everything else keeps working (issue, renew, revoke, restart), a
//! file connection is refused, and a rotation cut short at either step is settled at start-up
//! on whichever password the database has.

mod common;

use common::{Env, ROLES, TestBroker};
use pgwarden_server::seal::Sealer;
use pgwarden_store::{SqliteStore, Store};
use pgwarden_testkit::broker::SEAL_KEY;
use secrecy::SecretString;
use serde_json::json;

const API_ADMIN: &str = "api_admin";
const FIRST_PASSWORD: &str = "api-admin-first-password";

/// An environment with the API connection `apidb` (administrator `API_ADMIN`, an ordinary
/// `CREATEROLE` role) and the templated role `api-login` on it.
async fn env_with_api_connection() -> Env {
    let env = Env::start(ROLES).await;
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!(
        "CREATE ROLE {API_ADMIN} LOGIN CREATEROLE PASSWORD '{FIRST_PASSWORD}'"
    ))
    .await
    .unwrap();
    let (status, body) = env
        .call(
            "POST",
            "database/config/apidb",
            Some(json!({
                "connection_url": env.cluster.templated_url("appdb"),
                "username": API_ADMIN,
                "password": FIRST_PASSWORD,
                "allowed_roles": ["api-*"],
            })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env
        .call(
            "POST",
            "database/roles/api-login",
            Some(json!({
                "db_name": "apidb",
                "creation_statements":
                    ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "default_ttl": "1h",
                "max_ttl": "2h",
            })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    env
}

/// Issues `api-login` credentials and checks they sign in; returns the lease id.
async fn issue_working(env: &Env) -> String {
    let creds = env.creds("api-login").await;
    env.login(&creds).await.expect("issued user signs in");
    creds.lease_id
}

async fn admin_signs_in(env: &Env, password: &str) -> bool {
    env.cluster
        .connect_as(API_ADMIN, password, "appdb")
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_after_rotate_root() {
    let mut env = env_with_api_connection().await;
    let before = issue_working(&env).await;
    let (status, body) = env.call("POST", "database/rotate-root/apidb", None).await;
    assert_eq!(status, 204, "{body}");
    assert!(
        !admin_signs_in(&env, FIRST_PASSWORD).await,
        "the old administrator password is dead"
    );

    let after = issue_working(&env).await;
    for lease in [&before, &after] {
        let (status, body) = env
            .call(
                "PUT",
                "sys/leases/renew",
                Some(json!({"lease_id": lease, "increment": 600})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/revoke",
            Some(json!({"lease_id": before})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env.call("GET", "database/config/apidb", None).await;
    assert_eq!(status, 200);
    assert!(!body.to_string().contains(FIRST_PASSWORD));

    // The new password is sealed in the state: a restarted server still signs in.
    env.stop().await;
    env.boot().await;
    issue_working(&env).await;
    let (status, body) = env.call("POST", "database/rotate-root/apidb", None).await;
    assert_eq!(
        status, 204,
        "a second rotation from the stored password: {body}"
    );
    issue_working(&env).await;

    // Static roles on the connection work with the new administrator password, and keep the
    // connection from being deleted.
    env.cluster
        .create_static_user("api_legacy", "before")
        .await
        .unwrap();
    env.cluster
        .connect_superuser("appdb")
        .await
        .unwrap()
        .batch_execute(&format!(
            "GRANT api_legacy TO {API_ADMIN} WITH ADMIN OPTION"
        ))
        .await
        .unwrap();
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/api-legacy",
            Some(json!({"db_name": "apidb", "username": "api_legacy", "rotation_period": "1h"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env
        .call("GET", "database/static-creds/api-legacy", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let static_password = body["data"]["password"].as_str().unwrap();
    env.cluster
        .connect_as("api_legacy", static_password, "appdb")
        .await
        .expect("the static password works");
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/revoke-prefix/database/creds/api-login",
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env.call("DELETE", "database/config/apidb", None).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["errors"][0],
        "connection \"apidb\" is used by static role(s) api-legacy; delete them first"
    );

    let (status, body) = env.call("POST", "database/rotate-root/appdb", None).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0],
        "connection \"appdb\" is defined in the configuration file, whose password pgwarden \
         cannot change; rotate-root works on connections written through the API"
    );
}

/// Stops the server and stores `password` as `apidb`'s pending administrator password, as a
/// rotation killed after its first step leaves it.
async fn leave_pending(broker: &mut TestBroker, password: &str) {
    broker.stop().await;
    let store = SqliteStore::open(broker.data.path()).unwrap();
    let (_, mut stored) = store
        .connections()
        .await
        .unwrap()
        .into_iter()
        .find(|(_, c)| c.name == "apidb")
        .unwrap();
    let sealer = Sealer::new(&SecretString::from(SEAL_KEY)).unwrap();
    stored.sealed_pending_password = Some(
        sealer
            .seal(&SecretString::from(password), "connection\0database\0apidb")
            .unwrap(),
    );
    store.put_connection("database", &stored).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_is_settled_at_start_up() {
    let mut env = env_with_api_connection().await;
    // Cut before the database took the new password: the old one stays.
    leave_pending(&mut env.broker, "never-reached-the-database").await;
    env.boot().await;
    issue_working(&env).await;
    assert!(admin_signs_in(&env, FIRST_PASSWORD).await);

    // Cut after the database took it: the new one is adopted.
    leave_pending(&mut env.broker, "reached-the-database").await;
    env.cluster
        .connect_superuser("appdb")
        .await
        .unwrap()
        .batch_execute(&format!(
            "ALTER ROLE {API_ADMIN} PASSWORD 'reached-the-database'"
        ))
        .await
        .unwrap();
    env.boot().await;
    issue_working(&env).await;
    env.stop().await;
    env.boot().await;
    issue_working(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issuing_while_the_root_password_rotates_never_fails() {
    let env = std::sync::Arc::new(env_with_api_connection().await);
    let rotating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let issuers: Vec<_> = (0..6)
        .map(|_| {
            let (env, rotating) = (env.clone(), rotating.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut issued = 0;
                while rotating.load(std::sync::atomic::Ordering::SeqCst) {
                    let (status, body) = env.call("GET", "database/creds/api-login", None).await;
                    if status == 200 {
                        issued += 1;
                        let lease = body["lease_id"].clone();
                        let (status, body) = env
                            .call("PUT", "sys/leases/revoke", Some(json!({"lease_id": lease})))
                            .await;
                        if status != 204 {
                            failures.push(format!("revoke: {status} {body}"));
                        }
                    } else {
                        failures.push(format!("{status} {body}"));
                    }
                }
                (issued, failures)
            })
        })
        .collect();
    for _ in 0..20 {
        let (status, body) = env.call("POST", "database/rotate-root/apidb", None).await;
        assert_eq!(status, 204, "{body}");
    }
    rotating.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for issuer in issuers {
        let (issued, failures) = issuer.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        total += issued;
    }
    assert!(total > 0);
    issue_working(&env).await;
}
