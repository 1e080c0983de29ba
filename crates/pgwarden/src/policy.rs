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
        /// The policy file…
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        policy: Option<PathBuf>,
        /// …or the server configuration whose `policy_file` to read.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `system:serviceaccount:<ns>:<sa>`, `user:<name>` or `group:<name>`; repeatable.
        #[arg(long, required = true)]
        subject: Vec<String>,
    },
}

/// The `policy_file` named by the server configuration at `config`.
fn policy_file_of(config: &std::path::Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    pgwarden_server::Config::parse(&text)
        .map_err(|e| format!("config file {}: {e}", config.display()))?
        .policy_file
        .ok_or_else(|| format!("{} sets no policy_file", config.display()))
}

/// Runs a policy command, printing its result.
pub fn run(command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Check { file } => {
            let policy = pgwarden_server::policy::load(&file).map_err(|e| e.to_string())?;
            println!(
                "{}: valid, {} grant(s)",
                file.display(),
                policy.grants.len()
            );
            Ok(())
        }
        PolicyCommand::Explain {
            policy,
            config,
            subject,
        } => {
            let file = match (policy, config) {
                (Some(file), _) => file,
                (None, config) => policy_file_of(&config.ok_or("give --policy or --config")?)?,
            };
            explain(
                &pgwarden_server::policy::load(&file).map_err(|e| e.to_string())?,
                &subject,
            );
            Ok(())
        }
    }
}

/// Prints every role the subjects may get, with the grant that allows it.
fn explain(policy: &pgwarden_core::Policy, subjects: &[String]) {
    let mut any = false;
    for (index, grant) in policy.grants.iter().enumerate() {
        let Some(matched) = subjects
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
        println!("nothing: no grant names {}", subjects.join(", "));
    }
}
