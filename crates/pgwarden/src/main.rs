//! The `pgwarden` binary: the broker server and the self-contained dev demo.

mod dev;
mod policy;

use clap::{Parser, Subcommand};
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
    },
    /// Run a complete throwaway demo: a temporary PostgreSQL with database `appdb`, a mount
    /// `database` with roles appdb-readonly, appdb-user and appdb-admin, and the broker.
    ///
    /// Everything lives in a temporary directory that is deleted on Ctrl-C.
    Dev {
        /// Address for the API.
        #[arg(long, default_value = "127.0.0.1:8200")]
        listen: std::net::SocketAddr,
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
    /// Check a policy file or explain what it grants, offline.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn server(config: PathBuf) -> Result<(), String> {
    let config = pgwarden_server::Config::load(&config).map_err(|e| e.to_string())?;
    let running = pgwarden_server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    stop_signal().await;
    tracing::info!("shutting down");
    running
        .shutdown()
        .await
        .map_err(|e| format!("shutting down: {e}"))
}

async fn agent(config: PathBuf, once: bool, check: bool) -> Result<(), String> {
    let loaded = pgwarden_agent::AgentConfig::load(&config)?;
    if check {
        println!(
            "{}: valid, {} credential(s)",
            config.display(),
            loaded.credentials.len()
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Server { config } => server(config).await,
        Command::Dev { listen, root_token } => dev::run(listen, root_token).await,
        Command::Policy { command } => policy::run(command),
        Command::Agent {
            config,
            once,
            check,
        } => agent(config, once, check).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
