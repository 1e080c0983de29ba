//! A real `pgwarden server` process killed with SIGKILL loses no lease, and after the restart
//! the reaper still drops users on time; a logout killed mid-way is finished by the next start.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn sigkill_loses_no_lease_and_the_reaper_keeps_time() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "pgwarden.yaml",
        &cluster,
        &format!("data_dir: \"{}\"", dir.path().join("data").display()),
        "      appdb-long:  { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }
      appdb-short: { db_name: appdb, preset: readonly, default_ttl: 15s, max_ttl: 1m }",
    );
    let env = APPDB_ENV;
    let port = free_port();

    let mut server = spawn_server(&config, port, &env).await;
    let (_, long) = call(&server.base, ROOT, "GET", "database/creds/appdb-long", None).await;
    let (_, short) = call(
        &server.base,
        ROOT,
        "GET",
        "database/creds/appdb-short",
        None,
    )
    .await;
    let (_, short_lookup) = call(
        &server.base,
        ROOT,
        "PUT",
        "sys/leases/lookup",
        Some(json!({"lease_id": short["lease_id"]})),
    )
    .await;
    let short_expiry = time::OffsetDateTime::parse(
        short_lookup["data"]["expire_time"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = spawn_server(&config, port, &env).await;
    for lease in [&long, &short] {
        let (status, body) = call(
            &server.base,
            ROOT,
            "PUT",
            "sys/leases/lookup",
            Some(json!({"lease_id": lease["lease_id"]})),
        )
        .await;
        assert_eq!(status, 200, "lease survived SIGKILL: {body}");
        assert_eq!(body["data"]["state"], "active");
    }

    let short_user = short["data"]["username"].as_str().unwrap();
    loop {
        let exists = cluster.role_exists(short_user).await.unwrap();
        let now = time::OffsetDateTime::now_utc();
        if !exists {
            assert!(
                now - short_expiry <= time::Duration::seconds(5),
                "dropped {} after expiry",
                now - short_expiry
            );
            assert!(now >= short_expiry, "dropped before expiry");
            break;
        }
        assert!(
            now - short_expiry <= time::Duration::seconds(5),
            "not dropped within 5 s of expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let long_client = cluster
        .connect_as(
            long["data"]["username"].as_str().unwrap(),
            long["data"]["password"].as_str().unwrap(),
            "appdb",
        )
        .await
        .expect("the long lease's password still works after the restart");
    long_client.simple_query("SELECT 1").await.unwrap();
}

/// How many credentials the logged-out token holds: enough that their revocation is under
/// way for a while, so that the kill lands in the middle of it.
const TOKEN_LEASES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_cut_short_by_sigkill_is_finished_by_the_next_start() {
    use pgwarden_testkit::issuer::{TestIssuer, TestKey};
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
    let dir = tempfile::tempdir().unwrap();
    let top = format!(
        "data_dir: \"{}\"\n{}",
        dir.path().join("data").display(),
        team_a_login(dir.path(), &issuer, &["database/appdb-long"], "")
    );
    let config = write_config(
        dir.path(),
        "pgwarden.yaml",
        &cluster,
        &top,
        "      appdb-long: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }",
    );
    let port = free_port();
    let server = spawn_server(&config, port, &APPDB_ENV).await;
    let jwt = issuer.service_account_token(TestKey::Rsa1, "pgwarden", "team-a", "app");
    let (status, login) = call(
        &server.base,
        "",
        "POST",
        "auth/kubernetes/login",
        Some(json!({ "role": "team-a", "jwt": jwt })),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["auth"]["client_token"].as_str().unwrap().to_string();
    let mut issues = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (base, token) = (server.base.clone(), token.clone());
        issues.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..TOKEN_LEASES / 8 {
                let (status, body) =
                    call(&base, &token, "GET", "database/creds/appdb-long", None).await;
                assert_eq!(status, 200, "{body}");
                ids.push(body["lease_id"].as_str().unwrap().to_string());
            }
            ids
        });
    }
    let leases: Vec<String> = issues.join_all().await.concat();
    assert_eq!(cluster.roles_like("v-%").await.unwrap().len(), TOKEN_LEASES);

    // The logout, killed once its revocations have begun.
    let logout = {
        let (base, token) = (server.base.clone(), token.clone());
        // Its answer never comes: the server is killed first.
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(format!("{base}/v1/auth/token/revoke-self"))
                .header("X-Vault-Token", token)
                .send()
                .await;
        })
    };
    while cluster.roles_like("v-%").await.unwrap().len() == TOKEN_LEASES {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let left = cluster.roles_like("v-%").await.unwrap().len();
    let _ = logout.await;
    drop(server);
    assert!(
        left > 0,
        "the kill came after the whole logout: make TOKEN_LEASES larger"
    );

    // The next start finishes it: the token stays refused, and every lease it left goes.
    let server = spawn_server(&config, port, &APPDB_ENV).await;
    let (status, _) = call(&server.base, &token, "GET", "auth/token/lookup-self", None).await;
    assert_eq!(status, 403);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cluster.roles_like("v-%").await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "users of the logged-out token left 30 s after the restart: {:?}",
            cluster.roles_like("v-%").await.unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in &leases {
        let (status, body) = call(
            &server.base,
            ROOT,
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": id })),
        )
        .await;
        assert_eq!(status, 400, "lease {id} left: {body}");
    }
}
