//! Static roles against a real PostgreSQL with an ordinary administrator: defining one takes
//! the user's password over at once, `static-creds` hands out a password that works,
//! `rotate-role` and the rotation period change it (the old one stops working), concurrent
//! rotations and reads never lose the password, and bad definitions get exact errors.

mod common;

use common::{Env, ROLES, TestBroker};
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const USER: &str = "legacy app";
const FIRST_PASSWORD: &str = "set-by-a-person-long-ago";

/// An environment whose database has the existing login `USER`, which the administrator may
/// alter (PostgreSQL 16+ asks for ADMIN OPTION on it; earlier versions take CREATEROLE).
async fn env_with_legacy_user() -> Env {
    let env = Env::start(ROLES).await;
    env.cluster
        .create_static_user(USER, FIRST_PASSWORD)
        .await
        .unwrap();
    env
}

/// Whether `password` signs `USER` in.
async fn signs_in(env: &Env, password: &str) -> bool {
    match env.cluster.connect_as(USER, password, "appdb").await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(error) => {
            common::assert_invalid_password(error);
            false
        }
    }
}

/// `static-creds/<name>`: its `data`.
async fn static_creds(env: &Env, name: &str) -> Value {
    let (status, body) = env
        .call("GET", &format!("database/static-creds/{name}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lease_id"], "", "no lease, as in Vault");
    body["data"].clone()
}

fn password(data: &Value) -> String {
    data["password"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_role_owns_and_rotates_an_existing_users_password() {
    let env = env_with_legacy_user().await;
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": "1h"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(
        !signs_in(&env, FIRST_PASSWORD).await,
        "defining the role changed the password at once"
    );
    let first = static_creds(&env, "legacy").await;
    assert_eq!(first["username"], USER);
    assert_eq!(first["rotation_period"], 3600);
    let ttl = first["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{first}");
    assert!(signs_in(&env, &password(&first)).await);

    let (status, info) = env.call("GET", "database/static-roles/legacy", None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["data"]["username"], USER);
    assert_eq!(info["data"]["db_name"], "appdb");
    assert_eq!(info["data"]["rotation_period"], 3600);
    assert_eq!(
        info["data"]["last_vault_rotation"],
        first["last_vault_rotation"]
    );
    let (status, list) = env.call("LIST", "database/static-roles", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"]["keys"], json!(["legacy"]));

    // On demand.
    let (status, body) = env.call("POST", "database/rotate-role/legacy", None).await;
    assert_eq!(status, 204, "{body}");
    let second = static_creds(&env, "legacy").await;
    assert_ne!(password(&second), password(&first));
    assert!(!signs_in(&env, &password(&first)).await);
    assert!(signs_in(&env, &password(&second)).await);

    // On its period: 5 seconds, the shortest Vault allows.
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 5})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let third = loop {
        let now = static_creds(&env, "legacy").await;
        if now["last_vault_rotation"] != second["last_vault_rotation"] {
            break now;
        }
        assert!(Instant::now() < deadline, "no rotation after its period");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(third["ttl"].as_u64().unwrap() <= 5, "{third}");
    assert!(!signs_in(&env, &password(&second)).await);
    assert!(signs_in(&env, &password(&static_creds(&env, "legacy").await)).await);

    // A rotation that fails before COMMIT leaves the password in force, and reads go on.
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": "1h",
                "rotation_statements": ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}' NOSUCHOPTION"]})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let before = static_creds(&env, "legacy").await;
    let (status, body) = env.call("POST", "database/rotate-role/legacy", None).await;
    assert_eq!(status, 500, "{body}");
    let after = static_creds(&env, "legacy").await;
    assert_eq!(password(&after), password(&before));
    assert!(signs_in(&env, &password(&after)).await);

    // Deleting forgets the role and leaves the user alone.
    let (status, _) = env
        .call("DELETE", "database/static-roles/legacy", None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = env.call("GET", "database/static-creds/legacy", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["errors"][0],
        "static role \"legacy\" not found in mount \"database\""
    );
    assert!(env.cluster.role_exists(USER).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_and_reads_never_lose_the_password() {
    let env = env_with_legacy_user().await;
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": USER,
                "rotation_schedule": "0 3 * * *",
                "rotation_statements": ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}';"]})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let info = env
        .call("GET", "database/static-roles/legacy", None)
        .await
        .1;
    assert_eq!(info["data"]["rotation_schedule"], "0 3 * * *");
    assert!(info["data"].get("rotation_period").is_none(), "{info}");

    let env = std::sync::Arc::new(env);
    let mut tasks = Vec::new();
    for n in 0..16 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            if n % 2 == 0 {
                env.call("POST", "database/rotate-role/legacy", None).await
            } else {
                env.call("GET", "database/static-creds/legacy", None).await
            }
        }));
    }
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(status == 204 || status == 200, "{status} {body}");
    }
    let now = static_creds(&env, "legacy").await;
    assert!(
        signs_in(&env, &password(&now)).await,
        "the stored password is the user's after concurrent rotations"
    );
    let ttl = now["ttl"].as_u64().unwrap();
    assert!(ttl <= 86_400 && ttl > 0, "next 03:00 UTC: {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_static_roles_get_exact_errors() {
    let env = env_with_legacy_user().await;
    for (body, error) in [
        (
            json!({"db_name": "appdb", "username": "nobody", "rotation_period": 60}),
            "user \"nobody\" does not exist in connection \"appdb\": a static role manages an \
             existing user; create it first",
        ),
        (
            json!({"db_name": "elsewhere", "username": USER, "rotation_period": 60}),
            "role \"legacy\" names connection \"elsewhere\", which does not exist in mount \
             \"database\"",
        ),
        (
            json!({"db_name": "appdb", "username": USER}),
            "role \"legacy\": one of rotation_period or rotation_schedule is required",
        ),
        (
            json!({"db_name": "appdb", "username": common::ADMIN, "rotation_period": 60}),
            "user \"pgwarden_admin\" is the administrator of connection \"appdb\"; a static \
             role cannot manage it (rotate-root changes an API connection's administrator \
             password)",
        ),
        (
            json!({"db_name": "appdb", "username": USER, "rotation_schedule": "every day"}),
            "role \"legacy\": rotation_schedule \"every day\" is not a five-field cron \
             expression: Invalid pattern: Pattern must have 5 fields when seconds are \
             disallowed.",
        ),
    ] {
        let (status, answer) = env
            .call("POST", "database/static-roles/legacy", Some(body))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["errors"][0], error);
    }
    let (status, body) = env.call("GET", "database/static-roles/legacy", None).await;
    assert_eq!(status, 404, "a failed definition is not kept: {body}");
    assert!(signs_in(&env, FIRST_PASSWORD).await, "nothing was changed");

    // Statements that end the transaction: refused, the new password kept (it may be the
    // user's now) and set again once the statements are fixed.
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/committing",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 60,
                "rotation_statements": ["ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'", "COMMIT"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["errors"][0],
        "the rotation_statements of static role \"committing\" end the transaction (COMMIT, \
         ROLLBACK or END): remove that statement and write the role again; until then the \
         user's password may already be the new one, which pgwarden keeps and sets again"
    );
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/committing",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 60})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(signs_in(&env, &password(&static_creds(&env, "committing").await)).await);
    let (status, _) = env
        .call("DELETE", "database/static-roles/committing", None)
        .await;
    assert_eq!(status, 204);

    // Changing the user of an existing role is refused.
    let (status, _) = env
        .call(
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 60})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": "other", "rotation_period": 60})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0],
        "static role \"legacy\" manages user \"legacy app\" of connection \"appdb\"; its \
         username and db_name cannot change: delete the static role and create it again"
    );
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/twin",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 60})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0],
        "user \"legacy app\" of connection \"appdb\" is already managed by static role \"legacy\""
    );
    // Nor through a connection to another database of the same server: the user is the same.
    let (status, body) = env
        .call(
            "POST",
            "database/config/postgres-db",
            Some(
                json!({ "connection_url": env.cluster.templated_url("postgres"),
                "username": common::ADMIN, "password": common::ADMIN_PW, "allowed_roles": "*" }),
            ),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/twin",
            Some(json!({"db_name": "postgres-db", "username": USER, "rotation_period": 60})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0],
        format!(
            "user \"legacy app\" of connection \"postgres-db\" is already managed by static role \
             \"legacy\" of connection \"appdb\" in mount \"database\", on the same server \
             (127.0.0.1:{}): a role is shared by every database of a server, and two rotations \
             would undo each other",
            env.cluster.port()
        )
    );
    // A connection whose static roles manage users on its server cannot move to another.
    env.cluster
        .create_static_user("other app", FIRST_PASSWORD)
        .await
        .unwrap();
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/other",
            Some(json!({"db_name": "postgres-db", "username": "other app", "rotation_period": 60})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let elsewhere = env
        .cluster
        .templated_url("postgres")
        .replace("127.0.0.1", "localhost");
    let (status, body) = env
        .call(
            "POST",
            "database/config/postgres-db",
            Some(
                json!({ "connection_url": elsewhere, "username": common::ADMIN,
                "password": common::ADMIN_PW, "allowed_roles": "*" }),
            ),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        body["errors"][0],
        "connection \"postgres-db\" is used by static role(s) other; its hosts cannot change \
         while they manage users there: delete them first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_role_of_the_file_gets_its_first_password_from_the_leader() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    cluster
        .create_static_user(USER, FIRST_PASSWORD)
        .await
        .unwrap();
    let roles = format!(
        "{ROLES}    static_roles:\n      \
         from-file: {{ db_name: appdb, username: \"{USER}\", rotation_schedule: \"0 3 * * *\" }}\n"
    );
    // People of group ops may read this static role's password, nothing else.
    let issuer = TestIssuer::start(&[TestKey::Ec1]).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "grants:\n  - subjects: [\"group:ops\"]\n    roles: [\"database/static-creds/from-file\"]\n",
    )
    .unwrap();
    let extra = format!(
        r#"
policy_file: "{policy}"
auth:
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [pgwarden]
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
"#,
        policy = policy.display(),
        iss = issuer.issuer(),
        jwks = issuer.jwks_url(),
    );
    let broker = TestBroker::start(&cluster, &roles, &extra).await;
    let env = Env {
        cluster,
        broker,
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let (status, body) = env
            .call("GET", "database/static-creds/from-file", None)
            .await;
        if status == 200 {
            break body["data"].clone();
        }
        assert_eq!(status, 503, "no password before the first rotation: {body}");
        assert!(Instant::now() < deadline, "no first rotation: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(signs_in(&env, &password(&first)).await);
    assert!(!signs_in(&env, FIRST_PASSWORD).await);

    let ops = env.login_person(&issuer, "ola@example.com", &["ops"]).await;
    let dev = env
        .login_person(&issuer, "kari@example.com", &["dev"])
        .await;
    let (status, body) = env
        .call_as(&ops, "GET", "database/static-creds/from-file", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["password"], first["password"]);
    for (token, path) in [
        (&dev, "database/static-creds/from-file"),
        (&ops, "database/static-roles/from-file"),
        (&ops, "database/rotate-role/from-file"),
    ] {
        let (status, body) = env.call_as(token, "GET", path, None).await;
        assert_eq!(
            (status, body["errors"][0].as_str()),
            (403, Some("permission denied")),
            "{path}"
        );
    }
    let refused = "static role \"from-file\" of mount \"database\" is defined in the \
                   configuration file; change it there";
    let (status, body) = env
        .call(
            "POST",
            "database/static-roles/from-file",
            Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 60})),
        )
        .await;
    assert_eq!((status, body["errors"][0].as_str()), (400, Some(refused)));
    let (status, body) = env
        .call("DELETE", "database/static-roles/from-file", None)
        .await;
    assert_eq!((status, body["errors"][0].as_str()), (400, Some(refused)));
    // Rotating on demand is not a change of definition.
    let (status, body) = env
        .call("POST", "database/rotate-role/from-file", None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_ne!(
        password(&static_creds(&env, "from-file").await),
        password(&first)
    );
}
