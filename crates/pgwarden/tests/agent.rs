//! The sidecar agent as a real process against a real broker and PostgreSQL: files change
//! atomically and the application is signalled, the broker's restart and a rotating token file
//! are survived, an init container's lease is adopted, a lease revoked in pgwarden is replaced
//! at the next look-up, and bad setups end with one clear line.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::broker::{ROOT_TOKEN, TestBroker};
use pgwarden_testkit::issuer::{TestIssuer, TestKey, service_account_claims, sign};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Short leases, so the agent renews and replaces them within the test.
const ROLES: &str =
    "      appdb-short: { db_name: appdb, preset: readonly, default_ttl: 3s, max_ttl: 6s }
      appdb-long: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 1h }";

struct Broker {
    cluster: PgCluster,
    issuer: TestIssuer,
    /// Holds the policy file, which the server reads while it runs.
    _policy_dir: tempfile::TempDir,
    /// Listens on the same port across restarts, where the agents look for it.
    server: TestBroker,
}

impl Broker {
    async fn start() -> Broker {
        let cluster = PgCluster::start_with_appdb().await.unwrap();
        let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
        let dir = tempfile::tempdir().unwrap();
        let extra = team_a_login(
            dir.path(),
            &issuer,
            &["database/appdb-short", "database/appdb-long"],
            ", token_ttl: 2s",
        );
        let mut server = TestBroker::new(&cluster, ROLES, &extra);
        server.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        server.boot().await;
        Broker {
            cluster,
            issuer,
            _policy_dir: dir,
            server,
        }
    }

    fn address(&self) -> String {
        self.server.base.clone()
    }

    /// Logs in to `appdb` with the user and password the env file `env` holds.
    async fn log_in_with(
        &self,
        env: &Path,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let env = env_file(env);
        self.cluster.connect_as(&env[0].1, &env[1].1, "appdb").await
    }

    fn sa_token(&self, ttl: i64) -> String {
        sign(
            TestKey::Rsa1,
            &service_account_claims(&self.issuer.issuer(), "pgwarden", "team-a", "app", ttl),
        )
    }
}

/// Writes an agent config into `dir` and returns its path.
fn agent_config(
    dir: &Path,
    address: &str,
    listen_port: u16,
    files_dir: &Path,
    extra: &str,
) -> PathBuf {
    let template = dir.join("custom.tmpl");
    std::fs::write(&template, "user={{ username }} host={{host}}:{{port}}\n").unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
address: "{address}"
auth: {{ kubernetes: {{ role: team-a, token_file: "{token}" }} }}
listen: "127.0.0.1:{listen_port}"
grace_period: 1s
credentials:
  - path: database/creds/appdb-short
    files:
      - {{ path: "{files}/appdb.env", format: env }}
      - {{ path: "{files}/appdb.json", format: json }}
      - {{ path: "{files}/pgpass", format: pgpass }}
      - {{ path: "{files}/appdb.url", format: url }}
      - {{ path: "{files}/custom.conf", template: "{template}" }}
{extra}
"#,
            token = dir.join("token").display(),
            files = files_dir.display(),
            template = template.display(),
        ),
    )
    .unwrap();
    config
}

fn agent(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    cmd.args(["agent", "--config"])
        .arg(config)
        .args(args)
        .env("PGWARDEN_LOG", "warn")
        .kill_on_drop(true);
    cmd
}

async fn readyz(port: u16) -> Option<Value> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    (response.status() == 200).then_some(())?;
    response.json().await.ok()
}

async fn wait_ready(port: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(body) = readyz(port).await {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("agent never became ready");
}

/// Writes to `to` the agent configuration at `config`, for the role with hour-long leases.
fn with_long_leases(config: &Path, to: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(to, text.replace("appdb-short", "appdb-long")).unwrap();
}

/// An agent configuration in `dir` for the hour-long role, logging in with a ten-minute token,
/// whose `on_change` creates the file `told`: returns the configuration, its health port and
/// `told`.
fn long_lease_agent(broker: &Broker, dir: &Path) -> (PathBuf, u16, PathBuf) {
    std::fs::write(dir.join("token"), broker.sa_token(600)).unwrap();
    let port = free_port();
    let told = dir.join("told");
    let on_change = format!(
        "    on_change: {{ command: [touch, \"{}\"] }}",
        told.display()
    );
    let config = agent_config(dir, &broker.address(), port, dir, &on_change);
    with_long_leases(&config, &config);
    (config, port, told)
}

/// A JSON file the agent wrote: a credential in the `json` format, or a lease state.
fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stay_fresh_through_rotation_restart_and_signals() {
    let mut broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("out");
    std::fs::create_dir(&files).unwrap();
    // The first service-account token expires soon; the agent must pick up its rotation.
    std::fs::write(dir.path().join("token"), broker.sa_token(8)).unwrap();
    // The "application": records every SIGHUP.
    let (pid_file, hups) = (dir.path().join("app.pid"), dir.path().join("hups"));
    let mut app = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; trap 'echo hup >> {}' HUP; while :; do sleep 0.1; done",
            pid_file.display(),
            hups.display()
        ))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let port = free_port();
    let extra = format!(
        "    on_change: {{ signal: {{ pid_file: \"{}\", signal: SIGHUP }} }}\nrevoke_on_shutdown: true",
        pid_file.display()
    );
    let config = agent_config(dir.path(), &broker.address(), port, &files, &extra);
    // The agent's expected warnings (the broker goes away below) go to a file, not the test output.
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = agent(&config, &[]).stderr(log).spawn().unwrap();
    let ready = wait_ready(port).await;
    assert_eq!(
        ready["credentials"][0]["path"],
        "database/creds/appdb-short"
    );

    // Files are complete, private, and the password works.
    let env = env_file(&files.join("appdb.env"));
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["PGUSER", "PGPASSWORD", "PGHOST", "PGPORT", "PGDATABASE"]
    );
    let (user, password) = (&env[0].1, &env[1].1);
    broker
        .cluster
        .connect_as(user, password, "appdb")
        .await
        .expect("the written password works");
    assert_eq!(
        std::fs::read_to_string(files.join("pgpass")).unwrap(),
        format!(
            "127.0.0.1:{}:appdb:{user}:{password}\n",
            broker.cluster.port()
        )
    );
    assert_eq!(
        std::fs::read_to_string(files.join("custom.conf")).unwrap(),
        format!("user={user} host=127.0.0.1:{}\n", broker.cluster.port())
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(files.join("appdb.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // A reader polling the files never sees a partial one, while credentials change.
    let reader_files = files.clone();
    let reader = tokio::spawn(async move {
        let mut users = BTreeSet::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(24) {
            let json: Value = serde_json::from_str(
                &std::fs::read_to_string(reader_files.join("appdb.json")).unwrap(),
            )
            .expect("never a partial JSON file");
            assert_eq!(json.as_object().unwrap().len(), 6);
            assert_eq!(
                env_file(&reader_files.join("appdb.env")).len(),
                5,
                "never a partial env file"
            );
            // The state beside the files, read after them, names their lease: as the one to
            // adopt, or as one replaced but perhaps not revoked yet (it is written first).
            let state: Value = serde_json::from_str(
                &std::fs::read_to_string(
                    reader_files.join(".pgwarden-lease-database_creds_appdb_short.json"),
                )
                .unwrap(),
            )
            .expect("never a partial state file");
            let named = std::iter::once(&state["lease_id"])
                .chain(state["retired"].as_array().unwrap())
                .any(|id| *id == json["lease_id"]);
            assert!(named, "files {json} but state {state}");
            users.insert(json["username"].as_str().unwrap().to_string());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        users
    });

    // The old service-account token expires (8 s); the rotated one is in the file.
    tokio::time::sleep(Duration::from_secs(4)).await;
    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The broker goes away for a moment and comes back. Meanwhile the agent keeps the files
    // it has and its health endpoint says how long they remain valid.
    broker.server.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await; // a reply sent just before the stop is written
    let kept = std::fs::read_to_string(files.join("appdb.json")).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        std::fs::read_to_string(files.join("appdb.json")).unwrap(),
        kept,
        "files kept while the broker is down"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let kept_lease: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(health["credentials"][0]["lease_id"], kept_lease["lease_id"]);
    assert!(
        health["credentials"][0]["valid_for_seconds"].is_u64(),
        "{health}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.server.boot().await;

    let users = reader.await.unwrap();
    assert!(
        users.len() >= 3,
        "credentials kept changing across rotation and restart: {users:?}"
    );
    // (The application's trap for the last change may still be running.)
    let hup_count = || {
        std::fs::read_to_string(&hups)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hup_count() < users.len() - 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hup_count() >= users.len() - 1,
        "the application was signalled on each change ({} for {} users)",
        hup_count(),
        users.len()
    );
    let current = env_file(&files.join("appdb.env"));
    broker
        .cluster
        .connect_as(&current[0].1, &current[1].1, "appdb")
        .await
        .expect("the current files work");

    // revoke_on_shutdown: after the grace period the current user is gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.wait().await.unwrap();
    assert!(status.success());
    assert!(!broker.cluster.role_exists(&current[0].1).await.unwrap());
    let _ = app.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_cannot_be_rewritten_keep_their_lease_until_they_are() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("out");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), &broker.address(), port, &files, "");
    // No grace period: a replaced lease would be revoked the moment its successor exists.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("grace_period: 1s", "grace_period: 0s"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = agent(&config, &[]).stderr(log).spawn().unwrap();
    wait_ready(port).await;
    let held = json_file(&files.join("appdb.json"));
    let lease_id = held["lease_id"].as_str().unwrap().to_string();
    // One file's place taken by a directory: no write of the files can complete (for root
    // too) while the credential is replaced (its max TTL is 6 s).
    let url = files.join("appdb.url");
    std::fs::remove_file(&url).unwrap();
    std::fs::create_dir(&url).unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        std::fs::read_to_string(dir.path().join("agent.log"))
            .unwrap()
            .contains("cannot write the new credential"),
        "the credential was replaced meanwhile"
    );
    // The lease the files hold was left to run out, not revoked by the agent.
    let (status, audit) = call(
        &broker.address(),
        ROOT_TOKEN,
        "GET",
        "pgwarden/audit?action=lease.revoke",
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    let revocations = audit["data"]["records"].as_array().unwrap();
    assert!(
        !revocations
            .iter()
            .any(|r| r.to_string().contains(lease_id.as_str())),
        "the files' lease was revoked while they held it: {revocations:?}"
    );
    // Once the files can be written, they are, with a credential that works.
    std::fs::remove_dir(&url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !url.is_file() {
        assert!(Instant::now() < deadline, "the files are rewritten");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker
        .log_in_with(&files.join("appdb.env"))
        .await
        .expect("the rewritten files work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_adopts_the_lease_of_its_init_container() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    let port = free_port();
    let config = agent_config(dir.path(), &broker.address(), port, dir.path(), "");
    let once = agent(&config, &["--once"]).output().await.unwrap();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    let json = json_file(&dir.path().join("appdb.json"));
    let lease_id = json["lease_id"].as_str().unwrap().to_string();

    let _sidecar = agent(&config, &[]).spawn().unwrap();
    let ready = wait_ready(port).await;
    assert_eq!(
        ready["credentials"][0]["lease_id"], lease_id,
        "adopted, not re-issued"
    );
    let (status, body) = call(
        &broker.address(),
        ROOT_TOKEN,
        "LIST",
        "sys/leases/lookup/database/creds/appdb-short/",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["keys"],
        json!([lease_id.rsplit('/').next().unwrap()]),
        "one lease, not two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_an_agent_replaced_but_did_not_revoke_are_revoked_by_the_next() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port, told) = long_lease_agent(&broker, dir.path());
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let once = agent(&config, &["--once"]).output().await.unwrap();
    assert!(
        once.status.success(),
        "{}",
        String::from_utf8_lossy(&once.stderr)
    );
    // Another lease of the same identity, recorded as replaced but not yet revoked: the state
    // an agent leaves when it stops between recording a new lease and revoking the old one.
    let (status, login) = call(
        &broker.address(),
        "",
        "POST",
        "auth/kubernetes/login",
        Some(json!({ "role": "team-a", "jwt": token })),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let app_token = login["auth"]["client_token"].as_str().unwrap();
    let (status, replaced) = call(
        &broker.address(),
        app_token,
        "GET",
        "database/creds/appdb-long",
        None,
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    let replaced_id = replaced["lease_id"].as_str().unwrap();
    let (user, password) = (
        replaced["data"]["username"].as_str().unwrap(),
        replaced["data"]["password"].as_str().unwrap(),
    );
    broker
        .cluster
        .connect_as(user, password, "appdb")
        .await
        .expect("the replaced lease works until revoked");
    let state_file = dir
        .path()
        .join(".pgwarden-lease-database_creds_appdb_long.json");
    let mut state = json_file(&state_file);
    assert_eq!(state["retired"], json!([]), "{state}");
    state["retired"] = json!([replaced_id]);
    std::fs::write(&state_file, state.to_string()).unwrap();

    let _sidecar = agent(&config, &[]).spawn().unwrap();
    let ready = wait_ready(port).await;
    assert_eq!(
        ready["credentials"][0]["lease_id"], state["lease_id"],
        "the recorded lease is adopted"
    );
    // Revoked after the grace period (1 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = call(
            &broker.address(),
            ROOT_TOKEN,
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": replaced_id })),
        )
        .await;
        if status == 400 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "the replaced lease is revoked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        broker
            .cluster
            .connect_as(user, password, "appdb")
            .await
            .is_err(),
        "the replaced lease's password no longer works"
    );
    assert!(
        told.exists(),
        "the application was told to move to the files before the revocation"
    );
    broker
        .log_in_with(&dir.path().join("appdb.env"))
        .await
        .expect("the adopted lease's files work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_in_pgwarden_is_replaced_at_the_next_look_up() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port, told) = long_lease_agent(&broker, dir.path());
    // Renewal is 40 minutes away: only a look-up can notice the revocation.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("grace_period: 1s", "grace_period: 1s\ncheck_interval: 1s"),
    )
    .unwrap();
    let _sidecar = agent(&config, &[]).spawn().unwrap();
    let ready = wait_ready(port).await;
    let first = ready["credentials"][0]["lease_id"].clone();
    let env = dir.path().join("appdb.env");
    let old = env_file(&env);
    broker
        .log_in_with(&env)
        .await
        .expect("the first lease works");

    let (status, body) = call(
        &broker.address(),
        ROOT_TOKEN,
        "PUT",
        "sys/leases/revoke",
        Some(json!({ "lease_id": first })),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(port)
        .await
        .map(|r| r["credentials"][0]["lease_id"].clone())
        == Some(first.clone())
    {
        assert!(
            Instant::now() < deadline,
            "the revoked lease is replaced within seconds"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker
        .log_in_with(&env)
        .await
        .expect("the files hold a working credential again");
    assert_ne!(env_file(&env)[0], old[0], "a new user");
    assert!(told.exists(), "the application was told");
    assert!(
        broker
            .cluster
            .connect_as(&old[0].1, &old[1].1, "appdb")
            .await
            .is_err(),
        "the revoked password stays refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_per_set_of_files_and_a_restart_waits_for_pgwarden() {
    let mut broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    let long = |port: u16, name: &str| {
        let config = agent_config(dir.path(), &broker.address(), port, dir.path(), "");
        let renamed = dir.path().join(name);
        with_long_leases(&config, &renamed);
        renamed
    };
    let port = free_port();
    // (Each writes agent.yaml first: the other agent's is made first.)
    let other = long(free_port(), "other.yaml");
    let config = long(port, "agent.yaml");
    let lease_in_files = || {
        let json = json_file(&dir.path().join("appdb.json"));
        json["lease_id"].as_str().unwrap().to_string()
    };
    let mut first = agent(&config, &[]).spawn().unwrap();
    wait_ready(port).await;
    let held = lease_in_files();

    // A second agent on the same configuration, or on the same files: it stops before
    // fetching or writing anything.
    let same = agent(&config, &[]).output().await.unwrap();
    assert_eq!(same.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&same.stderr),
        format!("error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)\n")
    );
    let elsewhere = agent(&other, &[]).output().await.unwrap();
    assert_eq!(elsewhere.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&elsewhere.stderr),
        format!(
            "error: another agent keeps credential \"database/creds/appdb-long\" (it holds \
             {}/.pgwarden-lease-database_creds_appdb_long.lock): run one agent per set of files\n",
            dir.path().display()
        )
    );
    assert_eq!(lease_in_files(), held, "the files are the first agent's");

    // Killed, then restarted while pgwarden is down: it waits, keeping the files, and adopts
    // their lease once pgwarden is back.
    first.kill().await.unwrap();
    broker.server.stop().await;
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut restarted = agent(&config, &[]).stderr(log).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        restarted.try_wait().unwrap().is_none(),
        "still running: {}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap()
    );
    let waiting = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(waiting.status(), 503);
    broker.server.boot().await;
    let ready = wait_ready(port).await;
    assert_eq!(ready["credentials"][0]["lease_id"], held.as_str());
    assert_eq!(lease_in_files(), held);
    broker
        .log_in_with(&dir.path().join("appdb.env"))
        .await
        .expect("the adopted files work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_lease_a_file_may_hold_is_left_to_the_next_start() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    let config = agent_config(dir.path(), &broker.address(), free_port(), dir.path(), "");
    with_long_leases(&config, &config);
    // The fourth file's place is taken by a directory: the state and three files are
    // written with the new lease, then the write fails.
    std::fs::create_dir(dir.path().join("appdb.url")).unwrap();
    let once = agent(&config, &["--once"]).output().await.unwrap();
    assert_eq!(once.status.code(), Some(1));
    broker
        .log_in_with(&dir.path().join("appdb.env"))
        .await
        .expect("the lease a file holds is not revoked");
    let state = json_file(
        &dir.path()
            .join(".pgwarden-lease-database_creds_appdb_long.json"),
    );
    let json = json_file(&dir.path().join("appdb.json"));
    assert_eq!(
        state["lease_id"], json["lease_id"],
        "recorded for the next start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_end_with_one_clear_line() {
    let broker = Broker::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    let run = |config: PathBuf| async move {
        let out = agent(&config, &["--once"]).output().await.unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };

    let wrong_address = agent_config(
        dir.path(),
        "http://127.0.0.1:1",
        free_port(),
        dir.path(),
        "",
    );
    let (code, err) = run(wrong_address).await;
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("error: cannot reach pgwarden at http://127.0.0.1:1: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let config = agent_config(dir.path(), &broker.address(), free_port(), dir.path(), "");
    std::fs::write(dir.path().join("token"), "not-a-token").unwrap();
    let (code, err) = run(config.clone()).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "error: pgwarden answered 403 to login at auth/kubernetes: permission denied: the token is not a valid JWT: InvalidToken\n"
    );

    std::fs::write(dir.path().join("token"), broker.sa_token(600)).unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let unwritable = agent_config(dir.path(), &broker.address(), free_port(), &not_a_dir, "");
    let (code, err) = run(unwritable).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "error: cannot write {}/.pgwarden-lease-database_creds_appdb_short.lock: Not a directory (os error 20)\n",
            not_a_dir.display()
        )
    );
    // Nothing was issued for the credential it cannot deliver (the state's lock comes first).
    let (status, body) = call(
        &broker.address(),
        ROOT_TOKEN,
        "LIST",
        "sys/leases/lookup/database/creds/appdb-short/",
        None,
    )
    .await;
    assert_eq!(status, 404, "no lease remains: {body}");

    let check = agent(&config, &["--check"]).output().await.unwrap();
    assert_eq!(
        String::from_utf8(check.stdout).unwrap(),
        format!("{}: valid, 1 credential(s)\n", config.display())
    );
}
