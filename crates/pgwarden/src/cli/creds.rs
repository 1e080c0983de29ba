//! `pgwarden creds <mount>/<role>`: issue a credential and print it, print it as shell
//! variables, or open psql with it. `request creds` shares the delivery.

use crate::cli::output::{self, Format};
use crate::cli::settings::ClientArgs;
use clap::Args;
use pgwarden_core::wire::{DbCredential, SecretResponse};
use secrecy::ExposeSecret;
use serde::Serialize;

/// `pgwarden creds` flags.
#[derive(Args, Debug)]
pub struct CredsArgs {
    /// The role as `<mount>/<role>`, e.g. `database/appdb-readonly`.
    #[arg(value_name = "MOUNT/ROLE", value_parser = mount_role)]
    pub role: String,
    /// How to hand the credential over.
    #[command(flatten)]
    pub delivery: Delivery,
    /// Where pgwarden is and which token to use.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How a credential is handed over: printed (table or JSON), as shell variables, or to psql.
#[derive(Args, Debug, Clone)]
pub struct Delivery {
    /// Print `export PGHOST=… PGPORT=… PGDATABASE=… PGUSER=… PGPASSWORD=…` lines
    /// (shell-quoted), for `eval "$(pgwarden creds … --env)"`.
    #[arg(long, conflicts_with = "psql")]
    pub env: bool,
    /// Run psql with the credential (the password is passed in PGPASSWORD, never on the
    /// command line); arguments after `--` go to psql. The lease lives on until it expires or
    /// is revoked.
    #[arg(long)]
    pub psql: bool,
    /// Arguments for psql (after `--`; only with --psql).
    #[arg(last = true, requires = "psql", value_name = "PSQL_ARGS")]
    pub psql_args: Vec<String>,
}

/// Checks a `<mount>/<role>` argument (a usage error otherwise).
pub fn mount_role(text: &str) -> Result<String, String> {
    match text.trim_matches('/').rsplit_once('/') {
        Some((mount, role)) if !mount.is_empty() && !role.is_empty() => Ok(text.to_string()),
        _ => Err("expected <mount>/<role>, e.g. database/appdb-readonly".into()),
    }
}

/// What `creds --format json` prints: the credential (the answer's `data`) with its lease.
#[derive(Serialize)]
struct CredsOutput<'a> {
    /// The lease to renew or revoke.
    lease_id: &'a str,
    /// Seconds it lasts.
    lease_duration: u64,
    /// Whether it can be renewed.
    renewable: bool,
    /// The credential's fields, as the API sends them.
    #[serde(flatten)]
    data: &'a DbCredential,
}

/// The PG* environment of a credential: several hosts become libpq's comma lists.
pub fn pg_env(credential: &DbCredential) -> Vec<(&'static str, String)> {
    let (hosts, ports): (Vec<String>, Vec<String>) = if credential.hosts.is_empty() {
        (
            vec![credential.host.clone()],
            vec![credential.port.to_string()],
        )
    } else {
        credential
            .hosts
            .iter()
            .map(|hp| match hp.rsplit_once(':') {
                Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.to_string()),
                None => (hp.clone(), credential.port.to_string()),
            })
            .unzip()
    };
    vec![
        ("PGHOST", hosts.join(",")),
        ("PGPORT", ports.join(",")),
        ("PGDATABASE", credential.database.clone()),
        ("PGUSER", credential.username.clone()),
        (
            "PGPASSWORD",
            credential.password.expose_secret().to_string(),
        ),
    ]
}

/// Hands `answer` over as `delivery` and `format` say. With --psql this does not return
/// unless psql cannot be started.
pub fn deliver(
    answer: &SecretResponse<DbCredential>,
    delivery: &Delivery,
    format: Format,
) -> Result<(), String> {
    let credential = &answer.data;
    if delivery.psql {
        use std::os::unix::process::CommandExt;
        // psql gets the credential and nothing that could redirect it (PGHOSTADDR overrides
        // the host, a service file could name another) or leak pgwarden's token to its `\!`.
        let error = std::process::Command::new("psql")
            .args(&delivery.psql_args)
            .env_remove("PGHOSTADDR")
            .env_remove("PGSERVICE")
            .env_remove("PGSERVICEFILE")
            .env_remove("PGWARDEN_TOKEN")
            .env_remove("VAULT_TOKEN")
            .envs(pg_env(credential))
            .exec();
        return Err(format!(
            "cannot run psql: {error} (is PostgreSQL's client installed and on PATH?)"
        ));
    }
    for warning in answer.warnings.iter().flatten() {
        eprintln!("warning: {warning}");
    }
    if delivery.env {
        println!(
            "# lease {} for {}",
            answer.lease_id,
            output::duration(answer.lease_duration)
        );
        for (name, value) in pg_env(credential) {
            println!("export {name}={}", output::shell_quote(&value));
        }
        return Ok(());
    }
    match format {
        Format::Json => println!(
            "{}",
            output::json(&CredsOutput {
                lease_id: &answer.lease_id,
                lease_duration: answer.lease_duration,
                renewable: answer.renewable,
                data: credential,
            })?
        ),
        Format::Table => {
            let mut rows = vec![
                ("lease_id", answer.lease_id.clone()),
                ("lease_duration", output::duration(answer.lease_duration)),
                ("renewable", answer.renewable.to_string()),
                ("username", credential.username.clone()),
                ("password", credential.password.expose_secret().to_string()),
                ("host", credential.host.clone()),
                ("port", credential.port.to_string()),
                ("database", credential.database.clone()),
            ];
            if !credential.hosts.is_empty() {
                rows.push(("hosts", credential.hosts.join(",")));
            }
            print!("{}", output::pairs(&rows));
        }
    }
    Ok(())
}

/// Issues a credential for the role and hands it over.
pub async fn run(args: CredsArgs) -> Result<(), String> {
    let client = args.client.client()?;
    let answer = client
        .issue(&args.role)
        .await
        .map_err(crate::cli::message)?;
    deliver(&answer, &args.delivery, args.client.format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn several_hosts_become_libpq_lists() {
        let credential = DbCredential {
            username: "u".into(),
            password: SecretString::from("p"),
            host: "a".into(),
            port: 5432,
            database: "db".into(),
            hosts: vec!["a:5432".into(), "[::1]:5433".into()],
        };
        let env = pg_env(&credential);
        assert_eq!(env[0], ("PGHOST", "a,::1".to_string()));
        assert_eq!(env[1], ("PGPORT", "5432,5433".to_string()));
    }
}
