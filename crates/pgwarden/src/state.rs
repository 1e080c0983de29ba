//! `pgwarden state`: moving pgwarden's state between stores.

use clap::Subcommand;
use pgwarden_store::{SqliteStore, copy_state};
use std::path::{Path, PathBuf};

/// What to do with the state.
#[derive(Subcommand)]
pub enum StateCommand {
    /// Copy a SQLite state into an empty PostgreSQL state database, to grow from one process
    /// to several replicas.
    ///
    /// Copies every lease (in whatever state), login token (hashes only), the roles and
    /// connections written through the API (connection passwords stay sealed with the same
    /// seal key, which the replicas need), every access request and the whole audit chain
    /// (records unchanged, so it still verifies). Stop the single server first, so that nothing
    /// changes during the copy; then point the replicas' `state.postgresql.url` at the
    /// destination. Refuses a destination that already holds state.
    Migrate {
        /// The SQLite state: its `state.db`, or the data directory holding it.
        #[arg(long, value_name = "PATH")]
        from: PathBuf,
        /// The PostgreSQL state database's libpq URL (TLS options as for connections); its
        /// password may be `{{password}}`.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Environment variable holding the destination's password.
        #[arg(long, value_name = "VAR")]
        to_password_env: Option<String>,
    },
}

/// Runs a `state` command.
pub async fn run(command: StateCommand) -> Result<(), String> {
    match command {
        StateCommand::Migrate {
            from,
            to,
            to_password_env,
        } => migrate(&from, to, to_password_env).await,
    }
}

/// The data directory of a SQLite state given as the file or the directory; it must exist.
fn data_dir(from: &Path) -> Result<PathBuf, String> {
    let dir = if from.is_dir() {
        from.to_path_buf()
    } else {
        from.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let file = dir.join("state.db");
    if !file.is_file() || (!from.is_dir() && from.file_name() != file.file_name()) {
        return Err(format!(
            "--from {}: no SQLite state there (expected a state.db file or a directory holding one)",
            from.display()
        ));
    }
    Ok(dir)
}

async fn migrate(from: &Path, to: String, to_password_env: Option<String>) -> Result<(), String> {
    let source = SqliteStore::open(&data_dir(from)?).map_err(|e| pgwarden_core::chain(&e))?;
    let destination =
        pgwarden_server::open_shared_state(&pgwarden_server::config::PostgresStateConfig {
            url: to,
            password_env: to_password_env,
        })
        .await
        .map_err(|e| pgwarden_core::chain(&e))?;
    let copied = copy_state(&source, &destination)
        .await
        .map_err(|e| pgwarden_core::chain(&e))?;
    println!(
        "copied {} leases, {} tokens, {} roles, {} connections, {} static roles, {} access requests and {} audit records",
        copied.leases,
        copied.tokens,
        copied.roles,
        copied.connections,
        copied.static_roles,
        copied.requests,
        copied.audit_records
    );
    Ok(())
}
