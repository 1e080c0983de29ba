//! Compatibility with hvac, the Python Vault client: configure a connection and a role,
//! log in with a Kubernetes service-account token, generate credentials, renew and revoke the
//! lease, manage a static role and rotate the root password, all through hvac's own methods.
//!
//! The Python interpreter is `$PGWARDEN_TEST_PYTHON`, else `<workspace>/.venv/bin/python`
//! (`scripts/test` creates it with hvac installed).

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use serde_json::Value;
use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

/// A Python script driving hvac, which prints one JSON line per step and waits for a line on
/// stdin after issuing credentials.
struct Script {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Script {
    fn start(name: &str, env: &[(&str, String)]) -> Script {
        let mut child = Command::new(python())
            .arg(format!("{}/tests/{name}", env!("CARGO_MANIFEST_DIR")))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Script { child, lines }
    }

    fn next(&mut self) -> Value {
        let line = self
            .lines
            .next()
            .expect("the hvac script ended early (see its traceback above)")
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn proceed(&mut self) {
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
    }

    fn finish(mut self) {
        assert!(self.child.wait().unwrap().success());
    }
}

/// Logs in with the issued credentials (must work), lets the script renew and revoke, then
/// checks the renewal was capped at `max_ttl` and that the password no longer works.
async fn check_lease_cycle(cluster: &PgCluster, script: &mut Script, issued: &Value, max_ttl: u64) {
    let (user, password) = (
        issued["username"].as_str().unwrap(),
        issued["password"].as_str().unwrap(),
    );
    let client = cluster
        .connect_as(user, password, "appdb")
        .await
        .expect("hvac-issued password works");
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    script.proceed();
    let renewed = script.next();
    let capped = renewed["renewed_duration"].as_u64().unwrap();
    assert!(
        (max_ttl - 2..=max_ttl).contains(&capped),
        "renewal capped at the max TTL, got {capped}"
    );
    assert!(
        renewed["warnings"][0].as_str().unwrap().contains("capped"),
        "{renewed}"
    );
    assert_eq!(renewed["lookup_id"], issued["lease_id"]);

    let revoked = script.next();
    assert_eq!(revoked["revoke_status"], 204);
    let err = cluster
        .connect_as(user, password, "appdb")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    assert!(!cluster.role_exists(user).await.unwrap());
}

#[tokio::test]
async fn hvac_configures_issues_renews_and_revokes() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seal_key = dir.path().join("seal.key");
    std::fs::write(&seal_key, "0123456789abcdef".repeat(4)).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ROOT).unwrap();
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: \"{}\"\nroot_token_file: \"{}\"\nseal_key_file: \"{}\"\nmounts:\n  database: {{}}\n",
            dir.path().join("data").display(),
            token_file.display(),
            seal_key.display()
        ),
    )
    .unwrap();
    let server = spawn_server(&config, free_port(), &[]).await;
    cluster
        .create_static_user(STATIC_USER, "before-pgwarden")
        .await
        .unwrap();

    let mut script = Script::start(
        "hvac_compat.py",
        &[
            ("VAULT_ADDR", server.base.clone()),
            ("VAULT_TOKEN", ROOT.to_string()),
            ("APPDB_URL", cluster.templated_url("appdb")),
            ("APPDB_ADMIN", ADMIN.to_string()),
            ("APPDB_ADMIN_PASSWORD", ADMIN_PW.to_string()),
            ("STATIC_USER", STATIC_USER.to_string()),
        ],
    );
    let issued = script.next();
    assert_eq!(issued["role_default_ttl"], 60);
    assert_eq!(issued["lease_duration"], 60);
    assert!(
        issued["lease_id"]
            .as_str()
            .unwrap()
            .starts_with("database/creds/hvac-reader/")
    );
    check_lease_cycle(&cluster, &mut script, &issued, 120).await;

    let first = script.next();
    assert_eq!(first["username"], STATIC_USER);
    assert_eq!(first["rotation_period"], 3600);
    assert_eq!(first["keys"], serde_json::json!(["hvac-static"]));
    assert!(
        first["last_vault_rotation"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let ttl = first["ttl"].as_u64().unwrap();
    assert!((3590..=3600).contains(&ttl), "{first}");
    let first_password = first["password"].as_str().unwrap();
    assert!(static_user_signs_in(&cluster, first_password).await);
    assert!(!static_user_signs_in(&cluster, "before-pgwarden").await);
    script.proceed();
    let second = script.next();
    let second_password = second["password"].as_str().unwrap();
    assert_ne!(second_password, first_password);
    assert!(static_user_signs_in(&cluster, second_password).await);
    assert!(!static_user_signs_in(&cluster, first_password).await);
    script.proceed();
    assert_eq!(script.next()["delete_status"], 204);

    let after_root_rotation = script.next();
    cluster
        .connect_as(
            after_root_rotation["username"].as_str().unwrap(),
            after_root_rotation["password"].as_str().unwrap(),
            "appdb",
        )
        .await
        .expect("credentials issued after rotate-root work");
    assert!(
        cluster.connect_as(ADMIN, ADMIN_PW, "appdb").await.is_err(),
        "the administrator's old password is dead"
    );
    script.finish();
}

/// The existing user the hvac script makes a static role of.
const STATIC_USER: &str = "hvac_legacy";

async fn static_user_signs_in(cluster: &PgCluster, password: &str) -> bool {
    cluster
        .connect_as(STATIC_USER, password, "appdb")
        .await
        .is_ok()
}

// Multi-threaded: the script's output is read with blocking calls while the test issuer, a
// task on this runtime, must keep answering the server's key requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_logs_in_with_a_service_account_token() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let issuer = TestIssuer::start(&[TestKey::Ec1]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ROOT).unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "grants:\n  - subjects: [\"system:serviceaccount:team-a:*\"]\n    roles: [\"database/appdb-user\"]\n",
    )
    .unwrap();
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir: "{data}"
root_token_file: "{token}"
policy_file: "{policy}"
auth:
  kubernetes:
    type: kubernetes
    issuer: "{iss}"
    keys: {{ oidc_discovery: true }}
    audiences: [pgwarden]
    roles:
      team-a: {{ bound_service_account_names: [app], bound_service_account_namespaces: [team-a] }}
mounts:
  database:
    connections:
      appdb:
        connection_url: "{url}"
        username: {ADMIN}
        password: {ADMIN_PW}
        allowed_roles: ["appdb-*"]
    roles:
      appdb-user: {{ db_name: appdb, preset: user, default_ttl: 1m, max_ttl: 3m }}
"#,
            data = dir.path().join("data").display(),
            token = token_file.display(),
            policy = policy.display(),
            iss = issuer.issuer(),
            url = cluster.templated_url("appdb"),
        ),
    )
    .unwrap();
    let server = spawn_server(&config, free_port(), &[]).await;
    let jwt = issuer.service_account_token(TestKey::Ec1, "pgwarden", "team-a", "app");
    let mut script = Script::start(
        "hvac_k8s.py",
        &[("VAULT_ADDR", server.base.clone()), ("SA_JWT", jwt)],
    );
    let issued = script.next();
    assert_eq!(
        issued["login_metadata"]["service_account_namespace"],
        "team-a"
    );
    assert_eq!(issued["lease_duration"], 60);
    assert!(
        issued["username"]
            .as_str()
            .unwrap()
            .starts_with("v-kubernet-appdb-us-")
    );
    check_lease_cycle(&cluster, &mut script, &issued, 180).await;
    script.finish();
}
