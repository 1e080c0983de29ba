//! Web identity through STS `AssumeRoleWithWebIdentity`: against moto's server (PyPI
//! `moto[server]`, which speaks the real protocol) when it is installed, and against a one-shot
//! fake STS for the error answer.
//!
//! moto_server is found as `common` says; without it the moto tests print SKIPPED and pass,
//! unless PGWARDEN_REQUIRE_MOTO is set.

mod common;

use common::start_moto;
use pgwarden_aws::{CredentialChain, Env, rds_auth_token};
use secrecy::ExposeSecret;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/pgwarden-test";

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    // moto does not check the token; a JWT-shaped one keeps the request realistic.
    std::fs::write(
        &path,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl\n",
    )
    .expect("write token file");
    path
}

#[tokio::test]
async fn environment_web_identity_through_moto_is_cached_and_refreshed() {
    let Some(moto) = start_moto("environment_web_identity_through_moto").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let token = token_file(dir.path());
    let env = || {
        Env::from_pairs([
            ("HOME", dir.path().to_str().expect("utf-8 path")),
            ("AWS_ROLE_ARN", ROLE_ARN),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token.to_str().expect("utf-8 path"),
            ),
            ("AWS_ROLE_SESSION_NAME", "pgwarden-test"),
            ("AWS_ENDPOINT_URL_STS", moto.url.as_str()),
        ])
    };

    let chain = CredentialChain::new(env());
    let first = chain.credentials().await.expect("credentials from moto");
    assert_eq!(first.source(), "web identity");
    assert!(first.access_key_id().starts_with("ASIA"), "{first:?}");
    assert!(!first.secret_access_key().expose_secret().is_empty());
    let session_token = first.session_token().expect("a session token");
    let expires = first.expires_at().expect("an expiry");
    assert!(
        expires > SystemTime::now() + Duration::from_secs(600),
        "{expires:?}"
    );

    // Fresh credentials come from the cache: moto would hand out new keys.
    let again = chain.credentials().await.expect("cached");
    assert_eq!(again.access_key_id(), first.access_key_id());

    // With a refresh window longer than their life, every call fetches new ones.
    let eager = CredentialChain::new(env()).with_refresh_before(Duration::from_secs(2 * 3600));
    let one = eager.credentials().await.expect("first fetch");
    let two = eager.credentials().await.expect("refetch");
    assert_ne!(one.access_key_id(), two.access_key_id());

    // The temporary credentials sign tokens that carry their session token.
    let made = rds_auth_token(
        "db.example.com",
        5432,
        "app",
        "us-east-1",
        &first,
        SystemTime::now(),
    )
    .expect("token");
    // A session token is base64: encoding every non-alphanumeric byte is botocore's encoding.
    let encoded = percent_encoding::utf8_percent_encode(
        session_token.expose_secret(),
        percent_encoding::NON_ALPHANUMERIC,
    );
    assert!(
        made.contains(&format!("&X-Amz-Security-Token={encoded}&X-Amz-Signature=")),
        "{made}"
    );
}

#[tokio::test]
async fn profile_web_identity_through_moto() {
    let Some(moto) = start_moto("profile_web_identity_through_moto").await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    token_file(dir.path());
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!("[profile irsa]\nrole_arn = {ROLE_ARN}\nweb_identity_token_file = ~/token\n"),
    )
    .expect("write config");
    let env = Env::from_pairs([
        ("HOME", dir.path().to_str().expect("utf-8 path")),
        ("AWS_CONFIG_FILE", config.to_str().expect("utf-8 path")),
        ("AWS_PROFILE", "irsa"),
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
    ]);
    let credentials = CredentialChain::new(env)
        .credentials()
        .await
        .expect("credentials from moto");
    assert_eq!(credentials.source(), "web identity");
    assert!(credentials.session_token().is_some());
}

#[tokio::test]
async fn an_sts_error_answer_is_reported_with_its_code() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = vec![0u8; 16 * 1024];
        let read = socket.read(&mut request).await.expect("read request");
        let body = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
                    <Message>Incorrect token audience</Message></Error></ErrorResponse>";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.expect("answer");
        String::from_utf8_lossy(&request[..read]).into_owned()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let token = token_file(dir.path());
    let env = Env::from_pairs([
        ("HOME", dir.path().to_str().expect("utf-8 path")),
        ("AWS_ROLE_ARN", ROLE_ARN),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token.to_str().expect("utf-8 path"),
        ),
        ("AWS_ENDPOINT_URL_STS", &format!("http://{address}")),
    ]);
    let error = CredentialChain::new(env)
        .credentials()
        .await
        .expect_err("rejected")
        .to_string();
    assert!(error.contains("InvalidIdentityToken"), "{error}");
    assert!(error.contains("Incorrect token audience"), "{error}");
    assert!(error.contains(ROLE_ARN), "{error}");
    assert!(!error.contains("eyJ"), "the token leaked into {error}");
    let request = server.await.expect("server");
    assert!(request.starts_with("POST / "), "{request}");
    assert!(
        request.contains("Action=AssumeRoleWithWebIdentity"),
        "{request}"
    );
    assert!(
        request.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fpgwarden-test"),
        "{request}"
    );
}

#[tokio::test]
async fn an_unreachable_sts_is_named() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let token = token_file(dir.path());
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = Env::from_pairs([
        ("HOME", dir.path().to_str().expect("utf-8 path")),
        ("AWS_ROLE_ARN", ROLE_ARN),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            token.to_str().expect("utf-8 path"),
        ),
        ("AWS_ENDPOINT_URL_STS", endpoint.as_str()),
    ]);
    let error = CredentialChain::new(env)
        .credentials()
        .await
        .expect_err("unreachable")
        .to_string();
    assert!(error.contains(&endpoint), "{error}");
    assert!(error.contains("AssumeRoleWithWebIdentity"), "{error}");
}
