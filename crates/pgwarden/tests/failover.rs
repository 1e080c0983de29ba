//! Three real `pgwarden server` processes on one PostgreSQL state database: the leader is
//! killed with SIGKILL in the middle of a burst of revocations; another takes over within
//! 10 s, every due lease is revoked, nothing issued before the kill is lost, and no user is
//! left that no lease names.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn leader_among(servers: &[Option<Server>]) -> Vec<usize> {
    let mut leaders = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let Some(server) = server else { continue };
        let Ok(response) = reqwest::get(format!("{}/v1/sys/health", server.base)).await else {
            continue;
        };
        let health: Value = response.json().await.unwrap();
        if health["leader"] == json!(true) {
            leaders.push(i);
        }
    }
    leaders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_the_leader_mid_burst_loses_nothing_and_another_takes_over() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE state").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "pgwarden.yaml",
        &cluster,
        &format!(
            "state: {{ postgresql: {{ url: \"{}\" }} }}",
            cluster.superuser_url("state")
        ),
        "      appdb-long:  { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }
      appdb-short: { db_name: appdb, preset: readonly, default_ttl: 4s, max_ttl: 1m }",
    );
    let env = APPDB_ENV;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Some(spawn_server(&config, free_port(), &env).await));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let leaders = leader_among(&servers).await;
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(Instant::now() < deadline, "leaders: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // A burst of short leases over every replica, and long ones that must survive.
    let mut short = Vec::new();
    let mut long = Vec::new();
    for n in 0..60 {
        let base = &servers[n % 3].as_ref().unwrap().base;
        let (status, body) = call(base, ROOT, "GET", "database/creds/appdb-short", None).await;
        assert_eq!(status, 200, "{body}");
        short.push(body);
        if n % 10 == 0 {
            let (status, body) = call(base, ROOT, "GET", "database/creds/appdb-long", None).await;
            assert_eq!(status, 200, "{body}");
            long.push(body);
        }
    }
    let exists = |lease: &Value| {
        let name = lease["data"]["username"].as_str().unwrap().to_string();
        let cluster = &cluster;
        async move { cluster.role_exists(&name).await.unwrap() }
    };
    // Kill the leader once its revocations have begun.
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(&short[0]).await {
        assert!(
            Instant::now() < deadline,
            "the leader never started revoking"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut killed = servers[leader].take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    killed.child.wait().unwrap();
    let at_kill = Instant::now();
    let mut remaining = 0;
    for lease in &short {
        remaining += usize::from(exists(lease).await);
    }

    let next = loop {
        let leaders = leader_among(&servers).await;
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(
            at_kill.elapsed() < Duration::from_secs(25),
            "no new leader: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(next, leader);
    let base = servers[next].as_ref().unwrap().base.clone();
    for lease in &short {
        while exists(lease).await {
            assert!(
                at_kill.elapsed() < Duration::from_secs(40),
                "{} outlived the failover ({remaining} were left at the kill)",
                lease["data"]["username"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The lease is forgotten once the user's sessions are ended too.
        loop {
            let (status, _) = call(
                &base,
                ROOT,
                "PUT",
                "sys/leases/lookup",
                Some(json!({ "lease_id": lease["lease_id"] })),
            )
            .await;
            if status == 400 {
                break;
            }
            assert_eq!(status, 200);
            assert!(
                at_kill.elapsed() < Duration::from_secs(20),
                "a revoked lease stays"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for lease in &long {
        let (status, body) = call(
            &base,
            ROOT,
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": lease["lease_id"] })),
        )
        .await;
        assert_eq!(
            status, 200,
            "a lease issued before the kill survives: {body}"
        );
        cluster
            .connect_as(
                lease["data"]["username"].as_str().unwrap(),
                lease["data"]["password"].as_str().unwrap(),
                "appdb",
            )
            .await
            .expect("its password still works");
    }
    // No user in the target that no lease names.
    let state = cluster.connect_superuser("state").await.unwrap();
    let named: Vec<String> = state
        .query("SELECT username FROM pgwarden_leases ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let users = cluster.roles_like("v-%").await.unwrap();
    assert_eq!(users, named);
    assert_eq!(users.len(), long.len());
}
