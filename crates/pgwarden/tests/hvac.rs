//! Compatibility with hvac, the Python Vault client: configure a connection and a role,
//! generate credentials, renew and revoke the lease, all through hvac's own methods.
//!
//! The Python interpreter is `$PGWARDEN_TEST_PYTHON`, else `<workspace>/.venv/bin/python`
//! (`scripts/test` creates it with hvac installed).

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("PGWARDEN_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with hvac: run scripts/test, or `python3 -m venv .venv && .venv/bin/pip install hvac`, or set PGWARDEN_TEST_PYTHON"
    );
    venv
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

    let mut script = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hvac_compat.py"))
        .env("VAULT_ADDR", &server.base)
        .env("VAULT_TOKEN", ROOT)
        .env("APPDB_URL", cluster.templated_url("appdb"))
        .env("APPDB_ADMIN", ADMIN)
        .env("APPDB_ADMIN_PASSWORD", ADMIN_PW)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut next = || -> serde_json::Value {
        let line = lines
            .next()
            .expect("the hvac script ended early (see its traceback above)")
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };

    let issued = next();
    assert_eq!(issued["role_default_ttl"], 60);
    assert_eq!(issued["lease_duration"], 60);
    assert!(
        issued["lease_id"]
            .as_str()
            .unwrap()
            .starts_with("database/creds/hvac-reader/")
    );
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

    writeln!(script.stdin.as_mut().unwrap()).unwrap();
    let renewed = next();
    let capped = renewed["renewed_duration"].as_u64().unwrap();
    assert!(
        (118..=120).contains(&capped),
        "renewal capped at the 2m max TTL, got {capped}"
    );
    assert!(
        renewed["warnings"][0].as_str().unwrap().contains("capped"),
        "{renewed}"
    );
    assert_eq!(renewed["lookup_id"], issued["lease_id"]);

    let revoked = next();
    assert_eq!(revoked["revoke_status"], 204);
    assert!(script.wait().unwrap().success());
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
