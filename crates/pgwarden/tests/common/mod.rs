//! Shared helpers: the real `pgwarden` binary as a child process, and a small API client.
#![allow(dead_code, unused_imports)]

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use pgwarden_testkit::{APP_ADMIN as ADMIN, APP_ADMIN_PASSWORD as ADMIN_PW};
pub const ROOT: &str = "binary-test-root-token";

/// A `pgwarden server` child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with hvac: `$PGWARDEN_TEST_PYTHON`, else `<workspace>/.venv/bin/python`
/// (`scripts/test` creates it with hvac installed).
pub fn python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PGWARDEN_TEST_PYTHON") {
        return std::path::PathBuf::from(path);
    }
    let venv = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with hvac: run scripts/test, or `python3 -m venv .venv && .venv/bin/pip install hvac`, or set PGWARDEN_TEST_PYTHON"
    );
    venv
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `pgwarden server --config <config>` on `port` and waits until it answers.
pub async fn spawn_server(config: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Server {
    let base = format!("http://127.0.0.1:{port}");
    serving(config, port, env, base, reqwest::Client::new()).await
}

/// [`spawn_server`] for a configuration serving https with a certificate signed by the CA
/// `ca_pem`.
pub async fn spawn_tls_server(
    config: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
    ca_pem: &str,
) -> Server {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    serving(config, port, env, base, client).await
}

/// Starts the server and waits until `client` gets its health at `base`.
async fn serving(
    config: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
    base: String,
    client: reqwest::Client,
) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["server", "--config"])
        .arg(config)
        .env("PGWARDEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGWARDEN_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, base };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if client
            .get(format!("{}/v1/sys/health", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pgwarden server did not come up");
}

pub async fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}/v1/{path}"),
        )
        .header("X-Vault-Token", token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The environment giving the servers of [`write_config`] their administrator's password.
pub const APPDB_ENV: [(&str, &str); 1] = [("TEST_APPDB_PASSWORD", ADMIN_PW)];

/// Writes into `dir` the root-token file and the server configuration `name`: top-level
/// YAML `top` (where the state lives), and mount `database` with connection `appdb` on
/// `cluster` (password from [`APPDB_ENV`]) and the roles in `roles` (map entries indented by
/// six spaces, as under `roles:`). Returns the configuration's path.
pub fn write_config(
    dir: &std::path::Path,
    name: &str,
    cluster: &pgwarden_testkit::PgCluster,
    top: &str,
    roles: &str,
) -> std::path::PathBuf {
    let token_file = dir.join("root-token");
    std::fs::write(&token_file, format!("{ROOT}\n")).unwrap();
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            r#"
root_token_file: "{token}"
{top}
mounts:
  database:
    connections:
      appdb:
        connection_url: "{url}"
        username: {ADMIN}
        password_env: TEST_APPDB_PASSWORD
        allowed_roles: ["appdb-*"]
    roles:
{roles}
"#,
            token = token_file.display(),
            url = cluster.templated_url("appdb"),
        ),
    )
    .unwrap();
    config
}

/// Top-level YAML for service account `app` of namespace `team-a`: a policy file, written into
/// `dir`, granting it `roles` (`database/<role>`), and the auth mount `kubernetes` trusting
/// `issuer` for audience `pgwarden`, whose login role `team-a` binds that account, with
/// `role_extra` (e.g. `, token_ttl: 2s`) added to its settings.
pub fn team_a_login(
    dir: &std::path::Path,
    issuer: &pgwarden_testkit::issuer::TestIssuer,
    roles: &[&str],
    role_extra: &str,
) -> String {
    let policy = dir.join("policy.yaml");
    let granted: Vec<String> = roles.iter().map(|role| format!("\"{role}\"")).collect();
    std::fs::write(
        &policy,
        format!(
            "grants:\n  - subjects: [\"system:serviceaccount:team-a:app\"]\n    roles: [{}]\n",
            granted.join(", ")
        ),
    )
    .unwrap();
    format!(
        r#"policy_file: "{policy}"
auth:
  kubernetes:
    type: kubernetes
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [pgwarden]
    roles:
      team-a: {{ bound_service_account_names: [app], bound_service_account_namespaces: [team-a]{role_extra} }}
"#,
        policy = policy.display(),
        iss = issuer.issuer(),
        jwks = issuer.jwks_url(),
    )
}
