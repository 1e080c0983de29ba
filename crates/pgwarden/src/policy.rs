//! `pgwarden policy check` and `pgwarden policy explain`: the policy file, offline.

use clap::Subcommand;
use std::path::PathBuf;

/// What to do with a policy file.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file: exit 0 when the server would accept it, else print the line and reason.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// List what a subject may get under a policy file, with the grant that allows each.
    ///
    /// A person with groups is several subjects: `--subject user:kari@example.com --subject group:dba`.
    Explain {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// `system:serviceaccount:<ns>:<sa>`, `user:<name>` or `group:<name>`; repeatable.
        #[arg(long, required = true)]
        subject: Vec<String>,
    },
}

/// Runs a policy command, printing its result.
pub fn run(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Check { file } => {
            let policy = pgwarden_server::policy::load(&file)?;
            println!(
                "{}: valid, {} grant(s)",
                file.display(),
                policy.grants.len()
            );
            Ok(())
        }
        PolicyCommand::Explain { policy, subject } => {
            let policy = pgwarden_server::policy::load(&policy)?;
            let mut any = false;
            for (index, grant) in policy.grants.iter().enumerate() {
                let Some(matched) = subject
                    .iter()
                    .find(|s| policy.grants_for(s).any(|(i, _)| i == index))
                else {
                    continue;
                };
                let cap = grant.max_ttl.map_or_else(
                    || "role's own max TTL".to_string(),
                    |t| format!("max_ttl {t}"),
                );
                for role in &grant.roles {
                    println!("{role}\tgrant {} ({matched}, {cap})", index + 1);
                    any = true;
                }
            }
            if !any {
                println!("nothing: no grant names {}", subject.join(", "));
            }
            Ok(())
        }
    }
}
