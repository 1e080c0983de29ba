//! `pgwarden rds token`: the RDS IAM auth token (a 15-minute password for a user granted
//! `rds_iam`), as `aws rds generate-db-auth-token` prints it, from pgwarden's own AWS
//! credential chain (environment, web identity, shared-file profiles) — no AWS CLI or SDK.
//!
//! `pgwarden rds plan`: the IRSA + RDS IAM setup for one service account and database user (IAM
//! trust and permissions policies, the annotated ServiceAccount, the SQL), from
//! [`pgwarden_aws::plan`]; it needs no credentials and talks to nothing.

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
    /// Print the setup that lets a Kubernetes service account log in to RDS as a database user
    /// with IAM: the IAM role's trust policy and permissions policy, the ServiceAccount with
    /// its role annotation, and the SQL an administrator runs (CREATE ROLE … LOGIN, GRANT
    /// rds_iam, the preset's grants). Talks to nothing and needs no credentials.
    Plan(PlanArgs),
}

/// The flags of `rds plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The Kubernetes service account, as <namespace>/<name>.
    #[arg(long, value_name = "NS/NAME")]
    service_account: String,
    /// The PostgreSQL user it logs in as (at most 63 bytes).
    #[arg(long, value_name = "USER")]
    db_user: String,
    /// The RDS resource id: cluster-XXXX for an Aurora cluster, db-XXXX for an instance.
    #[arg(long, value_name = "ID")]
    cluster_resource_id: String,
    /// The 12-digit AWS account id.
    #[arg(long)]
    account: String,
    /// The database's AWS region (cn-* and us-gov-* select their partitions).
    #[arg(long)]
    region: String,
    /// The EKS cluster's OIDC issuer without https://, e.g.
    /// oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE.
    #[arg(long, value_name = "HOST/PATH")]
    oidc_provider: String,
    /// The privileges the user gets.
    #[arg(long, value_enum, default_value = "readonly")]
    preset: PlanPreset,
    /// The schemas the grants cover, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "public")]
    schemas: Vec<String>,
    /// The IAM role's name; default pgwarden-<namespace>-<name> (shortened with a hash past
    /// IAM's 64 characters).
    #[arg(long)]
    role_name: Option<String>,
    /// Also grant the preset's database privileges (CONNECT, TEMPORARY) on this database.
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// Output: four titled sections, or one JSON object.
    #[arg(long, value_enum, default_value = "text")]
    format: PlanFormat,
}

/// `--preset` of `rds plan`.
#[derive(clap::ValueEnum, Clone, Copy)]
enum PlanPreset {
    /// USAGE on the schemas, SELECT on tables and sequences, now and later.
    Readonly,
    /// Readonly plus INSERT, UPDATE, DELETE, sequence USAGE/UPDATE and EXECUTE.
    User,
    /// Everything on the schemas' objects plus CREATE on the schemas.
    Admin,
}

/// `--format` of `rds plan`.
#[derive(clap::ValueEnum, Clone, Copy)]
enum PlanFormat {
    /// Four titled sections.
    Text,
    /// One object: trust_policy, permissions_policy, service_account_yaml, sql, role_arn.
    Json,
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
        RdsCommand::Plan(args) => plan(args),
    }
}

fn plan(args: PlanArgs) -> Result<(), String> {
    let input = pgwarden_aws::PlanInput {
        service_account: args.service_account,
        db_user: args.db_user,
        resource_id: args.cluster_resource_id,
        account: args.account,
        region: args.region,
        oidc_provider: args.oidc_provider,
        preset: match args.preset {
            PlanPreset::Readonly => pgwarden_core::Preset::Readonly,
            PlanPreset::User => pgwarden_core::Preset::User,
            PlanPreset::Admin => pgwarden_core::Preset::Admin,
        },
        schemas: args.schemas,
        role_name: args.role_name,
        database: args.database,
    };
    let plan = pgwarden_aws::plan(&input).map_err(|e| e.to_string())?;
    match args.format {
        PlanFormat::Json => {
            let object = serde_json::json!({
                "trust_policy": plan.trust_policy,
                "permissions_policy": plan.permissions_policy,
                "service_account_yaml": plan.service_account_yaml,
                "sql": plan.sql,
                "role_arn": plan.role_arn,
            });
            println!("{}", pretty(&object)?);
        }
        PlanFormat::Text => {
            print!(
                "# 1. IAM role {name}: trust policy\n\
                 #    aws iam create-role --role-name {name} --assume-role-policy-document file://trust.json\n\
                 {trust}\n\n\
                 # 2. IAM role {name}: permissions policy\n\
                 #    aws iam put-role-policy --role-name {name} --policy-name rds-connect --policy-document file://connect.json\n\
                 {permissions}\n\n\
                 # 3. Kubernetes ServiceAccount (kubectl apply -f -)\n\
                 {yaml}\n\
                 # 4. SQL, run by the database's administrator (RDS makes the role rds_iam)\n\
                 {sql}",
                name = plan.role_name,
                trust = pretty(&plan.trust_policy)?,
                permissions = pretty(&plan.permissions_policy)?,
                yaml = plan.service_account_yaml,
                sql = plan.sql,
            );
        }
    }
    Ok(())
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

/// `value` as indented JSON.
fn pretty(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| format!("cannot write JSON: {e}"))
}

/// An RFC 3339 time for `--signing-time`.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-25T12:00:00Z: {e}"))
}
