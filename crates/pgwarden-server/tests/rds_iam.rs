//! `auth: rds_iam`: the broker's administrative connection signs in with an RDS IAM token from
//! the AWS keys in its environment, with no administrator password configured. The database
//! is the testkit's RDS stand-in (a PostgreSQL wire-protocol front that checks tokens as RDS
//! does, then hands the connection to a real cluster): users are issued, work, and are revoked
//! through it, and a connection signing for the wrong region gets RDS's refusal.

mod common;

use common::{Env, TestBroker};
use pgwarden_aws::Credentials;
use pgwarden_testkit::rds::{IamPolicy, RdsIamFront};
use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use secrecy::SecretString;
use serde_json::json;

const ACCESS_KEY_ID: &str = "AKIDBROKERRDSIAM";
const SECRET_ACCESS_KEY: &str = "broker-rds-iam-secret-key";

/// The configuration: connection `appdb` signing for the front's region, `elsewhere` for
/// another one, and a role on each.
fn config(port: u16) -> String {
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
    roles:
      appdb-readonly: {{ db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 24h }}
      elsewhere-readonly: {{ db_name: elsewhere, preset: readonly, default_ttl: 1h, max_ttl: 24h }}
"#
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
    let front = RdsIamFront::start(
        &cluster,
        IamPolicy {
            credentials: Credentials::new(
                ACCESS_KEY_ID,
                SecretString::from(SECRET_ACCESS_KEY),
                None,
            ),
            region: "eu-west-1".into(),
            passwords: [(APP_ADMIN.to_string(), APP_ADMIN_PASSWORD.to_string())].into(),
        },
    )
    .await
    .unwrap();
    let mut broker = TestBroker::from_yaml(config(front.port));
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
