//! A PostgreSQL cluster in a temporary directory, on a free loopback port, password-protected
//! with `scram-sha-256`. When the process runs as root, `initdb` and `postgres` run as the
//! `postgres` system user. Dropping the cluster shuts the server down and deletes its files.

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a cluster could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No `initdb`/`postgres` binaries were found.
    #[error(
        "no PostgreSQL server binaries found in /usr/lib/postgresql/*/bin or PATH: install them (apt-get install postgresql) or set PGWARDEN_PG_BIN"
    )]
    NoBinaries,
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PostgreSQL tool exited with an error.
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        /// The tool's name.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The server did not start accepting connections in time.
    #[error("PostgreSQL did not become ready within 30 s; its log:\n{log}")]
    NotReady {
        /// The server log.
        log: String,
    },
    /// A SQL command against the cluster failed.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done.
        what: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// The superuser of every cluster the testkit makes.
pub const SUPERUSER: &str = "postgres";
/// The administrator of the database `appdb` made by [`PgCluster::start_with_appdb`].
pub const APP_ADMIN: &str = "pgwarden_admin";
/// That administrator's password.
pub const APP_ADMIN_PASSWORD: &str = "admin-secret";

/// A running throwaway PostgreSQL server.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    server: Option<Child>,
    run_as: Option<User>,
    /// The `-c` settings the server runs with, for [`PgCluster::restart`].
    settings: Vec<String>,
}

/// The directory holding `initdb` and `postgres`.
fn find_bin_dir() -> Result<PathBuf, TestkitError> {
    if let Some(dir) = std::env::var_os("PGWARDEN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        })
        .ok_or(TestkitError::NoBinaries)
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, TestkitError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

impl PgCluster {
    /// Initialises and starts a new cluster; blocks until it accepts connections.
    pub fn start() -> Result<PgCluster, TestkitError> {
        PgCluster::start_with(None, false)
    }

    /// Like [`PgCluster::start`], with TLS on, presenting `ca`'s loopback certificate.
    pub fn start_with_tls(ca: &crate::tls::TestCa) -> Result<PgCluster, TestkitError> {
        PgCluster::start_with(Some(ca), false)
    }

    /// Like [`PgCluster::start`], with PostgreSQL's default durability (`fsync`,
    /// `synchronous_commit` and `full_page_writes` on), as benchmarks need; test clusters
    /// turn them off for speed.
    pub fn start_durable() -> Result<PgCluster, TestkitError> {
        PgCluster::start_with(None, true)
    }

    fn start_with(
        tls: Option<&crate::tls::TestCa>,
        durable: bool,
    ) -> Result<PgCluster, TestkitError> {
        let bin = find_bin_dir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or_else(|| TestkitError::Io {
                    what: "running as root needs the `postgres` system user".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })
                .map(Some)?
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-pg-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let password = format!("pw-{}", rand::random::<u64>());
        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            password,
            server: None,
            run_as,
            settings: Vec::new(),
        };
        cluster.init()?;
        let mut settings = if durable {
            Vec::new()
        } else {
            [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ]
            .map(String::from)
            .to_vec()
        };
        if let Some(ca) = tls {
            let (cert, key) = (
                cluster.dir.path().join("server.crt"),
                cluster.dir.path().join("server.key"),
            );
            fs::write(&cert, &ca.cert_pem).map_err(io("writing the server certificate"))?;
            fs::write(&key, &ca.key_pem).map_err(io("writing the server key"))?;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
                .map_err(io("chmod server key"))?;
            cluster.give_to_server_user(&cert)?;
            cluster.give_to_server_user(&key)?;
            settings.push("ssl=on".to_string());
            settings.push(format!("ssl_cert_file={}", cert.display()));
            settings.push(format!("ssl_key_file={}", key.display()));
        }
        cluster.launch(&settings)?;
        Ok(cluster)
    }

    /// Whether [`PgCluster::start_replica`] can work with these binaries.
    pub fn can_replicate(&self) -> bool {
        self.bin.join("pg_basebackup").exists()
    }

    /// Starts a hot standby of this cluster, streaming from it (`pg_basebackup -R`). Needs
    /// `pg_basebackup` beside `postgres` (Debian's packages have it; the npm builds do not).
    pub fn start_replica(&self) -> Result<PgCluster, TestkitError> {
        if !self.can_replicate() {
            return Err(TestkitError::Io {
                what: format!("no pg_basebackup in {}", self.bin.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-pg-replica-")
            .tempdir()
            .map_err(io("creating a temporary directory"))?;
        let mut replica = PgCluster {
            dir,
            bin: self.bin.clone(),
            port: 0,
            password: self.password.clone(),
            server: None,
            run_as: self.run_as.clone(),
            settings: Vec::new(),
        };
        let root = replica.dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io("chmod temp dir"))?;
        replica.give_to_server_user(root)?;
        let output = replica
            .command("pg_basebackup")
            .arg("-D")
            .arg(replica.data_dir())
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-R", "-X", "stream", "--no-sync", "--checkpoint=fast"])
            .env("PGPASSWORD", &self.password)
            .stdin(Stdio::null())
            .output()
            .map_err(io("running pg_basebackup"))?;
        if !output.status.success() {
            return Err(TestkitError::Tool {
                tool: "pg_basebackup",
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        replica.launch(&["hot_standby=on".to_string(), "fsync=off".to_string()])?;
        Ok(replica)
    }

    /// Starts a cluster (off the async runtime's threads) with database `appdb` owned by
    /// [`APP_ADMIN`], holding the sample table `items`.
    pub async fn start_with_appdb() -> Result<PgCluster, TestkitError> {
        PgCluster::with_appdb(PgCluster::start).await
    }

    /// [`PgCluster::start_with_appdb`] with default durability (see [`PgCluster::start_durable`]).
    pub async fn start_durable_with_appdb() -> Result<PgCluster, TestkitError> {
        PgCluster::with_appdb(PgCluster::start_durable).await
    }

    async fn with_appdb(
        start: fn() -> Result<PgCluster, TestkitError>,
    ) -> Result<PgCluster, TestkitError> {
        let cluster =
            tokio::task::spawn_blocking(start)
                .await
                .map_err(|e| TestkitError::Io {
                    what: "starting the cluster".into(),
                    source: std::io::Error::other(e),
                })??;
        cluster
            .create_app_database("appdb", APP_ADMIN, APP_ADMIN_PASSWORD)
            .await?;
        Ok(cluster)
    }

    fn give_to_server_user(&self, path: &Path) -> Result<(), TestkitError> {
        if let Some(user) = &self.run_as {
            chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(|source| {
                TestkitError::Io {
                    what: format!("chown {}", path.display()),
                    source,
                }
            })?;
        }
        Ok(())
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        if let Some(user) = &self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.env("HOME", self.dir.path());
        }
        cmd.env_remove("PGDATA");
        cmd
    }

    /// The process id of the server (the postmaster), from `postmaster.pid`.
    pub fn server_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn init(&mut self) -> Result<(), TestkitError> {
        let root = self.dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io("chmod temp dir"))?;
        self.give_to_server_user(root)?;
        let pwfile = root.join("pwfile");
        fs::write(&pwfile, &self.password).map_err(io("writing pwfile"))?;
        self.give_to_server_user(&pwfile)?;
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .map_err(io("running initdb"))?;
        let _ = fs::remove_file(&pwfile);
        if !output.status.success() {
            return Err(TestkitError::Tool {
                tool: "initdb",
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }

    fn launch(&mut self, settings: &[String]) -> Result<(), TestkitError> {
        if self.port == 0 {
            self.port = free_port()?;
        }
        self.settings = settings.to_vec();
        let log = fs::File::create(self.log_path()).map_err(io("creating the server log"))?;
        self.give_to_server_user(&self.log_path())?;
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args([
                "-c",
                "max_connections=300",
                "-c",
                "password_encryption=scram-sha-256",
            ])
            .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("server log"))?)
            .stderr(log)
            .spawn()
            .map_err(io("starting postgres"))?;
        self.server = Some(server);
        self.wait_ready()
    }

    /// Waits until the server accepts connections, as `pg_ctl` does: the status line of
    /// `postmaster.pid` reads `ready` (the npm builds carry no `pg_isready`).
    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid_file = self.data_dir().join("postmaster.pid");
        while Instant::now() < deadline {
            // `standby`: a hot standby that accepts read-only connections.
            let ready = fs::read_to_string(&pid_file).is_ok_and(|text| {
                text.lines()
                    .nth(7)
                    .is_some_and(|s| matches!(s.trim(), "ready" | "standby"))
            });
            if ready {
                return Ok(());
            }
            if let Some(Ok(Some(_))) = self.server.as_mut().map(Child::try_wait) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(TestkitError::NotReady { log: self.log() })
    }

    /// The server's log so far (for diagnosing failures).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The directory of the server binaries this cluster runs from (client tools such as
    /// `pgbench` sit beside them in Debian's packages).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// A Vault-style connection URL for `db` with `{{username}}`/`{{password}}` placeholders.
    pub fn templated_url(&self, db: &str) -> String {
        format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A URL for database `db` as the superuser, password included.
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/{db}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Whether a role named `name` exists (asked as the superuser).
    pub async fn role_exists(&self, name: &str) -> Result<bool, TestkitError> {
        let su = self.connect_superuser("postgres").await?;
        let row = su
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map_err(|source| TestkitError::Sql {
                what: format!("looking up role {name:?}"),
                source,
            })?;
        Ok(row.is_some())
    }

    /// Names of the roles matching the `LIKE` pattern `pattern` (e.g. `v-%` for the users
    /// pgwarden makes), sorted (asked as the superuser).
    pub async fn roles_like(&self, pattern: &str) -> Result<Vec<String>, TestkitError> {
        let su = self.connect_superuser("postgres").await?;
        let rows = su
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1",
                &[&pattern],
            )
            .await
            .map_err(|source| TestkitError::Sql {
                what: format!("listing roles like {pattern:?}"),
                source,
            })?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Connects as `user` with `password` to `db`; the connection task runs in the background.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Connects as the superuser to `db`.
    pub async fn connect_superuser(
        &self,
        db: &str,
    ) -> Result<tokio_postgres::Client, TestkitError> {
        self.connect_as(SUPERUSER, &self.password, db)
            .await
            .map_err(|source| TestkitError::Sql {
                what: format!("connecting to {db} as {SUPERUSER}"),
                source,
            })
    }

    /// Creates a non-superuser administrator `admin` (LOGIN CREATEROLE, may end others'
    /// sessions) owning a new database `db` that holds a sample table `public.items`;
    /// the shape pgwarden expects of a target database. Schema `public` is hardened as
    /// PostgreSQL 15 made the default (no CREATE for PUBLIC), so every major behaves alike.
    pub async fn create_app_database(
        &self,
        db: &str,
        admin: &str,
        admin_password: &str,
    ) -> Result<(), TestkitError> {
        let sql = |what: &str| {
            let what = what.to_string();
            move |source| TestkitError::Sql { what, source }
        };
        let su = self.connect_superuser("postgres").await?;
        su.batch_execute(&format!(
            "CREATE ROLE \"{admin}\" LOGIN CREATEROLE PASSWORD '{admin_password}';
             GRANT pg_signal_backend TO \"{admin}\";"
        ))
        .await
        .map_err(sql("creating the admin role"))?;
        su.batch_execute(&format!("CREATE DATABASE \"{db}\" OWNER \"{admin}\""))
            .await
            .map_err(sql("creating the database"))?;
        let su_db = self.connect_superuser(db).await?;
        su_db
            .batch_execute(&format!(
                "ALTER SCHEMA public OWNER TO \"{admin}\";
                 REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
            ))
            .await
            .map_err(sql("handing schema public to the admin"))?;
        let owner = self
            .connect_as(admin, admin_password, db)
            .await
            .map_err(sql("connecting as the admin"))?;
        owner
            .batch_execute(
                "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
                 INSERT INTO items (name) VALUES ('apple'), ('banana'), ('cherry');",
            )
            .await
            .map_err(sql("creating the sample table"))?;
        Ok(())
    }

    /// Creates the existing login `user` with `password` that a static role takes over, and
    /// lets [`APP_ADMIN`] change its password (PostgreSQL 16+ asks for ADMIN OPTION on it;
    /// earlier versions settle for CREATEROLE).
    pub async fn create_static_user(&self, user: &str, password: &str) -> Result<(), TestkitError> {
        self.connect_superuser("postgres")
            .await?
            .batch_execute(&format!(
                "CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}';
                 GRANT \"{user}\" TO \"{APP_ADMIN}\" WITH ADMIN OPTION;"
            ))
            .await
            .map_err(|source| TestkitError::Sql {
                what: format!("creating the static user {user:?}"),
                source,
            })
    }

    /// Creates in `db` the group role named after `identity`, as the database owner of a
    /// PostgREST setup does (e.g. `system:serviceaccount:team-a:app`): it may read `items`,
    /// and [`APP_ADMIN`] may grant it (ADMIN OPTION).
    pub async fn create_identity_role(&self, db: &str, identity: &str) -> Result<(), TestkitError> {
        self.connect_superuser(db)
            .await?
            .batch_execute(&format!(
                "CREATE ROLE \"{identity}\" NOLOGIN;
                 GRANT SELECT ON items TO \"{identity}\";
                 GRANT \"{identity}\" TO \"{APP_ADMIN}\" WITH ADMIN OPTION;"
            ))
            .await
            .map_err(|source| TestkitError::Sql {
                what: format!("creating the identity role {identity:?}"),
                source,
            })
    }

    /// Stops the server (as [`PgCluster::stop`]) and starts it again on the same port and
    /// data; blocks until it accepts connections.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop();
        let settings = self.settings.clone();
        self.launch(&settings)
    }

    /// Stops the server (fast shutdown, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(server.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
