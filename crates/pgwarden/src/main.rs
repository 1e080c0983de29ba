//! The `pgwarden` binary: the broker server, the sidecar agent, the self-contained dev demo,
//! the commands for people (`login`, `creds`, `lease`, `request`, `audit`) and `rds token|plan`.

mod cli;
#[cfg(feature = "dev")]
mod dev;
mod logging;
mod operator;
mod policy;
mod rds;
mod state;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Short-lived, identity-bound PostgreSQL credentials with a Vault-compatible API.
#[derive(Parser)]
#[command(name = "pgwarden", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker for a real deployment.
    ///
    /// The root token comes from PGWARDEN_ROOT_TOKEN or the file named by `root_token_file:`.
    /// PGWARDEN_LISTEN and PGWARDEN_DATA_DIR override `listen:` and `data_dir:`;
    /// PGWARDEN_SEAL_KEY overrides `seal_key_file:`. Logs go to stderr (filter: PGWARDEN_LOG).
    Server {
        /// The YAML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Address for the API; overrides `listen:` and PGWARDEN_LISTEN.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Run a complete throwaway demo (builds with `--features dev` only).
    ///
    /// Starts a temporary PostgreSQL (from the installed server binaries) with database `appdb`
    /// and table `items`; a mount `database` with the preset roles appdb-readonly, appdb-user
    /// (1h, max 24h), appdb-admin (15m, max 4h) and appdb-short (readonly, 10s, max 30s, to
    /// watch renewal); a Kubernetes auth mount `kubernetes` that trusts a stand-in
    /// service-account issuer, with login role `demo` and a policy letting the service
    /// accounts of namespace `demo` get appdb-readonly and appdb-user; and the broker. It
    /// prints the root token, ready-to-paste curl and psql lines, a signed service-account
    /// token with the login command, and a line extracting `auth.client_token` from the login.
    ///
    /// Everything lives in a temporary directory that is deleted on Ctrl-C.
    Dev {
        /// Address for the API.
        #[arg(long, default_value = "127.0.0.1:8200", value_name = "ADDR")]
        listen: SocketAddr,
        /// Root token to use instead of a random one.
        #[arg(long, env = "PGWARDEN_DEV_ROOT_TOKEN", hide_env_values = true)]
        root_token: Option<String>,
    },
    /// Run the sidecar agent: keep credential files fresh for an application.
    ///
    /// Logs in, writes every credential file atomically (mode 0600), renews at two thirds of
    /// the lease, fetches a new credential before the max TTL, signals the application, and
    /// serves /healthz and /readyz. A lease recorded beside the files (by an earlier --once)
    /// is adopted instead of issuing a second one.
    Agent {
        /// The agent's YAML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Write the files once and exit (init-container mode).
        #[arg(long, conflicts_with = "check")]
        once: bool,
        /// Validate the configuration and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the PostgreSQL wire-protocol proxy: identity in, fresh credentials out.
    ///
    /// Clients connect with any PostgreSQL driver. In `identity` mode the startup packet's user
    /// names the pgwarden role (`appdb-readonly` or `<mount>/<role>`) and the password is a
    /// service-account token, an OIDC token or a pgwarden token (only over TLS, or on loopback
    /// or the Unix socket); in `sidecar` mode local clients need no password and the proxy acts
    /// as the pod. The proxy connects with a credential pgwarden issues for that identity,
    /// pools connections by session or by transaction, and replaces the credential before it
    /// expires without dropping sessions. SIGTERM drains: open transactions finish (up to
    /// drain_timeout), then every lease is revoked.
    Proxy {
        /// The proxy's YAML configuration.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Validate the configuration, read the certificates, keys and CAs it names, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Check what each configured connection's administrator lacks.
    ///
    /// Connects to every connection of the configuration file as its administrator and prints
    /// one line per connection: `ok`, or each missing privilege (CREATEROLE, pg_signal_backend,
    /// ownership of the database and of the schemas the preset roles cover) with the SQL that
    /// fixes it, or why it cannot connect. A superuser works but is reported as more than
    /// needed. Exits 1 when anything is missing or unreachable. The state store is not opened,
    /// and the root token and seal key files are not read.
    Check {
        /// The server's YAML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a policy file or explain what it grants, offline.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Move pgwarden's state between stores (`state migrate`).
    State {
        #[command(subcommand)]
        command: state::StateCommand,
    },
    /// Log in to pgwarden and keep its token for the other commands.
    ///
    /// Sends a service-account token (mount `kubernetes`) or a person's OIDC token (e.g. mount
    /// `jwt`) to `auth/<mount>/login`, saves pgwarden's token in ~/.pgwarden-token (or
    /// PGWARDEN_TOKEN_FILE), created with mode 0600, and prints who logged in and when the
    /// token expires. The token itself is printed only with --print.
    Login(cli::login::LoginArgs),
    /// Get a fresh PostgreSQL user for a role: print it, export it, or open psql with it.
    ///
    /// `pgwarden creds database/appdb-readonly` prints the lease and the login; --env prints
    /// shell `export PG…=` lines; --psql runs psql with it. Its lease is revoked by `pgwarden
    /// lease revoke <lease_id>` or expires on its own.
    Creds(cli::creds::CredsArgs),
    /// List, renew, revoke or look up leases.
    Lease(cli::lease::LeaseArgs),
    /// Access requests: ask for a role that needs approval, approve or deny, fetch the
    /// credential once approved, withdraw.
    Request(cli::request::RequestArgs),
    /// Read the audit log (root token).
    Audit(cli::audit::AuditArgs),
    /// AWS RDS IAM authentication (`rds token`, `rds plan`).
    Rds {
        #[command(subcommand)]
        command: rds::RdsCommand,
    },
    /// The Kubernetes operator (`operator run`) and its CRDs (`operator crds`).
    Operator {
        #[command(subcommand)]
        command: operator::OperatorCommand,
    },
}

/// A start-up failure as one line; a busy address names the way to pick another.
pub(crate) fn start_error(error: pgwarden_server::StartError) -> String {
    let busy = matches!(&error, pgwarden_server::StartError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::AddrInUse);
    let mut message = pgwarden_core::chain(&error);
    if busy {
        message.push_str("; pick another address with --listen");
    }
    message
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn server(config: PathBuf, listen: Option<SocketAddr>) -> Result<(), String> {
    let mut config = pgwarden_server::Config::load(&config).map_err(|e| e.to_string())?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    let running = pgwarden_server::start(config).await.map_err(start_error)?;
    stop_signal().await;
    tracing::info!("shutting down");
    running
        .shutdown()
        .await
        .map_err(|e| format!("shutting down: {e}"))
}

async fn check(config: PathBuf) -> Result<(), String> {
    // Neither the root token nor the seal key is needed to check the administrators.
    let config = pgwarden_server::Config::read(&config).map_err(|e| e.to_string())?;
    let reports = pgwarden_server::checks::check_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = 0usize;
    for report in &reports {
        match &report.outcome {
            Ok(findings) if findings.is_empty() => println!("{}: ok", report.connection),
            Ok(findings) => {
                for finding in findings {
                    println!("{}: {finding}", report.connection);
                    if finding.severity == pgwarden_server::checks::Severity::Missing {
                        failed = failed.saturating_add(1);
                    }
                }
            }
            Err(error) => {
                println!("{}: cannot check: {error}", report.connection);
                failed = failed.saturating_add(1);
            }
        }
    }
    for line in pgwarden_server::checks::unallowed_roles(&config) {
        println!("{line}");
        failed = failed.saturating_add(1);
    }
    if failed > 0 {
        return Err(format!("{failed} problem(s) found"));
    }
    Ok(())
}

async fn agent(config: PathBuf, once: bool, check: bool) -> Result<(), String> {
    let loaded = pgwarden_agent::AgentConfig::load(&config)?;
    if check {
        println!(
            "{}: valid, {} credential(s)",
            config.display(),
            loaded.deliveries.len()
        );
        return Ok(());
    }
    let mode = if once {
        pgwarden_agent::Mode::Once
    } else {
        pgwarden_agent::Mode::Sidecar
    };
    pgwarden_agent::run(loaded, mode, stop_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn proxy(config: PathBuf, check: bool) -> Result<(), String> {
    let loaded = pgwarden_proxy::ProxyConfig::load(&config).map_err(|e| e.to_string())?;
    if check {
        pgwarden_proxy::check_files(&loaded)?;
        println!("{}: valid", config.display());
        return Ok(());
    }
    let running = pgwarden_proxy::start(loaded).await?;
    if let Some(addr) = running.addr {
        tracing::info!(%addr, metrics = %running.metrics_addr, "proxy listening");
    }
    stop_signal().await;
    tracing::info!("draining");
    running.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands speak for themselves: only warnings are logged unless asked for.
    let client_command = matches!(
        cli.command,
        Command::Login(_)
            | Command::Creds(_)
            | Command::Lease(_)
            | Command::Request(_)
            | Command::Audit(_)
            | Command::Rds { .. }
            | Command::Operator {
                command: operator::OperatorCommand::Crds
            }
    );
    logging::init(if client_command {
        "warn"
    } else {
        "info,tokio_postgres=warn"
    });
    let result = match cli.command {
        Command::Server { config, listen } => server(config, listen).await,
        #[cfg(feature = "dev")]
        Command::Dev { listen, root_token } => dev::run(listen, root_token).await,
        #[cfg(not(feature = "dev"))]
        Command::Dev { .. } => Err(
            "this pgwarden was built without the dev demo (it links test \
             code); build it with `cargo build --release --features dev`"
                .into(),
        ),
        Command::Check { config } => check(config).await,
        Command::Policy { command } => policy::run(command),
        Command::State { command } => state::run(command).await,
        Command::Agent {
            config,
            once,
            check,
        } => agent(config, once, check).await,
        Command::Proxy { config, check } => proxy(config, check).await,
        Command::Login(args) => cli::login::run(args).await,
        Command::Creds(args) => cli::creds::run(args).await,
        Command::Lease(args) => cli::lease::run(args).await,
        Command::Request(args) => cli::request::run(args).await,
        Command::Audit(args) => cli::audit::run(args).await,
        Command::Rds { command } => rds::run(command).await,
        Command::Operator { command } => operator::run(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
