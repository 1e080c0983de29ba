//! A real `pgwarden server` process killed with SIGKILL loses no lease, and after the restart
//! the reaper still drops users on time.

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
