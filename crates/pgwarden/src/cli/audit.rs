//! `pgwarden audit …`: read the audit log through the API (root token), or verify its hash
//! chain straight from the state store.
//!
//! Each subcommand is a variant of [`AuditCommand`] with its own arguments and an arm in
//! [`run`]; `audit verify` belongs here beside `tail`.

use crate::cli::output::{self, Format};
use crate::cli::settings::ClientArgs;
use clap::{Args, Subcommand};
use pgwarden_client::{AuditQuery, Client};
use pgwarden_core::AuditRecord;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `pgwarden audit`'s subcommand.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The audit subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print audit records, oldest first, one line each (time, actor, action, object,
    /// outcome, and the detail when there is one); needs the root token.
    Tail(TailArgs),
    /// Check the audit log's hash chain in the state store, record by record.
    ///
    /// Reads the state the server configuration names (SQLite in `data_dir`, or the shared
    /// PostgreSQL database; it may be running) and recomputes every record's hash and its link
    /// to the one before. Prints the number of records and the last hash when the chain is
    /// intact; otherwise names the first record that was altered, removed or replaced and
    /// exits 1. Records cut from the end leave no gap to find: keep the last hash printed
    /// here elsewhere, and give it to the next check with `--known-hash`.
    Verify(VerifyArgs),
}

/// `pgwarden audit verify` flags.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The server's YAML configuration (only its state settings are used).
    #[arg(long, short, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// A hash an earlier check printed as the last: the chain must still hold that record,
    /// else records were cut from its end (or it was replaced) since.
    #[arg(long, value_name = "HASH")]
    pub known_hash: Option<String>,
}

/// `pgwarden audit tail` flags.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only records at or after this time (RFC 3339, e.g. 2026-05-01T08:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    pub since: Option<OffsetDateTime>,
    /// Only records of this actor, e.g. `user:kari@example.com` or `root`.
    #[arg(long, value_name = "SUBJECT")]
    pub actor: Option<String>,
    /// Only records of this action, e.g. `creds.issue` or `request.approve`.
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Keep printing new records as they are written (checks every second, waits out
    /// pgwarden being unreachable; Ctrl-C stops).
    #[arg(long)]
    pub follow: bool,
    /// Where pgwarden is and which token to use (`verify` reads the state store instead).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Records fetched per call.
const PAGE: u32 = 500;

/// Parses an RFC 3339 time (a usage error otherwise).
fn rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-05-01T08:00:00Z"))
}

/// One record as a line of text.
fn line(record: &AuditRecord) -> String {
    let event = &record.event;
    let mut line = format!(
        "{}  {}  {}  {}  {}",
        output::instant(event.time),
        event.actor,
        event.action,
        event.object,
        event.outcome.as_str()
    );
    if !event.detail.is_empty() {
        line.push_str("  ");
        line.push_str(&event.detail);
    }
    output::printable(&line)
}

/// Prints records and returns the last one's sequence number, if any.
fn print(records: &[AuditRecord], format: Format) -> Result<Option<u64>, String> {
    for record in records {
        match format {
            Format::Json => println!("{}", output::json(record)?),
            Format::Table => println!("{}", line(record)),
        }
    }
    Ok(records.last().map(|r| r.seq))
}

/// Prints every matching record, then (with --follow) new ones as they come.
async fn tail(client: &Client, args: TailArgs, format: Format) -> Result<(), String> {
    let mut query = AuditQuery {
        since: args.since,
        actor: args.actor,
        action: args.action,
        after: None,
        limit: Some(PAGE),
    };
    let mut unreachable = false;
    loop {
        let records = match client.audit(&query).await {
            Ok(records) => {
                unreachable = false;
                records
            }
            // While following, pgwarden restarting is waited out (said once on stderr).
            Err(error) if args.follow && error.is_transient() => {
                if !unreachable {
                    eprintln!(
                        "warning: {}; retrying every second",
                        crate::cli::message(error)
                    );
                    unreachable = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(crate::cli::message(error)),
        };
        let last = print(&records, format)?;
        if let Some(seq) = last {
            query.after = Some(seq);
            // More may be waiting: ask again at once, and wait only after an empty answer.
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs an audit subcommand.
pub async fn run(args: AuditArgs) -> Result<(), String> {
    match args.command {
        AuditCommand::Tail(tail_args) => {
            let (client, format) = (tail_args.client.client()?, tail_args.client.format);
            tail(&client, tail_args, format).await
        }
        AuditCommand::Verify(verify_args) => {
            verify(&verify_args.config, verify_args.known_hash.as_deref()).await
        }
    }
}

/// Records read from the store per round trip while verifying.
const VERIFY_PAGE: usize = 1000;

/// Checks the whole chain in the state store the configuration at `path` names, and that it
/// holds the record whose hash is `known`, if given.
async fn verify(path: &std::path::Path, known: Option<&str>) -> Result<(), String> {
    use pgwarden_core::chain;
    let config = pgwarden_server::Config::load(path).map_err(|e| chain(&e))?;
    let store = pgwarden_server::open_store(&config)
        .await
        .map_err(|e| chain(&e))?;
    let key = pgwarden_server::audit_chain_key(&config).map_err(|e| chain(&e))?;
    let mut verifier = pgwarden_core::ChainVerifier::new(key);
    let mut query = pgwarden_store::AuditQuery::all(VERIFY_PAGE);
    let mut last_hash = pgwarden_core::audit::GENESIS_HASH.to_string();
    // An empty chain's check printed the genesis hash, which no record has.
    let known = known
        .map(|hash| hash.trim().to_ascii_lowercase())
        .filter(|hash| hash != pgwarden_core::audit::GENESIS_HASH);
    let mut known_found = known.is_none();
    loop {
        let records = store.audit_records(&query).await.map_err(|e| chain(&e))?;
        let Some(last) = records.last() else { break };
        query.after = last.seq;
        for record in &records {
            verifier.check(record).map_err(|broken| {
                format!("{broken} (records 1 to {} verify)", verifier.checked())
            })?;
            known_found |= known.as_deref() == Some(record.hash.as_str());
        }
        last_hash.clone_from(&last.hash);
    }
    verifier.finish().map_err(|broken| broken.to_string())?;
    if let Some(known) = known.filter(|_| !known_found) {
        return Err(format!(
            "no audit record has hash {known}: records were cut from the chain's end, or the \
             chain was replaced, since that hash was printed (records 1 to {} verify)",
            verifier.checked()
        ));
    }
    println!(
        "audit log intact: {} records, last hash {last_hash}",
        verifier.checked()
    );
    Ok(())
}
