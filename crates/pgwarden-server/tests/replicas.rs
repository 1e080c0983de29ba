//! Several replicas on one PostgreSQL state database: every replica serves every lease and
//! every definition written through any of them, and exactly one reaps.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ROLES: &str = r#"
      appdb-long:  { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }
      appdb-short: { db_name: appdb, preset: readonly, default_ttl: 3s, max_ttl: 1m }
      appdb-slow:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
          - SELECT pg_sleep(0.5);
"#;

/// A cluster with `appdb` and the state database `state`, and `n` replicas sharing it.
struct Replicas {
    cluster: PgCluster,
    replicas: Vec<TestBroker>,
    http: reqwest::Client,
}

impl Replicas {
    async fn start(n: usize) -> Replicas {
        Replicas::start_with(n, "").await
    }

    /// `n` replicas whose configuration also holds `more`.
    async fn start_with(n: usize, more: &str) -> Replicas {
        let cluster = PgCluster::start_with_appdb().await.unwrap();
        let su = cluster.connect_superuser("postgres").await.unwrap();
        su.batch_execute("CREATE DATABASE state").await.unwrap();
        let extra = format!(
            "state: {{ postgresql: {{ url: \"{}\" }} }}\n{more}",
            cluster.superuser_url("state")
        );
        let mut replicas = Vec::new();
        for _ in 0..n {
            replicas.push(TestBroker::start(&cluster, ROLES, &extra).await);
        }
        Replicas {
            cluster,
            replicas,
            http: reqwest::Client::new(),
        }
    }

    /// Sends `method` to `/v1/<path>` on replica `i` with the root token.
    async fn call(&self, i: usize, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/v1/{path}", self.replicas[i].base);
        let mut request = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .header("X-Vault-Token", ROOT);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn creds(&self, i: usize, role: &str) -> Value {
        let (status, body) = self
            .call(i, "GET", &format!("database/creds/{role}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Which replicas say they lead, by index.
    async fn leaders(&self) -> Vec<usize> {
        let mut leaders = Vec::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            if replica.server.is_none() {
                continue;
            }
            let health: Value = self
                .http
                .get(format!("{}/v1/sys/health", replica.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if health["leader"] == json!(true) {
                leaders.push(i);
            }
        }
        leaders
    }

    /// Waits until exactly one replica leads, and returns it.
    async fn one_leader(&self, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            let leaders = self.leaders().await;
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                start.elapsed() < limit,
                "leaders after {limit:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn user_exists(&self, username: &Value) -> bool {
        self.cluster
            .role_exists(username.as_str().unwrap())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_replica_renews_looks_up_and_revokes_what_another_issued() {
    let r = Replicas::start(3).await;
    let creds = r.creds(0, "appdb-long").await;
    let lease = json!({ "lease_id": creds["lease_id"] });

    let (status, found) = r
        .call(1, "PUT", "sys/leases/lookup", Some(lease.clone()))
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"]["id"], creds["lease_id"]);

    let renew = json!({ "lease_id": creds["lease_id"], "increment": 1800 });
    let (status, renewed) = r.call(2, "PUT", "sys/leases/renew", Some(renew)).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["lease_duration"], 1800);

    let (status, _) = r
        .call(1, "PUT", "sys/leases/revoke", Some(lease.clone()))
        .await;
    assert_eq!(status, 204);
    assert!(!r.user_exists(&creds["data"]["username"]).await);
    let (status, gone) = r.call(0, "PUT", "sys/leases/lookup", Some(lease)).await;
    assert_eq!(status, 400, "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_written_on_one_replica_is_served_by_the_others() {
    let r = Replicas::start(2).await;
    let role = json!({ "db_name": "appdb", "preset": "readonly", "default_ttl": "10m" });
    let (status, body) = r
        .call(0, "POST", "database/roles/appdb-new", Some(role))
        .await;
    assert_eq!(status, 204, "{body}");
    // Replicas read the definitions every second; the deadline allows for a loaded machine.
    let served = creds_until(&r, 1, 200).await;
    assert_eq!(served["lease_duration"], 600);
    let (status, _) = r.call(1, "DELETE", "database/roles/appdb-new", None).await;
    assert_eq!(status, 204);
    creds_until(&r, 0, 404).await;
}

/// Asks replica `i` for a credential of role `appdb-new` until it answers `want` (200: it
/// knows the role, 404: it does not), at most for 15 s; returns the answer.
async fn creds_until(r: &Replicas, i: usize, want: u16) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, body) = r.call(i, "GET", "database/creds/appdb-new", None).await;
        if status == want {
            return body;
        }
        assert!(status == 200 || status == 404, "{status} {body}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "replica {i} still answers {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_replica_reaps_and_another_takes_over_when_it_stops() {
    let mut r = Replicas::start(3).await;
    let leader = r.one_leader(Duration::from_secs(5)).await;

    // A revocation queued (`sync: false`) on a replica that does not lead is done by the
    // leader, at once.
    let follower = (leader + 1) % 3;
    let queued = r.creds(follower, "appdb-long").await;
    let revoke = json!({ "lease_id": queued["lease_id"], "sync": false });
    let (status, body) = r
        .call(follower, "PUT", "sys/leases/revoke", Some(revoke))
        .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while r.user_exists(&queued["data"]["username"]).await {
        assert!(
            Instant::now() < deadline,
            "the queued revocation was not done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Short leases issued on every replica are all reaped on time, by the leader.
    let mut users = Vec::new();
    for i in 0..3 {
        users.push(r.creds(i, "appdb-short").await["data"]["username"].clone());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for user in &users {
        while r.user_exists(user).await {
            assert!(Instant::now() < deadline, "{user} outlived its lease");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let metrics = |i: usize| {
        let base = r.replicas[i].base.clone();
        let http = r.http.clone();
        async move {
            http.get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    for i in 0..3 {
        let text = metrics(i).await;
        assert_eq!(
            metric(&text, "pgwarden_leader"),
            f64::from(u8::from(i == leader))
        );
        let revoked = |reason: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "pgwarden_leases_revoked_total{{reason=\"{reason}\"}}"
                    ))
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
                .unwrap_or(0.0)
        };
        // The reaper's: three expiries, and the queued revocation, which was asked for.
        let (expired, requested) = if i == leader { (3.0, 1.0) } else { (0.0, 0.0) };
        assert_eq!(revoked("expired"), expired, "replica {i}");
        assert_eq!(revoked("requested"), requested, "replica {i}");
    }

    // The leader shuts down with leases due soon: it hands the lead over at once (a rolling
    // update), and another replica reaps them.
    let mut users = Vec::new();
    for i in 0..3 {
        users.push(r.creds(i, "appdb-short").await["data"]["username"].clone());
    }
    r.replicas[leader].stop().await;
    let stopped = Instant::now();
    let next = r.one_leader(Duration::from_secs(10)).await;
    assert_ne!(next, leader);
    // At once: the others try for the lead every 2 s, where a lead left to lapse would take
    // up to 6 s more.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "handover took {:?}",
        stopped.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    for user in &users {
        while r.user_exists(user).await {
            assert!(
                Instant::now() < deadline,
                "{user} was not reaped after the failover"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_database_restart_under_load_costs_503s_and_nothing_else() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let mut state = PgCluster::start().unwrap();
    let extra = format!(
        "state: {{ postgresql: {{ url: \"{}\" }} }}",
        state.superuser_url("postgres")
    );
    let broker = TestBroker::start(&cluster, ROLES, &extra).await;
    let http = reqwest::Client::new();
    let base = broker.base.clone();

    // Four clients issue and revoke in a loop; each remembers every status it saw and the
    // leases it holds (issued, not yet revoked).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        clients.spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            let mut held = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let response = http
                    .get(format!("{base}/v1/database/creds/appdb-long"))
                    .header("X-Vault-Token", ROOT)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                *statuses.entry(status).or_default() += 1;
                if status == 200 {
                    let body: Value = response.json().await.unwrap();
                    held.push(body);
                }
                if let Some(lease) = held.first().cloned() {
                    let status = http
                        .put(format!("{base}/v1/sys/leases/revoke"))
                        .header("X-Vault-Token", ROOT)
                        .json(&json!({ "lease_id": lease["lease_id"] }))
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16();
                    *statuses.entry(status).or_default() += 1;
                    if status == 204 {
                        held.remove(0);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (statuses, held)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| state.restart()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut held = Vec::new();
    for (seen, kept) in clients.join_all().await {
        for (status, n) in seen {
            *statuses.entry(status).or_default() += n;
        }
        held.extend(kept);
    }
    // Only successes and 503s; and successes again after the restart.
    assert!(
        statuses.keys().all(|s| matches!(s, 200 | 204 | 503)),
        "{statuses:?}"
    );
    assert!(statuses.get(&503).is_some_and(|n| *n > 0), "{statuses:?}");
    let (status, body) = {
        let response = http
            .get(format!("{base}/v1/database/creds/appdb-long"))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200, "pgwarden recovered without a restart: {body}");
    held.push(body);

    // Every lease a client holds still works; every user in the target is named by a lease
    // in the state (a 503 on revocation leaves the lease to be revoked again, not lost).
    for lease in &held {
        cluster
            .connect_as(
                lease["data"]["username"].as_str().unwrap(),
                lease["data"]["password"].as_str().unwrap(),
                "appdb",
            )
            .await
            .expect("a held lease's password works");
    }
    let users = cluster.roles_like("v-%").await.unwrap();
    let state_db = state.connect_superuser("postgres").await.unwrap();
    let named: std::collections::HashSet<String> = state_db
        .query("SELECT username FROM pgwarden_leases", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for user in &users {
        assert!(
            named.contains(user),
            "user {user} exists that no lease names"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_the_state_stops_reaping_and_answers_503() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE state").await.unwrap();
    let direct = cluster.superuser_url("state");
    let link = pgwarden_testkit::partition::Partition::start(cluster.port())
        .await
        .unwrap();
    let through_link = direct.replace(
        &format!(":{}/", cluster.port()),
        &format!(":{}/", link.port),
    );
    let state = |url: &str| format!("state: {{ postgresql: {{ url: \"{url}\" }} }}");
    // A starts first and leads; B reaches the state directly.
    let a = TestBroker::start(&cluster, ROLES, &state(&through_link)).await;
    let r = Replicas {
        cluster,
        replicas: vec![a],
        http: reqwest::Client::new(),
    };
    assert_eq!(r.one_leader(Duration::from_secs(5)).await, 0);
    let mut r = r;
    let b = TestBroker::start(&r.cluster, ROLES, &state(&direct)).await;
    r.replicas.push(b);
    let short = r.creds(1, "appdb-short").await;
    let long = r.creds(0, "appdb-long").await;

    link.cut();
    let cut_at = Instant::now();
    // A stops counting itself leader before B can take the lead (never two at once), and B
    // takes it.
    loop {
        let leaders = r.leaders().await;
        assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
        if leaders == [1] {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(25),
            "leaders: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A answers 503 (after its statement timeout), never stale data nor a hang.
    let lookup = json!({ "lease_id": long["lease_id"] });
    let asked = Instant::now();
    let (status, body) = r.call(0, "PUT", "sys/leases/lookup", Some(lookup)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    let (status, body) = r.call(0, "GET", "database/creds/appdb-long", None).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = r.call(0, "GET", "database/roles/appdb-long", None).await;
    assert_eq!(status, 503, "definitions may be stale: {body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("this replica has not read its definitions from the state database for "),
        "{body}"
    );
    let (status, _) = r.call(1, "GET", "database/roles/appdb-long", None).await;
    assert_eq!(status, 200, "the connected replica answers");
    // B reaps what is due, A's lease included.
    while r.user_exists(&short["data"]["username"]).await {
        assert!(
            cut_at.elapsed() < Duration::from_secs(40),
            "the short lease was not reaped by the new leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(r.user_exists(&long["data"]["username"]).await);
}

/// Two replicas rotating and reading one static role at once (and the leader rotating it every
/// 5 seconds): every read is a password, and both replicas hand out the one the user has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_rotating_one_static_role_never_lose_its_password() {
    let r = std::sync::Arc::new(Replicas::start(2).await);
    r.cluster
        .create_static_user("legacy_app", "before")
        .await
        .unwrap();
    let (status, body) = r
        .call(
            0,
            "POST",
            "database/static-roles/legacy",
            Some(json!({"db_name": "appdb", "username": "legacy_app", "rotation_period": 5})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // One rotation at a time on each replica (every 100 ms) while six readers read without
    // pause from both.
    let rotators: Vec<_> = (0..2)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                let mut unexpected = Vec::new();
                for _ in 0..10 {
                    let (status, body) =
                        r.call(i, "POST", "database/rotate-role/legacy", None).await;
                    // Two replicas starting a rotation at the same instant: one is told to retry.
                    if status != 204 && status != 409 {
                        unexpected.push(format!("rotate-role on {i}: {status} {body}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                unexpected
            })
        })
        .collect();
    let readers: Vec<_> = (0..6)
        .map(|n| {
            let r = r.clone();
            tokio::spawn(async move {
                let mut unexpected = Vec::new();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(2) {
                    let (status, body) = r
                        .call(n % 2, "GET", "database/static-creds/legacy", None)
                        .await;
                    if status != 200 {
                        unexpected.push(format!("static-creds on {}: {status} {body}", n % 2));
                    }
                }
                unexpected
            })
        })
        .collect();
    for task in rotators.into_iter().chain(readers) {
        let unexpected = task.await.unwrap();
        assert!(unexpected.is_empty(), "{unexpected:?}");
    }
    // Each replica hands out the password the user has (read again should a scheduled
    // rotation land between the read and the sign-in).
    for i in 0..2 {
        let mut signed_in = false;
        for _ in 0..3 {
            let (status, body) = r.call(i, "GET", "database/static-creds/legacy", None).await;
            assert_eq!(status, 200, "{body}");
            let password = body["data"]["password"].as_str().unwrap();
            if r.cluster
                .connect_as("legacy_app", password, "appdb")
                .await
                .is_ok()
            {
                signed_in = true;
                break;
            }
        }
        assert!(
            signed_in,
            "replica {i} hands out a password that does not sign in"
        );
    }
}

/// Waits up to 10 s for `username`'s user to be dropped; whether it was.
async fn dropped_within_10s(r: &Replicas, username: &Value) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if !r.user_exists(username).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

// The leader has every lease it issued scheduled at its expiry; a revocation another replica
// queues (or fails at) must still be reaped at once, not at the lease's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_queued_on_another_replica_is_reaped_at_once() {
    let r = Replicas::start(2).await;
    let leader = r.one_leader(Duration::from_secs(20)).await;
    let creds = r.creds(leader, "appdb-long").await;
    let queue = json!({ "lease_id": creds["lease_id"], "sync": false });
    let (status, body) = r
        .call(1 - leader, "PUT", "sys/leases/revoke", Some(queue))
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        dropped_within_10s(&r, &creds["data"]["username"]).await,
        "the queued revocation waits for the lease's hour"
    );
}

/// Two replicas whose Kubernetes mount takes service accounts of namespace `team-a` (tokens
/// from `issuer`), which the policy lets get `appdb-slow`.
struct WithLogins {
    replicas: Replicas,
    issuer: TestIssuer,
    _policy_dir: tempfile::TempDir,
}

impl WithLogins {
    async fn start() -> WithLogins {
        let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
        let policy_dir = tempfile::tempdir().unwrap();
        let policy = policy_dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "grants:\n  - subjects: [\"system:serviceaccount:team-a:*\"]\n    roles: [\"database/appdb-slow\"]\n",
        )
        .unwrap();
        let auth = format!(
            "policy_file: \"{}\"\nauth:\n  kubernetes:\n    type: kubernetes\n    issuer: \"{}\"\n    \
             keys: {{ jwks_url: \"{}\" }}\n    audiences: [pgwarden]\n    roles:\n      \
             team-a: {{ bound_service_account_names: [\"*\"], bound_service_account_namespaces: [team-a] }}\n",
            policy.display(),
            issuer.issuer(),
            issuer.jwks_url()
        );
        WithLogins {
            replicas: Replicas::start_with(2, &auth).await,
            issuer,
            _policy_dir: policy_dir,
        }
    }

    /// Logs service account `team-a/app` in on replica `i`; its pgwarden token.
    async fn login(&self, i: usize) -> String {
        let jwt = self
            .issuer
            .service_account_token(TestKey::Rsa1, "pgwarden", "team-a", "app");
        let (status, login) = self
            .replicas
            .call(
                i,
                "POST",
                "auth/kubernetes/login",
                Some(json!({ "role": "team-a", "jwt": jwt })),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        login["auth"]["client_token"].as_str().unwrap().to_string()
    }
}

impl Replicas {
    /// Sends `method` to `/v1/<path>` on replica `i` with `token`; the status and body text.
    fn call_as(
        &self,
        i: usize,
        token: String,
        method: &str,
        path: &str,
    ) -> impl std::future::Future<Output = (u16, String)> + 'static {
        let request = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}/v1/{path}", self.replicas[i].base),
            )
            .header("X-Vault-Token", token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    }
}

// A logout on one replica while another still creates a user for the same token: the logout
// rolls the pending lease back (dropping nothing yet); the issuer, finding the token gone once
// its user is committed, must drop that user itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_on_one_replica_during_an_issuance_on_another_leaves_no_user() {
    let logins = WithLogins::start().await;
    let r = &logins.replicas;
    for round in 0..3 {
        let token = logins.login(0).await;
        let issuance =
            tokio::spawn(r.call_as(0, token.clone(), "GET", "database/creds/appdb-slow"));
        // Well inside the creation's half-second sleep.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (status, body) = r.call_as(1, token, "POST", "auth/token/revoke-self").await;
        assert_eq!(status, 204, "{body}");
        let (status, body) = issuance.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (
                403,
                r#"{"errors":["the token was revoked while the credential was being issued; nothing was issued"]}"#
            ),
            "round {round}"
        );
        assert_eq!(
            r.cluster.roles_like("v-kubernet-%").await.unwrap(),
            Vec::<String>::new(),
            "round {round}: a user no lease names"
        );
    }
}

// The same logout, but the issuing replica commits its user and dies before dropping it: the
// logout's rollback found nothing to drop, so it must keep the lease until the issuer's grace
// is over, and the leader then drops the user. (The issuer here is the test itself: it records
// the pending lease in the shared state, creates the user in an open transaction, and commits
// it once the logout has rolled the lease back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_that_found_nothing_is_repeated_once_the_issuers_grace_is_over() {
    use pgwarden_core::{Lease, LeaseState, Owner, RevokeReason, RoleSpec, Ttl};
    let logins = WithLogins::start().await;
    let r = &logins.replicas;
    let token = logins.login(0).await;
    let (status, body) = r
        .call_as(0, token.clone(), "GET", "auth/token/lookup-self")
        .await;
    assert_eq!(status, 200, "{body}");
    let accessor = serde_json::from_str::<Value>(&body).unwrap()["data"]["accessor"]
        .as_str()
        .unwrap()
        .to_string();

    let state = pgwarden_server::Config::parse(&format!(
        "state: {{ postgresql: {{ url: \"{}\" }} }}",
        r.cluster.superuser_url("state")
    ))
    .unwrap();
    let store = pgwarden_server::open_store(&state).await.unwrap();
    let role = serde_json::from_str::<RoleSpec>(r#"{"db_name":"appdb","preset":"readonly"}"#)
        .unwrap()
        .into_def("appdb-slow")
        .unwrap();
    let username = "v-kubernet-appdb-sl-diedaftercommit-1".to_string();
    let owner = Owner {
        display_name: "kubernetes-team-a-app".into(),
        subject: "system:serviceaccount:team-a:app".into(),
        token_accessor: Some(accessor),
    };
    let lease = Lease::new_pending(
        "database",
        &role,
        username.clone(),
        owner,
        Ttl::default(),
        time::OffsetDateTime::now_utc(),
    );
    store.insert_lease(&lease).await.unwrap();
    let creator = r
        .cluster
        .connect_as(ADMIN, ADMIN_PW, "appdb")
        .await
        .unwrap();
    creator
        .batch_execute(&format!(
            "BEGIN; CREATE ROLE \"{username}\" LOGIN PASSWORD 'unknown-to-anyone'"
        ))
        .await
        .unwrap();

    let (status, body) = r.call_as(1, token, "POST", "auth/token/revoke-self").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        store.get_lease(&lease.id).await.unwrap().map(|l| l.state),
        Some(LeaseState::Revoking(RevokeReason::Rollback)),
        "the rollback found nothing and forgot the lease"
    );
    creator.batch_execute("COMMIT").await.unwrap();
    assert!(r.cluster.role_exists(&username).await.unwrap());

    // The grace is 60 s from the lease's issue.
    let start = Instant::now();
    while r.cluster.role_exists(&username).await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the user the issuer committed outlived the grace"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    while store.get_lease(&lease.id).await.unwrap().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(95),
            "the lease is kept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connection `apidb`, to the `appdb` of `cluster`, written through the API.
fn apidb(cluster: &PgCluster) -> Value {
    json!({
        "plugin_name": "postgresql-database-plugin",
        "connection_url": cluster.templated_url("appdb"),
        "username": ADMIN,
        "password": ADMIN_PW,
        "allowed_roles": "api-*",
    })
}

/// Two replicas with role `api-maker` (a template of connection `apidb`, which is not
/// written yet), and a second cluster with `appdb`.
async fn with_api_maker() -> (Replicas, PgCluster) {
    let r = Replicas::start(2).await;
    let elsewhere = PgCluster::start_with_appdb().await.unwrap();
    let maker = json!({
        "db_name": "apidb",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
        "default_ttl": "10m",
    });
    let (status, body) = r
        .call(0, "POST", "database/roles/api-maker", Some(maker))
        .await;
    assert_eq!(status, 204, "{body}");
    (r, elsewhere)
}

/// Asks replica `i` for a credential of `api-maker` until it gives one (it has read the
/// connection), at most for 15 s, and revokes it there.
async fn issues_through_apidb(r: &Replicas, i: usize) {
    let start = Instant::now();
    loop {
        let (status, body) = r.call(i, "GET", "database/creds/api-maker", None).await;
        if status == 200 {
            let lease = json!({ "lease_id": body["lease_id"] });
            let (status, _) = r.call(i, "PUT", "sys/leases/revoke", Some(lease)).await;
            assert_eq!(status, 204);
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "replica {i} still answers {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many users of role `api-maker` `cluster` has.
async fn api_makers(cluster: &PgCluster) -> i64 {
    let su = cluster.connect_superuser("appdb").await.unwrap();
    su.query_one(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-root-api-make-%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

// A connection deleted, or pointed at another server, through one replica, then a credential
// asked through it of another replica, and the connection written back through that one,
// before that one has read the change (replicas read the definitions every second). The other
// replica's memory cannot tell: the state database orders them. Had the lease been recorded,
// its user would live where its connection no longer leads, and no revocation could drop it;
// had the write back been taken, the connection would leave the leases made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_changed_on_one_replica_is_not_used_by_another_meanwhile() {
    let (r, elsewhere) = with_api_maker().await;
    let (status, body) = r
        .call(0, "POST", "database/config/apidb", Some(apidb(&r.cluster)))
        .await;
    assert_eq!(status, 204, "{body}");
    let changed = json!({ "errors": ["connection \"apidb\" was deleted or rewritten while this credential was being issued; nothing was created: ask again"] });
    let stale = json!({ "errors": ["connection \"apidb\" was changed through another replica since this one read it; read it again and retry"] });
    let unknown = json!({ "errors": ["role \"api-maker\" names connection \"apidb\", which does not exist in mount \"database\""] });
    let (mut deletes_refused, mut moves_refused, mut stale_refused) = (0, 0, 0);
    let clusters = [&r.cluster, &elsewhere];
    let mut at = 0;
    for round in 0..6 {
        issues_through_apidb(&r, 1).await;
        let deleting = round % 2 == 0;
        let (status, body) = if deleting {
            r.call(0, "DELETE", "database/config/apidb", None).await
        } else {
            at = 1 - at;
            r.call(
                0,
                "POST",
                "database/config/apidb",
                Some(apidb(clusters[at])),
            )
            .await
        };
        assert_eq!(status, 204, "{body}");
        let (status, body) = r.call(1, "GET", "database/creds/api-maker", None).await;
        match status {
            409 => {
                assert_eq!(body, changed);
                if deleting {
                    deletes_refused += 1;
                } else {
                    moves_refused += 1;
                }
            }
            // Replica 1 read the change first: no such connection, or the moved one.
            400 if deleting => assert_eq!(body, unknown),
            200 if !deleting => {
                let lease = json!({ "lease_id": body["lease_id"] });
                assert_eq!(
                    r.call(1, "PUT", "sys/leases/revoke", Some(lease)).await.0,
                    204
                );
            }
            _ => panic!("round {round}: {status} {body}"),
        }
        // Written back through replica 1, as it last read it.
        let back = clusters[if deleting { at } else { 1 - at }];
        let (status, body) = r
            .call(1, "POST", "database/config/apidb", Some(apidb(back)))
            .await;
        match status {
            409 => {
                assert_eq!(body, stale);
                stale_refused += 1;
                if deleting {
                    let (status, body) = r
                        .call(0, "POST", "database/config/apidb", Some(apidb(back)))
                        .await;
                    assert_eq!(status, 204, "{body}");
                }
            }
            // Replica 1 read the change first: a write like any other.
            204 => at = if deleting { at } else { 1 - at },
            _ => panic!("round {round}: {status} {body}"),
        }
        let (status, leases) = r
            .call(
                0,
                "LIST",
                "sys/leases/lookup/database/creds/api-maker",
                None,
            )
            .await;
        assert_eq!(status, 404, "round {round}: a lease is left: {leases}");
    }
    assert_eq!(api_makers(&r.cluster).await, 0, "users are left");
    assert_eq!(api_makers(&elsewhere).await, 0, "users are left elsewhere");
    assert!(
        deletes_refused > 0 && moves_refused > 0 && stale_refused > 0,
        "the race was never run: {deletes_refused} issuances refused after a deletion, \
         {moves_refused} after a move, {stale_refused} stale writes"
    );
}

// A lease issued through a connection that replica 0 has just created or moved, revoked at
// once through replica 1, which has not read the change yet (replicas read the definitions
// every second): replica 1 must drop the user where it lives, not answer 500 for a
// connection it does not know, nor drop nothing on the server the connection left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_has_not_read_a_connection_revokes_its_users_where_they_are() {
    let (r, elsewhere) = with_api_maker().await;
    for (round, cluster) in [&r.cluster, &elsewhere, &r.cluster].into_iter().enumerate() {
        // Created (round 0), then moved to the other cluster and back while unused.
        let (status, body) = r
            .call(0, "POST", "database/config/apidb", Some(apidb(cluster)))
            .await;
        assert_eq!(status, 204, "round {round}: {body}");
        let creds = r.creds(0, "api-maker").await;
        let lease = json!({ "lease_id": creds["lease_id"] });
        let (status, body) = r.call(1, "PUT", "sys/leases/revoke", Some(lease)).await;
        assert_eq!(status, 204, "round {round}: {body}");
        let username = creds["data"]["username"].as_str().unwrap();
        assert!(
            !cluster.role_exists(username).await.unwrap(),
            "round {round}: the user outlived its revocation"
        );
    }
    assert_eq!(api_makers(&r.cluster).await, 0);
    assert_eq!(api_makers(&elsewhere).await, 0);
}
