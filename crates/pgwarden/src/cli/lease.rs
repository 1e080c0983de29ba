//! `pgwarden lease list|renew|revoke|lookup`: the leases behind credentials.

use crate::cli::output::{self, Format};
use crate::cli::settings::ClientArgs;
use clap::{Args, Subcommand};
use pgwarden_core::Ttl;
use pgwarden_core::wire::KeyList;
use serde::Serialize;

/// `pgwarden lease` flags and subcommand.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LeaseCommand,
    /// Where pgwarden is and which token to use.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The lease subcommands.
#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// List the ids of every lease under a prefix (root token only).
    List {
        /// Only leases under this prefix, e.g. `database/creds/appdb-user`; all when absent.
        #[arg(value_name = "PREFIX", default_value = "", hide_default_value = true)]
        prefix: String,
    },
    /// Extend a lease, never past its role's max TTL (a warning says when that cut it short).
    Renew {
        /// The lease id, as `creds` printed it.
        #[arg(value_name = "LEASE_ID")]
        id: String,
        /// How long from now, e.g. `30m` or `1h` (seconds without a unit); the role's default
        /// TTL when absent.
        #[arg(long, value_name = "TTL")]
        increment: Option<Ttl>,
    },
    /// Drop a lease's database user now, ending its sessions.
    Revoke {
        /// The lease id.
        #[arg(value_name = "LEASE_ID")]
        id: String,
    },
    /// Show what pgwarden knows of a lease: times, state, failed revocations.
    Lookup {
        /// The lease id.
        #[arg(value_name = "LEASE_ID")]
        id: String,
    },
}

/// What `lease renew --format json` prints.
#[derive(Serialize)]
struct Renewed<'a> {
    /// The lease.
    lease_id: &'a str,
    /// Seconds now left.
    lease_duration: u64,
    /// Whether it can be renewed again.
    renewable: bool,
    /// Why it got less than asked, if it did.
    warnings: &'a [String],
}

/// Runs a lease subcommand.
pub async fn run(args: LeaseArgs) -> Result<(), String> {
    let client = args.client.client()?;
    let format = args.client.format;
    match args.command {
        LeaseCommand::List { prefix } => {
            let keys = client
                .list_leases_recursive(&prefix)
                .await
                .map_err(crate::cli::message)?;
            match format {
                Format::Json => println!("{}", output::json(&KeyList { keys })?),
                Format::Table => {
                    for key in keys {
                        println!("{key}");
                    }
                }
            }
        }
        LeaseCommand::Renew { id, increment } => {
            let answer = client
                .renew_lease(&id, increment)
                .await
                .map_err(crate::cli::message)?;
            let warnings = answer.warnings.unwrap_or_default();
            match format {
                Format::Json => println!(
                    "{}",
                    output::json(&Renewed {
                        lease_id: &answer.lease_id,
                        lease_duration: answer.lease_duration,
                        renewable: answer.renewable,
                        warnings: &warnings,
                    })?
                ),
                Format::Table => {
                    for warning in &warnings {
                        eprintln!("warning: {warning}");
                    }
                    println!(
                        "renewed {}: {} left",
                        answer.lease_id,
                        output::duration(answer.lease_duration)
                    );
                }
            }
        }
        LeaseCommand::Revoke { id } => {
            client.revoke(&id).await.map_err(crate::cli::message)?;
            if format == Format::Table {
                println!("revoked {id}");
            }
        }
        LeaseCommand::Lookup { id } => {
            let lease = client
                .lease_lookup(&id)
                .await
                .map_err(crate::cli::message)?;
            match format {
                Format::Json => println!("{}", output::json(&lease)?),
                Format::Table => {
                    let mut rows = vec![
                        ("id", lease.id.clone()),
                        ("state", lease.state.clone()),
                        ("issue_time", lease.issue_time.clone()),
                        ("expire_time", lease.expire_time.clone()),
                        (
                            "last_renewal",
                            lease.last_renewal.clone().unwrap_or_else(|| "-".into()),
                        ),
                        ("ttl", output::duration(lease.ttl)),
                        ("renewable", lease.renewable.to_string()),
                    ];
                    if let Some(reason) = &lease.revocation_reason {
                        rows.push(("revocation_reason", reason.clone()));
                    }
                    if lease.revocation_attempts > 0 {
                        rows.push(("revocation_attempts", lease.revocation_attempts.to_string()));
                    }
                    if let Some(error) = &lease.last_error {
                        rows.push(("last_error", error.clone()));
                    }
                    print!("{}", output::pairs(&rows));
                }
            }
        }
    }
    Ok(())
}
