//! `auth: rds_iam`: the broker's administrative connection signs in with an RDS IAM token from
//! the AWS keys in its environment, with no administrator password configured. The database
//! is the testkit's RDS stand-in (a PostgreSQL wire-protocol front that checks tokens as RDS
//! does, then hands the connection to a real cluster): users are issued, work, and are revoked
//! through it, over TLS (`sslmode=verify-full`) too, and a connection signing for the wrong
//! region gets RDS's refusal.

mod common;

use common::{Env, TestBroker};
use pgwarden_aws::Credentials;
use pgwarden_testkit::rds::{IamPolicy, RdsIamFront};
use pgwarden_testkit::tls::TestCa;
use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use secrecy::SecretString;
use serde_json::json;

const ACCESS_KEY_ID: &str = "AKIDBROKERRDSIAM";
const SECRET_ACCESS_KEY: &str = "broker-rds-iam-secret-key";

/// The configuration: connection `appdb` signing for the front's region, `elsewhere` for
/// another one, `secure` through the TLS front (trusting `ca_file`), and a role on each.
fn config(port: u16, tls_port: u16, ca_file: &std::path::Path) -> String {
    format!(
        r#"
mounts:
  database:
    connections:
      appdb:
        connection_url: "postgresql://127.0.0.1:{port}/appdb?sslmode=disable"
        username: {APP_ADMIN}
        auth: rds_iam
        aws_region: eu-west-1
        allowed_roles: ["*"]
      elsewhere:
        connection_url: "postgresql://127.0.0.1:{port}/appdb?sslmode=disable"
        username: {APP_ADMIN}
        auth: rds_iam
        aws_region: us-east-1
        allowed_roles: ["*"]
        verify_connection: false
      secure:
        connection_url: "postgresql://127.0.0.1:{tls_port}/appdb?sslmode=verify-full&sslrootcert={ca}"
        username: {APP_ADMIN}
        auth: rds_iam
        aws_region: eu-west-1
        allowed_roles: ["*"]
    roles:
      appdb-readonly: {{ db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 24h }}
      elsewhere-readonly: {{ db_name: elsewhere, preset: readonly, default_ttl: 1h, max_ttl: 24h }}
      secure-login:
        db_name: secure
        creation_statements: ["CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}';"]
"#,
        ca = ca_file.display()
    )
}

#[test]
fn the_broker_signs_in_to_rds_with_iam_tokens() {
    // SAFETY: this test binary runs this one test, and no other thread exists yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY);
        for name in [
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            std::env::remove_var(name);
        }
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(signs_in_issues_and_revokes());
}

async fn signs_in_issues_and_revokes() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let policy = |tls| IamPolicy {
        credentials: Credentials::new(ACCESS_KEY_ID, SecretString::from(SECRET_ACCESS_KEY), None),
        region: "eu-west-1".into(),
        passwords: [(APP_ADMIN.to_string(), APP_ADMIN_PASSWORD.to_string())].into(),
        tls,
    };
    let front = RdsIamFront::start(&cluster, policy(None)).await.unwrap();
    let ca = TestCa::localhost();
    let secure_front = RdsIamFront::start(&cluster, policy(Some(ca.server_config.clone())))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let mut broker = TestBroker::from_yaml(config(front.port, secure_front.port, &ca_file));
    broker.boot().await;
    // `verify_connection` signed in once at start-up.
    assert!(
        front.accepted() >= 1,
        "the start-up check went through the front"
    );
    let env = Env {
        cluster,
        broker,
        http: reqwest::Client::new(),
    };

    let creds = env.creds("appdb-readonly").await;
    let client = env.login(&creds).await.expect("the issued user signs in");
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/revoke",
            Some(json!({"lease_id": creds.lease_id})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let Err(error) = env.login(&creds).await else {
        panic!("the revoked user still signs in");
    };
    common::assert_invalid_password(error);
    assert!(!env.role_exists(&creds.username).await);

    // Through TLS, with the server's certificate verified.
    let secure = env.creds("secure-login").await;
    assert!(secure_front.accepted() >= 1);
    assert_eq!(secure_front.refused(), 0);
    env.login(&secure)
        .await
        .expect("a user issued over the TLS front signs in");
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/revoke",
            Some(json!({"lease_id": secure.lease_id})),
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // Background work (the orphan scan, the administrator check) may already have tried
    // `elsewhere`; a request on it is refused once more.
    let refused_before = front.refused();

    let (status, body) = env
        .call("GET", "database/creds/elsewhere-readonly", None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["errors"][0],
        format!(
            "database of connection \"elsewhere\" is unreachable: PAM authentication failed \
             for user \"{APP_ADMIN}\" (SQLSTATE 28000); the RDS IAM token was refused: check \
             that the AWS identity may rds-db:connect as this user, the region (aws_region), and \
             that the user is granted rds_iam"
        ),
        "{body}"
    );
    assert!(front.refused() > refused_before);
}
