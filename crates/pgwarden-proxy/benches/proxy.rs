//! `cargo bench -p pgwarden-proxy --bench proxy`: pgbench's select-only (`-S`) and TPC-B-like
//! scripts at 1, 8, 32 and 64 clients, on a PostgreSQL with default durability, straight to
//! the database, through PgBouncer (Debian's package, same pool mode and size) and through
//! `pgwarden proxy`, in session and in transaction pooling. Prints one table with each
//! path's TPS, p50 and p99 latency, its ratio to PgBouncer and to the direct connection, and
//! the CPU time the whole machine spent per transaction (pgbench, the path and PostgreSQL).
//!
//! Each row is measured in rounds (`PGWARDEN_BENCH_ROUNDS`, default 2) of `PGWARDEN_BENCH_SECONDS`
//! (default 6) per path, the paths' order reversed from one round to the next (direct,
//! PgBouncer, proxy, then proxy, PgBouncer, direct), so that a machine getting faster or slower
//! during a row does not favour one path; a row's TPS is the mean of its rounds', its
//! percentiles those of all its transactions. `PGWARDEN_BENCH_CLIENTS` (default `1,8,32,64`)
//! sets the concurrencies, `PGWARDEN_BENCH_MODES` (default `session,transaction`) the pool
//! modes, `PGWARDEN_BENCH_PROXY_THREADS` (default 1, as PgBouncer's one thread) the proxy's
//! runtime threads.

use pgwarden_proxy::ProxyConfig;
use pgwarden_testkit::broker::{ROOT_TOKEN, TestBroker};
use pgwarden_testkit::cpu::CpuTime;
use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const ROLES: &str = "      bench: { db_name: appdb, preset: user, default_ttl: 1h, max_ttl: 24h }";

/// Server connections per pool in transaction mode (session mode needs one per client).
const TRANSACTION_POOL: usize = 20;

/// The outcome of one or more pgbench runs of a path.
#[derive(Default)]
struct Run {
    /// Transactions per second of each run.
    tps: Vec<f64>,
    /// Every transaction's latency.
    latencies: Vec<Duration>,
    failed: u64,
    /// CPU time the whole machine used during the runs.
    cpu: CpuTime,
}

impl Run {
    /// Adds `other`'s runs to these.
    fn add(&mut self, other: Run) {
        self.tps.extend(other.tps);
        self.latencies.extend(other.latencies);
        self.failed += other.failed;
        self.cpu.add(other.cpu);
    }

    /// The machine's CPU microseconds per transaction (pgbench, the path, PostgreSQL).
    fn cpu_us_per_transaction(&self) -> f64 {
        self.cpu.machine.as_secs_f64() * 1e6 / self.latencies.len().max(1) as f64
    }

    /// The runs' mean rate.
    fn mean_tps(&self) -> f64 {
        self.tps.iter().sum::<f64>() / self.tps.len().max(1) as f64
    }

    /// The latency at quantile `q` (0–1) over all the runs.
    fn at(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        let last = self.latencies.len().saturating_sub(1);
        self.latencies
            .get(((self.latencies.len() as f64 * q) as usize).min(last))
            .copied()
            .unwrap_or_default()
    }
}

/// Where pgbench connects.
struct Target {
    name: &'static str,
    port: u16,
    user: String,
    password: String,
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn pgbench_bin(cluster: &PgCluster) -> PathBuf {
    let bundled = cluster.bin_dir().join("pgbench");
    if bundled.is_file() {
        return bundled;
    }
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.flatten()
                .map(|d| d.path().join("bin/pgbench"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| "pgbench".into())
}

/// Runs pgbench (`select_only`: `-S`) against `target` for `seconds`.
fn pgbench(bin: &Path, target: &Target, select_only: bool, clients: usize, seconds: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(bin);
    command
        .current_dir(dir.path())
        .env("PGPASSWORD", &target.password)
        .env("PGSSLMODE", "disable")
        .args(["-n", "-M", "simple", "-l", "-h", "127.0.0.1"])
        .args(["-p", &target.port.to_string(), "-U", &target.user])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string()]);
    if select_only {
        command.arg("-S");
    }
    let cpu = CpuTime::now();
    let out = command.arg("appdb").output().expect("pgbench runs");
    let cpu = CpuTime::now().since(cpu);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench via {}: {}{stdout}",
        target.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Run {
        tps: vec![number("tps = ").unwrap_or_else(|| panic!("no tps in: {stdout}"))],
        latencies: pgwarden_testkit::pgbench::logged_latencies(dir.path()),
        failed: number("number of failed transactions: ").unwrap_or(0.0) as u64,
        cpu,
    }
}

/// Starts PgBouncer in `mode` with `pool_size` server connections before `cluster`.
fn pgbouncer(cluster: &PgCluster, dir: &Path, mode: &str, pool_size: usize, port: u16) -> Child {
    let ini = dir.join(format!("pgbouncer-{mode}.ini"));
    let users = dir.join("userlist.txt");
    std::fs::write(
        &users,
        format!("\"{APP_ADMIN}\" \"{APP_ADMIN_PASSWORD}\"\n"),
    )
    .unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={pg} dbname=appdb\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {users}\npool_mode = {mode}\n\
             default_pool_size = {pool_size}\nmax_client_conn = 500\n",
            pg = cluster.port(),
            users = users.display(),
        ),
    )
    .unwrap();
    let mut command = Command::new("pgbouncer");
    if nix_is_root() {
        // PgBouncer refuses to run as root.
        command.args(["-u", "postgres"]);
    }
    let child = command
        .arg(&ini)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbouncer runs (apt-get install pgbouncer)");
    wait_for_port(port);
    child
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("PGWARDEN_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let rounds = pgwarden_testkit::pgbench::rounds();
    let clients: Vec<usize> = env_list("PGWARDEN_BENCH_CLIENTS", "1,8,32,64")
        .iter()
        .map(|c| c.parse().expect("PGWARDEN_BENCH_CLIENTS: numbers"))
        .collect();
    let modes = env_list("PGWARDEN_BENCH_MODES", "session,transaction");
    let cluster = PgCluster::start_durable_with_appdb().await.unwrap();
    let bin = pgbench_bin(&cluster);
    let init = Command::new(&bin)
        .env("PGPASSWORD", APP_ADMIN_PASSWORD)
        .args(["-i", "-q", "-s", "4", "-h", "127.0.0.1", "-U", APP_ADMIN])
        .args(["-p", &cluster.port().to_string(), "appdb"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let broker = TestBroker::start(&cluster, ROLES, "").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let max_clients = clients.iter().copied().max().unwrap_or(1);

    println!(
        "\npgbench through pgwarden proxy vs PgBouncer {} vs direct ({rounds} rounds of {seconds} s per path, order reversed each round; durable PostgreSQL, 2 cores shared by all)\n",
        pgbouncer_version(),
    );
    println!(
        "| mode | script | clients | path | TPS | p50 ms | p99 ms | failed | ÷ PgBouncer | ÷ direct | CPU µs/txn |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let direct = Target {
        name: "direct",
        port: cluster.port(),
        user: APP_ADMIN.into(),
        password: APP_ADMIN_PASSWORD.into(),
    };
    for mode in &modes {
        let pool_size = if mode == "session" {
            max_clients
        } else {
            TRANSACTION_POOL
        };
        let bouncer_port = free_port();
        let mut bouncer = pgbouncer(&cluster, dir.path(), mode, pool_size, bouncer_port);
        let config = ProxyConfig::parse(&format!(
            "address: \"{}\"\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\npool_mode: {mode}\n\
             pool_size: {pool_size}\nmax_client_conn: 500\n\
             auth: {{ identity: {{ logins: [{{mount: kubernetes, role: unused}}] }} }}\n",
            broker.base
        ))
        .unwrap();
        let proxy = Proxy::start(config);
        let paths = [
            Target {
                name: "PgBouncer",
                port: bouncer_port,
                user: APP_ADMIN.into(),
                password: APP_ADMIN_PASSWORD.into(),
            },
            Target {
                name: "pgwarden proxy",
                port: proxy.port,
                user: "bench".into(),
                password: ROOT_TOKEN.into(),
            },
        ];
        for select_only in [true, false] {
            let script = if select_only {
                "select-only"
            } else {
                "TPC-B-like"
            };
            for &n in &clients {
                let targets = [&direct, &paths[0], &paths[1]];
                let mut runs: [Run; 3] = Default::default();
                for round in 0..rounds {
                    for i in pgwarden_testkit::pgbench::round_order::<3>(round) {
                        runs[i].add(pgbench(&bin, targets[i], select_only, n, seconds));
                    }
                }
                let (base, bouncer_tps) = (runs[0].mean_tps(), runs[1].mean_tps());
                for (target, run) in targets.iter().zip(&mut runs) {
                    let tps = run.mean_tps();
                    println!(
                        "| {mode} | {script} | {n} | {} | {tps:.0} | {} | {} | {} | {:.2} | {:.2} | {:.0} |",
                        target.name,
                        ms(run.at(0.50)),
                        ms(run.at(0.99)),
                        run.failed,
                        tps / bouncer_tps,
                        tps / base,
                        run.cpu_us_per_transaction(),
                    );
                }
            }
        }
        proxy.stop();
        let _ = bouncer.kill();
        let _ = bouncer.wait();
    }
}

/// The proxy on a runtime of its own (one thread, like PgBouncer's, unless
/// `PGWARDEN_BENCH_PROXY_THREADS` says more), apart from the bench's broker and its runtime.
struct Proxy {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    fn start(config: ProxyConfig) -> Proxy {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pgwarden-proxy".into())
            .spawn(move || {
                let threads: usize = std::env::var("PGWARDEN_BENCH_PROXY_THREADS")
                    .map(|t| t.parse().expect("PGWARDEN_BENCH_PROXY_THREADS: a number"))
                    .unwrap_or(1);
                let runtime = if threads <= 1 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .enable_all()
                        .build()
                }
                .unwrap();
                runtime.block_on(async move {
                    let proxy = pgwarden_proxy::start(config).await.unwrap();
                    port_tx.send(proxy.addr.unwrap().port()).unwrap();
                    let _ = stopped.await;
                    proxy.shutdown().await;
                });
            })
            .unwrap();
        let port = port_rx.recv().unwrap();
        Proxy { port, stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}

fn pgbouncer_version() -> String {
    Command::new("pgbouncer")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "(version unknown)".into())
}
