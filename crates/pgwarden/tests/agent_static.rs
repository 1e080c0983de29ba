//! The agent keeps a static role's password in its files: written at start, rewritten after
//! each rotation (here every 5 seconds) with `on_change` fired, and the password in the files
//! always signs the user in.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::broker::{ROOT_TOKEN, TestBroker};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const USER: &str = "legacy_app";

/// `PGPASSWORD` of the env file, once it exists.
fn password_in(file: &Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("PGPASSWORD="))
        .map(str::to_string)
}

/// How many times `on_change` ran (one line each in the marker file).
fn changes(marker: &Path) -> usize {
    std::fs::read_to_string(marker)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rewrites_a_static_password_after_each_rotation() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    cluster
        .create_static_user(USER, "before-pgwarden")
        .await
        .unwrap();
    let mut broker = TestBroker::new(
        &cluster,
        "      appdb-readonly: { db_name: appdb, preset: readonly }",
        "",
    );
    broker.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    broker.boot().await;
    let (status, body) = call(
        &broker.base,
        ROOT_TOKEN,
        "POST",
        "database/static-roles/appdb-legacy",
        Some(json!({"db_name": "appdb", "username": USER, "rotation_period": 5})),
    )
    .await;
    assert_eq!(status, 204, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let (env_file, marker, token) = (
        dir.path().join("legacy.env"),
        dir.path().join("changes"),
        dir.path().join("token"),
    );
    std::fs::write(&token, ROOT_TOKEN).unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
address: "{address}"
auth: {{ token: {{ token_file: "{token}" }} }}
listen: "127.0.0.1:{port}"
credentials:
  - path: database/static-creds/appdb-legacy
    files:
      - {{ path: "{env_file}", format: env }}
    on_change: {{ command: [sh, -c, "echo changed >> {marker}"] }}
"#,
            address = broker.base,
            token = token.display(),
            port = free_port(),
            env_file = env_file.display(),
            marker = marker.display(),
        ),
    )
    .unwrap();
    let _agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["agent", "--config"])
        .arg(&config)
        .env("PGWARDEN_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    wait_for("the first files", || password_in(&env_file).is_some()).await;
    let mut seen = vec![password_in(&env_file).unwrap()];
    for round in 1..=2 {
        wait_for("a rotation to reach the files", || {
            password_in(&env_file).is_some_and(|p| !seen.contains(&p))
        })
        .await;
        seen.push(password_in(&env_file).unwrap());
        wait_for("on_change", || changes(&marker) >= round).await;
    }
    // The files may already be one rotation further than `seen`: check what they hold now,
    // reading again should a rotation land between the read and the sign-in.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = password_in(&env_file).unwrap();
        if cluster.connect_as(USER, &now, "appdb").await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the password in the files never signed in"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        cluster.connect_as(USER, &seen[0], "appdb").await.is_err(),
        "the first password was rotated away"
    );
}
