//! Shared harness: a real PostgreSQL from the testkit, an in-process pgwarden, an HTTP client.
#![allow(dead_code, unused_imports)]

use pgwarden_testkit::PgCluster;
pub use pgwarden_testkit::broker::{ROOT_TOKEN as ROOT, TestBroker};
pub use pgwarden_testkit::{APP_ADMIN as ADMIN, APP_ADMIN_PASSWORD as ADMIN_PW};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A cluster with database `appdb`, and a server whose mount `database` has a connection
/// `appdb` and the roles in `roles_yaml` (indented under `roles:`).
pub struct Env {
    pub cluster: PgCluster,
    /// The in-process server and its data directory.
    pub broker: TestBroker,
    pub http: reqwest::Client,
}

pub const ROLES: &str = r#"
      appdb-readonly: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 24h }
      appdb-user:     { db_name: appdb, preset: user,     default_ttl: 1h, max_ttl: 24h, schemas: [public] }
      appdb-admin:    { db_name: appdb, preset: admin,    default_ttl: 15m, max_ttl: 4h }
      custom-reader:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
          - GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";
        default_ttl: 5m
        max_ttl: 1h
"#;

impl Env {
    pub async fn start(roles: &str) -> Env {
        Env::start_with(roles, "").await
    }

    /// Like [`Env::start`], with `extra` top-level YAML in the config.
    pub async fn start_with(roles: &str, extra: &str) -> Env {
        let cluster = PgCluster::start_with_appdb().await.unwrap();
        let broker = TestBroker::start(&cluster, roles, extra).await;
        Env {
            cluster,
            broker,
            http: reqwest::Client::new(),
        }
    }

    /// Restarts the in-process server on the same data directory and config.
    pub async fn boot(&mut self) {
        self.broker.boot().await;
    }

    pub async fn stop(&mut self) {
        self.broker.stop().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{}", self.broker.base, path.trim_start_matches('/'))
    }

    /// Sends `method` to `/v1/<path>` with the root token and an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(ROOT, method, path, body).await
    }

    /// Sends `method` to `/v1/<path>` with `token` and an optional JSON body.
    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                self.url(path),
            )
            .header("X-Vault-Token", token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    /// `sys/leases/lookup` of `lease_id` as root: the answer's `data` and its `expire_time`.
    pub async fn lookup_lease(&self, lease_id: &str) -> (Value, time::OffsetDateTime) {
        let (status, lookup) = self
            .call(
                "PUT",
                "sys/leases/lookup",
                Some(serde_json::json!({ "lease_id": lease_id })),
            )
            .await;
        assert_eq!(status, 200, "{lookup}");
        let expire = time::OffsetDateTime::parse(
            lookup["data"]["expire_time"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        (lookup, expire)
    }

    /// Logs a person in on the `jwt` mount (login role `people`) with an ID token `issuer`
    /// signs with `TestKey::Ec1` for audience `pgwarden`; returns the pgwarden token.
    pub async fn login_person(
        &self,
        issuer: &pgwarden_testkit::issuer::TestIssuer,
        email: &str,
        groups: &[&str],
    ) -> String {
        let jwt = issuer.person_token(
            pgwarden_testkit::issuer::TestKey::Ec1,
            "pgwarden",
            email,
            groups,
        );
        let (status, body) = self
            .call_as(
                "",
                "POST",
                "auth/jwt/login",
                Some(serde_json::json!({ "role": "people", "jwt": jwt })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }

    pub async fn creds(&self, role: &str) -> Creds {
        let (status, body) = self
            .call("GET", &format!("database/creds/{role}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        Creds {
            lease_id: body["lease_id"].as_str().unwrap().to_string(),
            username: body["data"]["username"].as_str().unwrap().to_string(),
            password: body["data"]["password"].as_str().unwrap().to_string(),
            lease_duration: body["lease_duration"].as_u64().unwrap(),
        }
    }

    /// Revokes `lease_id` now (`sys/leases/revoke`): the status and body.
    pub async fn revoke(&self, lease_id: &str) -> (u16, Value) {
        let body = serde_json::json!({ "lease_id": lease_id });
        self.call("PUT", "sys/leases/revoke", Some(body)).await
    }

    pub async fn login(
        &self,
        creds: &Creds,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.cluster
            .connect_as(&creds.username, &creds.password, "appdb")
            .await
    }

    pub async fn role_exists(&self, name: &str) -> bool {
        self.cluster.role_exists(name).await.unwrap()
    }

    /// Polls until the mount `database` holds no lease or `limit` passes; returns how long it
    /// took.
    pub async fn wait_no_leases(&self, limit: Duration) -> Option<Duration> {
        poll_until(limit, || async {
            let (status, _) = self
                .call("LIST", "sys/leases/lookup/database/creds/", None)
                .await;
            status == 404
        })
        .await
    }

    /// Polls until `name` is gone from pg_roles or `limit` passes; returns how long it took.
    pub async fn wait_role_gone(&self, name: &str, limit: Duration) -> Option<Duration> {
        poll_until(limit, || async { !self.role_exists(name).await }).await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.broker.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub struct Creds {
    pub lease_id: String,
    pub username: String,
    pub password: String,
    pub lease_duration: u64,
}

/// Asks `done` every 100 ms until it says yes or `limit` passes; how long it took.
pub async fn poll_until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut done: impl FnMut() -> F,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("metric {name} not in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

pub fn assert_invalid_password(err: tokio_postgres::Error) {
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err:?}"
    );
}
