//! `pgwarden dev`: a throwaway PostgreSQL, a demo database and the broker, on embedded defaults.

use pgwarden_server::Config;
use pgwarden_server::config::AuthConfig;
use pgwarden_server::config::{ConnectionConfig, MountConfig};
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::issuer::{TestIssuer, TestKey, service_account_claims, sign};
use secrecy::SecretString;
use std::net::SocketAddr;

/// The demo's administrative user in the throwaway cluster.
const ADMIN: &str = "pgwarden_admin";

fn random_token(len: usize) -> String {
    use rand::RngExt;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn demo_mount(cluster: &PgCluster, admin_password: String) -> Result<MountConfig, String> {
    let mut mount = MountConfig::default();
    mount.connections.insert(
        "appdb".into(),
        ConnectionConfig {
            plugin_name: None,
            connection_url: cluster.templated_url("appdb"),
            username: ADMIN.into(),
            password: Some(admin_password.into()),
            password_env: None,
            password_file: None,
            allowed_roles: vec!["appdb-*".into()],
            verify_connection: true,
            auth: Default::default(),
            aws_region: None,
        },
    );
    for (name, preset, ttl, max) in [
        ("appdb-readonly", "readonly", "1h", "24h"),
        ("appdb-user", "user", "1h", "24h"),
        ("appdb-admin", "admin", "15m", "4h"),
        ("appdb-short", "readonly", "10s", "30s"),
    ] {
        let spec = serde_json::json!({ "db_name": "appdb", "preset": preset, "default_ttl": ttl, "max_ttl": max });
        mount.roles.insert(
            name.into(),
            serde_json::from_value(spec).map_err(|e| e.to_string())?,
        );
    }
    Ok(mount)
}

/// Runs the demo until Ctrl-C, then stops the broker and PostgreSQL and deletes their files.
pub async fn run(listen: SocketAddr, root_token: Option<String>) -> Result<(), String> {
    eprintln!("starting a throwaway PostgreSQL…");
    let cluster = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let admin_password = random_token(24);
    cluster
        .create_app_database("appdb", ADMIN, &admin_password)
        .await
        .map_err(|e| e.to_string())?;
    let data = tempfile::Builder::new()
        .prefix("pgwarden-dev-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| format!("creating a temporary data directory: {e}"))?;
    let root_token = root_token.unwrap_or_else(|| random_token(32));
    let mut config = Config::parse("").map_err(|e| e.to_string())?;
    config.listen = listen;
    config.data_dir = data.path().to_path_buf();
    config.root_token = Some(SecretString::from(root_token.clone()));
    config.seal_key = Some(SecretString::from(hex_key()));
    config
        .mounts
        .insert("database".into(), demo_mount(&cluster, admin_password)?);
    // A stand-in for the cluster's service-account issuer, so the Kubernetes login can be tried.
    let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
    let policy_file = data.path().join("policy.yaml");
    std::fs::write(&policy_file, DEMO_POLICY)
        .map_err(|e| format!("writing {}: {e}", policy_file.display()))?;
    config.policy_file = Some(policy_file);
    config
        .auth
        .insert("kubernetes".into(), demo_kubernetes_auth(&issuer)?);
    let sa_token = sign(
        TestKey::Rsa1,
        &service_account_claims(&issuer.issuer(), "pgwarden", "demo", "app", 24 * 3600),
    );
    let approver_token = sign(
        TestKey::Rsa1,
        &service_account_claims(&issuer.issuer(), "pgwarden", "demo", "approver", 24 * 3600),
    );
    let request_flow = request_flow(&sa_token, &approver_token, &root_token, data.path())?;
    let running = pgwarden_server::start(config)
        .await
        .map_err(crate::start_error)?;
    let addr = format!("http://{}", running.addr);
    println!(
        "\npgwarden dev is running: PostgreSQL on 127.0.0.1:{port} (database appdb, table items), state in {data}.\n\
         Everything is deleted on Ctrl-C.\n\n\
         PGWARDEN_ADDR={addr}\n\
         PGWARDEN_TOKEN={root_token}\n\n\
         Try it:\n\
         \x20 export PGWARDEN_ADDR={addr} PGWARDEN_TOKEN={root_token}\n\
         \x20 export VAULT_ADDR=$PGWARDEN_ADDR VAULT_TOKEN=$PGWARDEN_TOKEN   # for Vault clients\n\
         \x20 curl -s -H \"X-Vault-Token: $PGWARDEN_TOKEN\" $PGWARDEN_ADDR/v1/database/creds/appdb-readonly\n\
         \x20 PGPASSWORD=<password> psql -h 127.0.0.1 -p {port} -U <username> appdb -c 'SELECT * FROM items'\n\
         \x20 curl -s -X PUT -H \"X-Vault-Token: $PGWARDEN_TOKEN\" -d '{{\"lease_id\":\"<lease_id>\"}}' $PGWARDEN_ADDR/v1/sys/leases/revoke\n\
         \x20   # the user is dropped and its sessions end: the same psql now fails to log in\n\n\
         Or fetch one and open psql with it in one go (python3 reads the JSON):\n\
         {PSQL_ONE_LINER}\n\n\
         Log in as a pod would (service account demo/app; its token is valid for 24 h) and use the\n\
         returned auth.client_token instead of the root token (policy: appdb-readonly and appdb-user):\n\
         \x20 export PGWARDEN_TOKEN=$(curl -s -X POST $PGWARDEN_ADDR/v1/auth/kubernetes/login \\\n\
         \x20     -d '{{\"role\":\"demo\",\"jwt\":\"{sa_token}\"}}' \\\n\
         \x20     | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"auth\"][\"client_token\"])')\n\
         \x20 curl -s -H \"X-Vault-Token: $PGWARDEN_TOKEN\" $PGWARDEN_ADDR/v1/database/creds/appdb-user\n\n\
         appdb-admin needs an approved access request (service account demo/approver approves; the\n\
         page {addr}/ui/requests does it in a browser). With the pgwarden command line:\n\
         {request_flow}\n\n\
         Roles: appdb-readonly, appdb-user (1h, max 24h), appdb-admin (15m, max 4h), and appdb-short\n\
         (readonly, 10s, max 30s) to watch renewal: cargo run -p pgwarden-client --example steady_queries\n",
        port = cluster.port(),
        data = data.path().display(),
    );
    crate::stop_signal().await;
    eprintln!("stopping…");
    running
        .shutdown()
        .await
        .map_err(|e| format!("stopping the broker: {e}"))?;
    drop(cluster);
    let data_path = data.path().display().to_string();
    data.close()
        .map_err(|e| format!("removing {data_path}: {e}"))?;
    Ok(())
}

/// The demo policy: the service accounts of namespace `demo` may get the readonly and user
/// roles, and ask for the admin role, which `demo/approver` must approve.
const DEMO_POLICY: &str = r#"grants:
  - subjects: ["system:serviceaccount:demo:*"]
    roles: ["database/appdb-readonly", "database/appdb-user"]
    max_ttl: 8h
  - subjects: ["system:serviceaccount:demo:*"]
    roles: ["database/appdb-admin"]
    requires_approval: true
    approvers: ["system:serviceaccount:demo:approver"]
"#;

/// Shell lines that walk an access request through: the app asks, the approver approves, the
/// app opens psql with the credential, root (`root_token`) reads the audit log.
fn request_flow(
    app_jwt: &str,
    approver_jwt: &str,
    root_token: &str,
    data_dir: &std::path::Path,
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let (exe, token_file) = (exe.display(), data_dir.join("cli-token"));
    Ok(format!(
        r#"  PW={exe}; export PGWARDEN_TOKEN_FILE={token_file}
  APP=$($PW login --role demo --print --jwt-stdin <<< '{app_jwt}')
  APPROVER=$($PW login --role demo --print --jwt-stdin <<< '{approver_jwt}')
  ID=$(PGWARDEN_TOKEN=$APP $PW request create database/appdb-admin --reason "try it" --format json     | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  PGWARDEN_TOKEN=$APPROVER $PW request approve $ID --reason "ok"
  PGWARDEN_TOKEN=$APP $PW request creds $ID --psql -- -tAc 'SELECT session_user'
  PGWARDEN_TOKEN={root_token} $PW audit tail   # as root: every step on record"#,
        token_file = token_file.display(),
    ))
}

/// A Kubernetes auth mount trusting the demo issuer, with login role `demo` for namespace `demo`.
fn demo_kubernetes_auth(issuer: &TestIssuer) -> Result<AuthConfig, String> {
    serde_json::from_value(serde_json::json!({
        "type": "kubernetes",
        "issuer": issuer.issuer(),
        "keys": { "jwks_url": issuer.jwks_url() },
        "audiences": ["pgwarden"],
        "roles": { "demo": { "bound_service_account_names": ["*"], "bound_service_account_namespaces": ["demo"] } },
    }))
    .map_err(|e| e.to_string())
}

/// Shell lines that fetch a credential and run psql with it.
const PSQL_ONE_LINER: &str = r#"  eval "$(curl -s -H "X-Vault-Token: $PGWARDEN_TOKEN" $PGWARDEN_ADDR/v1/database/creds/appdb-readonly \
    | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print("export PGUSER=%s PGPASSWORD=%s PGHOST=%s PGPORT=%s PGDATABASE=%s" % (d["username"], d["password"], d["host"], d["port"], d["database"]))')"
  psql -c 'SELECT * FROM items'"#;

fn hex_key() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
