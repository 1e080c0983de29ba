//! `pgwarden dev`, run as the real binary: the printed commands work, and Ctrl-C (SIGTERM here)
//! deletes everything it made.
#![cfg(feature = "dev")]

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The text between `start` and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let rest = &text[text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len()..];
    &rest[..rest.find(end).unwrap()]
}

/// The demo process, killed if the test fails before stopping it (or its pipe would keep
/// the test run waiting).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test]
async fn the_demo_prints_working_commands_and_cleans_up() {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .env("PGWARDEN_DEV_ROOT_TOKEN", ROOT)
        .env("PGWARDEN_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let mut stdout = BufReader::new(demo.0.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("to watch renewal") {
        assert_ne!(
            stdout.read_line(&mut printed).unwrap(),
            0,
            "dev exited: {printed}"
        );
    }
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        printed.contains(&format!("PGWARDEN_ADDR={base}\nPGWARDEN_TOKEN={ROOT}\n")),
        "{printed}"
    );
    let data_dir = std::path::PathBuf::from(between(&printed, "state in ", ".\n"));
    assert!(data_dir.join("state.db").exists());

    let (status, creds) = call(&base, ROOT, "GET", "database/creds/appdb-readonly", None).await;
    assert_eq!(status, 200, "{creds}");
    let data = &creds["data"];
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} dbname={} user={} password={}",
            data["host"].as_str().unwrap(),
            data["port"],
            data["database"].as_str().unwrap(),
            data["username"].as_str().unwrap(),
            data["password"].as_str().unwrap()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client.query("SELECT * FROM items", &[]).await.unwrap();
    drop(client);

    // The printed service-account login gives a token the demo policy lets get appdb-user only.
    let jwt = between(&printed, r#""jwt":""#, "\"");
    let (status, login) = call(
        &base,
        "",
        "POST",
        "auth/kubernetes/login",
        Some(json!({"role": "demo", "jwt": jwt})),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let app_token = login["auth"]["client_token"].as_str().unwrap();
    let (status, _) = call(&base, app_token, "GET", "database/creds/appdb-user", None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&base, app_token, "GET", "database/creds/appdb-admin", None).await;
    assert_eq!(status, 403);

    // The printed access-request walk-through works as printed, in bash, in the shell that
    // followed the printed pod login (its PGWARDEN_TOKEN the app's, not root's).
    let flow = between(&printed, "With the pgwarden command line:\n", "\n\n");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", flow])
        .env("PGWARDEN_ADDR", &base)
        .env("PGWARDEN_TOKEN", app_token)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{flow}\n{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("v-kuberne")),
        "psql ran as the approved user: {stdout}"
    );
    assert!(
        stdout.contains("system:serviceaccount:demo:approver  request.approve"),
        "{stdout}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || demo.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "{} survived", data_dir.display());
}
