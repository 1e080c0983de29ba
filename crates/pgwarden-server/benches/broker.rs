//! Benchmark: issue+revoke throughput and latency through pgwarden's HTTP API at
//! concurrency 1, 8 and 32, beside the limit: pgbench sending the same `CREATE ROLE … PASSWORD
//! '<scram verifier>' VALID UNTIL …; DROP ROLE …` on a PostgreSQL with default durability
//! (fsync and synchronous_commit on); then the time and peak memory to reap 10,000 expired
//! leases.
//!
//! Each concurrency runs twice: with everything sharing every CPU (PostgreSQL, pgwarden and
//! this process's HTTP clients compete for the same cores, so pgwarden's own work is charged
//! to the database's capacity), and with the database on CPU 0 and the rest on the others, as
//! when pgwarden runs on another machine than its database (the usual deployment). The limit
//! is measured the same way each time.
//!
//! Run with `cargo bench -p pgwarden-server --bench broker`. Prints tables; asserts nothing.
//! Beside each path's rate and latency, the CPU time the machine spent per operation, and how
//! much of it went to other processes than this one's pgwarden and HTTP clients: the database
//! (and, on pgbench's row, pgbench).
//! `PGWARDEN_BENCH_CLIENTS=8` (a comma-separated list) runs only the listed concurrencies.
//!
//! Each row is measured in rounds (`PGWARDEN_BENCH_ROUNDS`, default 2), the paths' order
//! reversed from one round to the next (pgbench, template role, preset role, then preset,
//! template, pgbench), so that the machine getting faster or slower during a row favours no
//! path; a row's rate is its operations over its rounds' time, its percentiles those of all
//! its operations.

use pgwarden_core::{Lease, LeaseState, Owner, RoleSpec, Ttl, names};
use pgwarden_store::{SqliteStore, Store};
use pgwarden_testkit::broker::{ROOT_TOKEN as ROOT, TestBroker};
use pgwarden_testkit::cpu::{CpuTime, stat_fields};
use pgwarden_testkit::{APP_ADMIN as ADMIN, APP_ADMIN_PASSWORD as ADMIN_PW, PgCluster};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REAP_COUNT: usize = 10_000;
const CREATE: &str =
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';";

/// One role per kind of creation: SQL templates, and a preset.
fn roles() -> String {
    format!(
        "      template: {{ db_name: appdb, creation_statements: ['{create}'], default_ttl: 1h, max_ttl: 2h }}
      preset:   {{ db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }}",
        create = CREATE.replace('\'', "''"),
    )
}

/// Latencies of one or more runs, their wall time and the CPU time they used.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
    cpu: CpuTime,
}

impl Run {
    /// Adds `other`'s operations and times to these.
    fn add(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.wall += other.wall;
        self.cpu.add(other.cpu);
    }

    /// CPU milliseconds per operation: the machine's, and those of the processes other than
    /// this one (the database, and pgbench on its row).
    fn cpu_ms_per_op(&self) -> (f64, f64) {
        let per_op = |d: Duration| d.as_secs_f64() * 1000.0 / self.latencies.len().max(1) as f64;
        (per_op(self.cpu.machine), per_op(self.cpu.others()))
    }

    fn ops_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// Runs `total` operations over `workers` tasks, each with its own state from `setup`.
async fn measure<S, F, Fut, Setup, SetupFut>(
    workers: usize,
    total: usize,
    setup: Setup,
    op: F,
) -> Run
where
    S: Send + Sync + 'static,
    Setup: Fn() -> SetupFut,
    SetupFut: std::future::Future<Output = S>,
    F: Fn(Arc<S>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_worker = total / workers;
    let mut states = Vec::new();
    for _ in 0..workers {
        states.push(Arc::new(setup().await));
    }
    let (start, cpu) = (Instant::now(), CpuTime::now());
    let mut handles = Vec::new();
    for state in states {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                op(state.clone()).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    Run {
        latencies,
        wall: start.elapsed(),
        cpu: CpuTime::now().since(cpu),
    }
}

async fn via_pgwarden(http: reqwest::Client, base: String, role: &'static str) {
    let creds: serde_json::Value = http
        .get(format!("{base}/v1/database/creds/{role}"))
        .header("X-Vault-Token", ROOT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lease_id = creds["lease_id"].as_str().expect("credential issued");
    let status = http
        .put(format!("{base}/v1/sys/leases/revoke"))
        .header("X-Vault-Token", ROOT)
        .json(&serde_json::json!({ "lease_id": lease_id }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

/// How long pgbench runs at each concurrency, over all its rounds.
const PGBENCH_SECONDS: u64 = 10;

/// pgbench sending what pgwarden sends per credential (a fresh name, a SCRAM verifier, an
/// expiry), each statement its own transaction, for `seconds`.
fn pgbench(cluster: &PgCluster, clients: usize, seconds: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let verifier =
        postgres_protocol::password::scram_sha_256(names::random_alphanumeric(32).as_bytes());
    let script = dir.path().join("issue-revoke.sql");
    std::fs::write(
        &script,
        format!(
            "\\set r random(1, 2000000000)\n\
             CREATE ROLE \"v-pgbench-:client_id-:r\" WITH LOGIN PASSWORD '{verifier}' VALID UNTIL '2099-01-01 00:00:00+00';\n\
             DROP ROLE \"v-pgbench-:client_id-:r\";\n"
        ),
    )
    .unwrap();
    let pgbench = [cluster.bin_dir().join("pgbench"), "pgbench".into()]
        .into_iter()
        .find(|p| p.is_file() || p.as_os_str() == "pgbench")
        .unwrap();
    let (started, cpu) = (Instant::now(), CpuTime::now());
    let out = std::process::Command::new(pgbench)
        .current_dir(dir.path())
        .env("PGPASSWORD", ADMIN_PW)
        .args(["-n", "-M", "simple", "-l", "-h", "127.0.0.1", "-U", ADMIN])
        .args(["-p", &cluster.port().to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg("appdb")
        .output()
        .expect("pgbench runs (apt-get install postgresql-contrib or postgresql)");
    let (wall, cpu) = (started.elapsed(), CpuTime::now().since(cpu));
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per-transaction log lines: client, transaction, latency (µs), …
    let latencies = pgwarden_testkit::pgbench::logged_latencies(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {stdout}"));
    // Report pgbench's own rate (without connection set-up) through `wall`.
    let wall = Duration::from_secs_f64(latencies.len() as f64 / tps).min(wall);
    Run {
        latencies,
        wall,
        cpu,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How the CPUs are shared in a run.
#[derive(Clone, Copy)]
enum Cpus {
    /// Every process may run on every CPU.
    Shared,
    /// The database on CPU 0; pgwarden, pgbench and the HTTP clients on the others.
    DatabaseApart,
}

impl Cpus {
    fn label(self) -> &'static str {
        match self {
            Cpus::Shared => "shared",
            Cpus::DatabaseApart => "database apart",
        }
    }

    /// Applies this split to `cluster`'s processes (and the children they start later) and to
    /// this process (whose children, pgbench, inherit it).
    fn apply(self, cluster: &PgCluster) {
        let all: Vec<usize> = (0..num_cpus()).collect();
        let (database, rest) = match self {
            Cpus::Shared => (all.clone(), all),
            Cpus::DatabaseApart => (vec![0], all[1..].to_vec()),
        };
        let server = cluster.server_pid().expect("the server's pid");
        for pid in std::iter::once(server).chain(children_of(server)) {
            pin(pid, &database);
        }
        pin(std::process::id() as i32, &rest);
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pids whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // The state, then the parent's pid.
            stat_fields(&pid.to_string()).and_then(|fields| fields.get(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Restricts every thread of process `pid` to `cpus`.
fn pin(pid: i32, cpus: &[usize]) {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).unwrap();
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return; // gone meanwhile
    };
    for task in tasks.flatten() {
        if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
        }
    }
}

async fn throughput(cluster: &PgCluster, base: &str) {
    println!(
        "\nissue + revoke through pgwarden's API vs pgbench sending the same CREATE ROLE/DROP ROLE \
         (PostgreSQL with default durability)\n"
    );
    println!(
        "| CPUs | concurrency | path | ops | ops/s | p50 ms | p99 ms | ops/s ÷ pgbench | CPU ms/op | of which the database's |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let split = num_cpus() > 1;
    for cpus in [Cpus::Shared, Cpus::DatabaseApart] {
        if matches!(cpus, Cpus::DatabaseApart) && !split {
            continue;
        }
        throughput_with(cluster, base, cpus).await;
    }
    Cpus::Shared.apply(cluster);
}

async fn throughput_with(cluster: &PgCluster, base: &str, cpus: Cpus) {
    let only = std::env::var("PGWARDEN_BENCH_CLIENTS").ok();
    for (workers, total) in [(1usize, 400usize), (8, 1600), (32, 3200)] {
        if only
            .as_deref()
            .is_some_and(|list| !list.split(',').any(|c| c.trim() == workers.to_string()))
        {
            continue;
        }
        let rounds = pgwarden_testkit::pgbench::rounds();
        let labels = [
            "pgbench",
            "pgwarden (template role)",
            "pgwarden (preset role)",
        ];
        let mut runs: [Run; 3] = Default::default();
        for round in 0..rounds {
            for path in pgwarden_testkit::pgbench::round_order::<3>(round) {
                cpus.apply(cluster); // pins the pool's connections opened meanwhile too
                let run = match path {
                    0 => {
                        let seconds = (PGBENCH_SECONDS / rounds as u64).max(1);
                        tokio::task::block_in_place(|| pgbench(cluster, workers, seconds))
                    }
                    _ => {
                        let role = if path == 1 { "template" } else { "preset" };
                        let (http, base) = (reqwest::Client::new(), base.to_string());
                        measure(
                            workers,
                            (total / rounds).max(workers),
                            || async {},
                            move |_: Arc<()>| via_pgwarden(http.clone(), base.clone(), role),
                        )
                        .await
                    }
                };
                runs[path].add(run);
            }
        }
        let baseline = runs[0].ops_per_sec();
        for path in [1, 2, 0] {
            let (label, run) = (labels[path], &runs[path]);
            let (cpu, database_cpu) = run.cpu_ms_per_op();
            println!(
                "| {} | {workers} | {label} | {} | {:.0} | {} | {} | {:.2} | {cpu:.2} | {database_cpu:.2} |",
                cpus.label(),
                run.latencies.len(),
                run.ops_per_sec(),
                ms(run.percentile(0.5)),
                ms(run.percentile(0.99)),
                run.ops_per_sec() / baseline
            );
        }
    }
}

/// Clients for the replicated comparison, and operations they run.
const REPLICATED_CLIENTS: usize = 8;
const REPLICATED_OPS: usize = 1600;

/// Runs the replicated comparison's load (template role, clients spread over `bases`) and
/// prints its row; `baseline` is the SQLite rate to compare with.
async fn replicated_row(bases: &[String], label: &str, baseline: Option<f64>) -> f64 {
    let http = reqwest::Client::new();
    let bases = Arc::new(bases.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = measure(
        REPLICATED_CLIENTS,
        REPLICATED_OPS,
        || {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let base = bases[n % bases.len()].clone();
            async move { base }
        },
        move |base: Arc<String>| via_pgwarden(http.clone(), base.to_string(), "template"),
    )
    .await;
    let rate = run.ops_per_sec();
    if let Some(sqlite) = baseline {
        println!(
            "| {label} | {REPLICATED_CLIENTS} | {rate:.0} | {} | {} | {:.2} |",
            ms(run.percentile(0.5)),
            ms(run.percentile(0.99)),
            rate / sqlite
        );
    }
    rate
}

/// Issue+revoke at 8 clients with the state on PostgreSQL (a database `state` in the same
/// cluster), with 1 and 3 replicas, beside the SQLite figure measured just before.
async fn replicated(cluster: &PgCluster, sqlite: f64) {
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE state").await.unwrap();
    let extra = format!(
        "state: {{ postgresql: {{ url: \"{}\" }} }}",
        cluster.superuser_url("state")
    );
    println!(
        "\nissue + revoke (template role) with the state on PostgreSQL, vs SQLite (CPUs shared)\n"
    );
    println!("| state | clients | ops/s | p50 ms | p99 ms | ÷ SQLite |");
    println!("|---|---|---|---|---|---|");
    println!("| SQLite, 1 process | {REPLICATED_CLIENTS} | {sqlite:.0} | | | 1.00 |");
    for replicas in [1usize, 3] {
        let mut brokers = Vec::new();
        for _ in 0..replicas {
            brokers.push(TestBroker::start(cluster, &roles(), &extra).await);
        }
        let bases: Vec<String> = brokers.iter().map(|b| b.base.clone()).collect();
        let label = format!("PostgreSQL, {replicas} replica(s)");
        replicated_row(&bases, &label, Some(sqlite)).await;
        for mut broker in brokers {
            broker.stop().await;
        }
    }
}

/// Writes `count` already-expired active leases straight into the store, with their users
/// created in one transaction, as if pgwarden had been down while they expired.
async fn seed_expired(cluster: &PgCluster, data: &std::path::Path, count: usize) {
    let role = serde_json::from_str::<RoleSpec>(&format!(
        r#"{{"db_name":"appdb","creation_statements":[{}],"default_ttl":60,"max_ttl":120}}"#,
        serde_json::to_string(CREATE).unwrap()
    ))
    .unwrap()
    .into_def("template")
    .unwrap();
    let store = Arc::new(SqliteStore::open(data).unwrap());
    let issued = time::OffsetDateTime::now_utc() - Duration::from_secs(120);
    let mut sql = String::from("BEGIN;");
    let mut inserts = tokio::task::JoinSet::new();
    for _ in 0..count {
        let username = names::generate_username("bench", "reap", 0);
        sql.push_str(&format!(
            "CREATE ROLE \"{username}\" LOGIN VALID UNTIL 'infinity';"
        ));
        let mut lease = Lease::new_pending(
            "database",
            &role,
            username,
            Owner::root(),
            Ttl::default(),
            issued,
        );
        lease.state = LeaseState::Active;
        let store = store.clone();
        inserts.spawn(async move { store.insert_lease(&lease).await.unwrap() });
    }
    inserts.join_all().await;
    sql.push_str("COMMIT;");
    cluster
        .connect_as(ADMIN, ADMIN_PW, "appdb")
        .await
        .unwrap()
        .batch_execute(&sql)
        .await
        .unwrap();
}

async fn reap(cluster: &PgCluster) {
    let mut broker = TestBroker::new(cluster, &roles(), "");
    seed_expired(cluster, broker.data.path(), REAP_COUNT).await;
    let su = cluster.connect_superuser("appdb").await.unwrap();
    let count = || async {
        su.query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-bench-reap-%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    assert_eq!(count().await, REAP_COUNT as i64);
    // Reset the peak-RSS counter so VmHWM measures from here on.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak_rss_kib();
    let start = Instant::now();
    broker.boot().await;
    while count().await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed();
    let peak = peak_rss_kib();
    broker.stop().await;
    println!(
        "\nreaping expired leases (start-up recovery, ordered schedule, 16 concurrent revocations)\n"
    );
    println!(
        "| leases | time to drop all | users/s | peak RSS of the bench process | RSS growth during reaping |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {REAP_COUNT} | {:.1} s | {:.0} | {} MiB | {} MiB |",
        elapsed.as_secs_f64(),
        REAP_COUNT as f64 / elapsed.as_secs_f64(),
        peak / 1024,
        peak.saturating_sub(before) / 1024
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness-less benches.
    }
    let cluster = PgCluster::start_durable_with_appdb().await.unwrap();
    let mut broker = TestBroker::start(&cluster, &roles(), "").await;
    throughput(&cluster, &broker.base).await;
    let sqlite = replicated_row(&[broker.base.clone()], "SQLite, 1 process", None).await;
    broker.stop().await;
    replicated(&cluster, sqlite).await;
    reap(&cluster).await;
}
