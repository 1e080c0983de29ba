//! Issuance, renewal and revocation of the same leases at once, and clients that hang up
//! mid-request: no user may outlive its lease, and no lease may stay pending.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Roles whose creation and revocation take a second (`slow`) or three (`slower`), to hold
/// the race windows open; and `blocked`, whose creation waits until the test releases
/// advisory lock [`BLOCKING_LOCK`] (a database stuck for as long as the test needs).
const SLOW_ROLES: &str = r#"
      appdb-readonly: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 24h }
      slow:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
          - SELECT pg_sleep(1);
        revocation_statements:
          - SELECT pg_sleep(1);
          - DROP ROLE IF EXISTS "{{name}}";
        default_ttl: 1h
        max_ttl: 2h
      slower:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
          - SELECT pg_sleep(3);
        revocation_statements:
          - SELECT pg_sleep(3);
          - DROP ROLE IF EXISTS "{{name}}";
        default_ttl: 1h
        max_ttl: 2h
      blocked:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
          - SELECT pg_advisory_xact_lock_shared(4242);
        default_ttl: 1h
        max_ttl: 2h
"#;
const BLOCKING_LOCK: i64 = 4242;

/// Names of users pgwarden made that still exist in the cluster.
async fn surviving_users(env: &Env) -> Vec<String> {
    env.cluster.roles_like("v-%").await.unwrap()
}

/// Lease ids under `prefix`.
async fn leases(env: &Env, prefix: &str) -> Vec<String> {
    let (status, body) = env
        .call("LIST", &format!("sys/leases/lookup/{prefix}"), None)
        .await;
    match status {
        404 => Vec::new(),
        200 => serde_json::from_value(body["data"]["keys"].clone()).unwrap(),
        _ => panic!("LIST {prefix}: {status} {body}"),
    }
}

#[tokio::test]
async fn revoking_a_lease_while_its_user_is_created_drops_the_user() {
    let env = Arc::new(Env::start(SLOW_ROLES).await);
    let issuing = tokio::spawn({
        let env = env.clone();
        async move { env.call("GET", "database/creds/slower", None).await }
    });
    // The pending lease is recorded before CREATE ROLE; revoke it mid-creation.
    poll_until(Duration::from_secs(10), || async {
        leases(&env, "database/creds/slower/").await.len() == 1
    })
    .await
    .expect("the pending lease is recorded");
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/revoke-prefix/database/creds/slower",
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = issuing.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(surviving_users(&env).await, Vec::<String>::new());
    assert_eq!(
        leases(&env, "database/creds/slower/").await,
        Vec::<String>::new()
    );
    let creds = Creds {
        lease_id: String::new(),
        username: body["data"]["username"].as_str().unwrap().into(),
        password: body["data"]["password"].as_str().unwrap().into(),
        lease_duration: 0,
    };
    assert!(env.login(&creds).await.is_err());
}

#[tokio::test]
async fn eight_issuers_against_a_revoke_prefix_loop_leave_nothing_behind() {
    let env = Arc::new(Env::start(SLOW_ROLES).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let revoker = tokio::spawn({
        let (env, stop) = (env.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = env
                    .call(
                        "PUT",
                        "sys/leases/revoke-prefix/database/creds/appdb-readonly/",
                        None,
                    )
                    .await;
                assert!(status == 204 || status == 500, "{status} {body}");
            }
        }
    });
    let mut issuers = Vec::new();
    for _ in 0..8 {
        let env = env.clone();
        issuers.push(tokio::spawn(async move {
            let mut issued = Vec::new();
            for _ in 0..15 {
                let (status, body) = env.call("GET", "database/creds/appdb-readonly", None).await;
                if status == 200 {
                    issued.push(Creds {
                        lease_id: body["lease_id"].as_str().unwrap().into(),
                        username: body["data"]["username"].as_str().unwrap().into(),
                        password: body["data"]["password"].as_str().unwrap().into(),
                        lease_duration: 0,
                    });
                }
            }
            issued
        }));
    }
    let mut issued = Vec::new();
    for issuer in issuers {
        issued.extend(issuer.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    revoker.await.unwrap();
    let (status, _) = env
        .call(
            "PUT",
            "sys/leases/revoke-prefix/database/creds/appdb-readonly",
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(!issued.is_empty());
    assert_eq!(
        leases(&env, "database/creds/appdb-readonly/").await,
        Vec::<String>::new()
    );
    assert_eq!(surviving_users(&env).await, Vec::<String>::new());
    for creds in &issued {
        assert!(
            env.login(creds).await.is_err(),
            "{} logs in",
            creds.username
        );
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_leaves_no_pending_lease() {
    let env = Arc::new(Env::start(SLOW_ROLES).await);
    let id = |ids: Vec<String>| format!("database/creds/slower/{}", ids[0]);
    // The client hangs up while its issuance is at work.
    hang_up_at_work(&env, "GET", "database/creds/slower", None).await;
    // The issuance finishes on its own: an active lease with a user that exists.
    poll_until(Duration::from_secs(30), || async {
        let ids = leases(&env, "database/creds/slower/").await;
        if ids.len() != 1 {
            return false;
        }
        let (_, lookup) = env
            .call(
                "PUT",
                "sys/leases/lookup",
                Some(json!({ "lease_id": id(ids) })),
            )
            .await;
        lookup["data"]["state"] == "active"
    })
    .await
    .expect("the issuance finishes");
    assert_eq!(surviving_users(&env).await.len(), 1);

    // A revocation the client gives up on also finishes.
    let lease_id = id(leases(&env, "database/creds/slower/").await);
    let body = json!({ "lease_id": lease_id });
    hang_up_at_work(&env, "PUT", "sys/leases/revoke", Some(body)).await;
    poll_until(Duration::from_secs(30), || async {
        leases(&env, "database/creds/slower/").await.is_empty()
    })
    .await
    .expect("the revocation finishes");
    assert_eq!(surviving_users(&env).await, Vec::<String>::new());
}

/// Sends a request and hangs up once it is at work (holding a turn).
async fn hang_up_at_work(
    env: &Arc<Env>,
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
) {
    let client = tokio::spawn({
        let env = env.clone();
        async move { env.call(method, path, body).await }
    });
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting(env).await.0 == 1.0
    })
    .await
    .expect("the request is at work");
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn revoke_prefix_matches_whole_path_segments() {
    let roles = r#"
      x:       { db_name: appdb, preset: readonly }
      x-admin: { db_name: appdb, preset: readonly }
"#;
    let env = Env::start(roles).await;
    let x = env.creds("x").await;
    let x_admin = env.creds("x-admin").await;
    let (status, _) = env
        .call("PUT", "sys/leases/revoke-prefix/database/creds/x", None)
        .await;
    assert_eq!(status, 204);
    assert!(!env.role_exists(&x.username).await);
    assert!(env.role_exists(&x_admin.username).await);
    env.login(&x_admin)
        .await
        .expect("x-admin's lease is untouched");
    // A full lease id names exactly that lease.
    let (status, _) = env
        .call(
            "PUT",
            &format!("sys/leases/revoke-prefix/{}", x_admin.lease_id),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(!env.role_exists(&x_admin.username).await);
}

/// Requests holding a turn, and requests waiting for one.
async fn in_flight_and_waiting(env: &Env) -> (f64, f64) {
    let metrics = env.metrics().await;
    (
        metric(&metrics, "pgwarden_http_requests_in_flight"),
        metric(&metrics, "pgwarden_http_requests_waiting"),
    )
}

#[tokio::test]
async fn clients_that_hang_up_cannot_pile_up_more_work_than_the_requests_in_flight() {
    let env = Arc::new(
        Env::start_with(
            SLOW_ROLES,
            "http: { max_requests_in_flight: 2, max_requests_per_database: 2 }",
        )
        .await,
    );
    let hang_ups = (0..8).map(|_| {
        let env = env.clone();
        async move { env.call("GET", "database/creds/slower", None).await }
    });
    let hang_ups = tokio::spawn(futures::future::join_all(hang_ups));
    // Two at work, six waiting for a turn; once their clients hang up, only the two.
    let in_flight_and_waiting = || in_flight_and_waiting(&env);
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting().await == (2.0, 6.0)
    })
    .await
    .expect("two requests at work, six waiting");
    hang_ups.abort();
    assert!(hang_ups.await.unwrap_err().is_cancelled());
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting().await.1 == 0.0
    })
    .await
    .expect("the waiting requests are gone with their clients");
    // The two requests that had their turn finish their work; the six that were still waiting
    // for one when their clients hung up leave nothing, then or later.
    poll_until(Duration::from_secs(30), || async {
        surviving_users(&env).await.len() >= 2
    })
    .await
    .expect("the two issuances with a turn finish");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(leases(&env, "database/creds/slower/").await.len(), 2);
    assert_eq!(surviving_users(&env).await.len(), 2);

    // A patient client waits for its turn and is served.
    let started = std::time::Instant::now();
    let patient = (0..3).map(|_| {
        let env = env.clone();
        async move { env.call("GET", "database/creds/slow", None).await }
    });
    let served = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(patient))
        .await
        .expect("every patient client is served");
    for (status, body) in served {
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(leases(&env, "database/creds/slow/").await.len(), 3);
    assert_eq!(in_flight_and_waiting().await, (0.0, 0.0));
}

#[tokio::test]
async fn a_stuck_database_holds_only_its_share_of_the_turns_and_the_others_are_served() {
    let env = Arc::new(
        Env::start_with(
            SLOW_ROLES,
            "http: { max_requests_in_flight: 3, max_requests_per_database: 2 }",
        )
        .await,
    );
    // A second connection to the cluster: another database, as far as turns go.
    let url = env.cluster.templated_url("appdb");
    let (status, body) = env
        .call(
            "POST",
            "database/config/healthy",
            Some(json!({ "connection_url": url, "username": ADMIN, "password": ADMIN_PW, "allowed_roles": ["quick", "moving"] })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let role_on = |database: &str| json!({ "db_name": database, "preset": "readonly" });
    for (role, database) in [("quick", "healthy"), ("moving", "appdb")] {
        let path = format!("database/roles/{role}");
        let (status, body) = env.call("POST", &path, Some(role_on(database))).await;
        assert_eq!(status, 204, "{body}");
    }
    let renewed = env.creds("moving").await;
    let revoked = env.creds("moving").await;
    let queued = env.creds("moving").await;
    // The role's leases keep its first connection when it names another.
    let (status, body) = env
        .call("POST", "database/roles/moving", Some(role_on("healthy")))
        .await;
    assert_eq!(status, 204, "{body}");

    // appdb is stuck: four issuances, two at work and two waiting for appdb's share.
    let lock = env.cluster.connect_superuser("appdb").await.unwrap();
    lock.execute("SELECT pg_advisory_lock($1)", &[&BLOCKING_LOCK])
        .await
        .unwrap();
    let mut stuck: Vec<_> = (0..4)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move { env.call("GET", "database/creds/blocked", None).await })
        })
        .collect();
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting(&env).await == (2.0, 2.0)
    })
    .await
    .expect("two requests at work on appdb, two waiting for its share");
    // A renewal and a revocation of appdb leases, named in the body, wait for the share too,
    // holding no turn.
    for (path, lease) in [("renew", &renewed), ("revoke", &revoked)] {
        let env = env.clone();
        let (path, body) = (
            format!("sys/leases/{path}"),
            json!({ "lease_id": lease.lease_id }),
        );
        stuck.push(tokio::spawn(async move {
            env.call("PUT", &path, Some(body)).await
        }));
    }
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting(&env).await == (2.0, 4.0)
    })
    .await
    .expect("the renewal and the revocation wait for appdb's share");

    // The third turn serves the other database: an issuance and a revocation named in the
    // body; and a revocation queued for later (`sync: false`), which waits for no database.
    // (Bounded: without shares they would wait for the lock below.)
    let others = tokio::time::timeout(Duration::from_secs(30), async {
        let quick = env.creds("quick").await;
        env.login(&quick)
            .await
            .expect("the healthy database's user logs in");
        let (status, body) = env.revoke(&quick.lease_id).await;
        assert_eq!(status, 204, "{body}");
        assert!(!env.role_exists(&quick.username).await);
        let queue = json!({ "lease_id": queued.lease_id, "sync": false });
        env.call("PUT", "sys/leases/revoke", Some(queue)).await
    })
    .await;
    let gauges_meanwhile = in_flight_and_waiting(&env).await;
    lock.execute("SELECT pg_advisory_unlock($1)", &[&BLOCKING_LOCK])
        .await
        .unwrap();
    let (status, body) = others.expect("the other database is served while appdb is stuck");
    assert_eq!(status, 202, "{body}");
    assert_eq!(gauges_meanwhile, (2.0, 4.0));
    let answers: Vec<u16> = futures::future::join_all(stuck)
        .await
        .into_iter()
        .map(|answer| answer.unwrap().0)
        .collect();
    assert_eq!(answers, [200, 200, 200, 200, 200, 204]);
    assert!(!env.role_exists(&revoked.username).await);
    env.wait_role_gone(&queued.username, Duration::from_secs(10))
        .await
        .expect("the queued revocation runs");
    assert_eq!(in_flight_and_waiting(&env).await, (0.0, 0.0));
}

#[tokio::test]
async fn on_shutdown_requests_waiting_for_a_turn_get_503_and_those_with_one_finish() {
    let mut env = Env::start_with(SLOW_ROLES, "http: { max_requests_in_flight: 1 }").await;
    let issue = |url: String| async move {
        let response = reqwest::Client::new()
            .get(url)
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    let with_turn = tokio::spawn(issue(env.url("database/creds/slower")));
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting(&env).await == (1.0, 0.0)
    })
    .await
    .expect("the first request takes the turn");
    let waiting = tokio::spawn(issue(env.url("database/creds/slower")));
    poll_until(Duration::from_secs(10), || async {
        in_flight_and_waiting(&env).await == (1.0, 1.0)
    })
    .await
    .expect("the second request waits for it");
    env.stop().await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(
        (status, body),
        (503, json!({"errors": ["the server is shutting down"]}))
    );
    let (status, body) = with_turn.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Its user was committed and recorded before the server stopped.
    env.boot().await;
    assert_eq!(leases(&env, "database/creds/slower/").await.len(), 1);
    assert_eq!(surviving_users(&env).await.len(), 1);
}
