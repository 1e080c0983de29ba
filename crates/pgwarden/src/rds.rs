//! `pgwarden rds token`: the RDS IAM auth token (a 15-minute password for a user granted
//! `rds_iam`), as `aws rds generate-db-auth-token` prints it, from pgwarden's own AWS
//! credential chain (environment, web identity, shared-file profiles) — no AWS CLI or SDK.

use clap::{Args, Subcommand};
use std::time::SystemTime;

/// The `rds` subcommands.
#[derive(Subcommand)]
pub enum RdsCommand {
    /// Print an RDS IAM auth token, the password for `psql` or any libpq program.
    ///
    /// Same flags and output as `aws rds generate-db-auth-token`, byte for byte. Credentials
    /// come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN], else
    /// AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (EKS IRSA) through STS, else the profile
    /// (--profile, AWS_PROFILE or `default`) of ~/.aws/credentials and ~/.aws/config. The token
    /// is valid for 15 minutes.
    Token(TokenArgs),
}

/// The flags of `rds token`.
#[derive(Args)]
pub struct TokenArgs {
    /// The database endpoint's host name (the instance, cluster or proxy endpoint).
    #[arg(long, value_name = "HOST")]
    hostname: String,
    /// The database port.
    #[arg(long)]
    port: u16,
    /// The database user to log in as (granted `rds_iam`).
    #[arg(long, value_name = "USER")]
    username: String,
    /// The database's AWS region; default AWS_REGION, AWS_DEFAULT_REGION, then the profile's
    /// `region`.
    #[arg(long)]
    region: Option<String>,
    /// The profile of the shared AWS files; wins over AWS_PROFILE and ignores
    /// AWS_ACCESS_KEY_ID, as in the AWS CLI.
    #[arg(long)]
    profile: Option<String>,
    /// Sign as of this time (RFC 3339, e.g. 2026-11-25T12:00:00Z) instead of now, for
    /// reproducible output.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    signing_time: Option<SystemTime>,
}

/// Runs an `rds` subcommand; the error is the one line `main` prints.
pub async fn run(command: RdsCommand) -> Result<(), String> {
    match command {
        RdsCommand::Token(args) => token(args).await,
    }
}

async fn token(args: TokenArgs) -> Result<(), String> {
    let mut chain = pgwarden_aws::CredentialChain::new(pgwarden_aws::Env::process());
    if let Some(profile) = args.profile {
        chain = chain.with_profile(profile);
    }
    let region = match args.region {
        Some(region) => region,
        None => chain
            .region()
            .map_err(|e| pgwarden_core::chain(&e))?
            .ok_or("no AWS region: pass --region, or set AWS_REGION or the profile's `region`")?,
    };
    let credentials = chain
        .credentials()
        .await
        .map_err(|e| pgwarden_core::chain(&e))?;
    let token = pgwarden_aws::rds_auth_token(
        &args.hostname,
        args.port,
        &args.username,
        &region,
        &credentials,
        args.signing_time.unwrap_or_else(SystemTime::now),
    )
    .map_err(|e| pgwarden_core::chain(&e))?;
    println!("{token}");
    Ok(())
}

/// An RFC 3339 time for `--signing-time`.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-25T12:00:00Z: {e}"))
}
