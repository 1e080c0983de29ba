//! `pgwarden login`: log in with a service-account or OIDC token and keep pgwarden's token
//! in the token file for the other commands.

use crate::cli::output::{self, Format};
use crate::cli::settings::{self, ClientArgs};
use clap::{ArgGroup, Args};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use std::io::Read;
use std::path::PathBuf;

/// `pgwarden login` flags.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("jwt").required(true).args(["jwt_file", "jwt_stdin"])))]
pub struct LoginArgs {
    /// The auth mount: `kubernetes` for service-account tokens, or the OIDC/JWT mount (often
    /// `jwt`) for people.
    #[arg(long, default_value = "kubernetes", value_name = "MOUNT")]
    pub mount: String,
    /// The login role configured on that mount.
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// Read the token to log in with from this file (e.g. a projected service-account token).
    #[arg(long, value_name = "FILE")]
    pub jwt_file: Option<PathBuf>,
    /// Read the token to log in with from standard input.
    #[arg(long)]
    pub jwt_stdin: bool,
    /// Also print pgwarden's token on standard output (the summary then goes to standard
    /// error), e.g. for `export PGWARDEN_TOKEN=$(pgwarden login … --print)`.
    #[arg(long)]
    pub print: bool,
    /// Where pgwarden's address is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `login --format json` prints.
#[derive(Serialize)]
struct LoginOutput<'a> {
    /// The subject logged in.
    entity_id: &'a str,
    /// The token's public handle (for `auth/token/revoke-accessor`).
    accessor: &'a str,
    /// The login role.
    role: &'a str,
    /// The auth mount.
    mount: &'a str,
    /// Seconds the token lasts.
    lease_duration: u64,
    /// When it expires (RFC 3339).
    expire_time: String,
    /// Where it was saved.
    token_file: String,
    /// The token itself, only with `--print`.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// Reads the login token from the file or standard input.
fn read_jwt(args: &LoginArgs) -> Result<SecretString, String> {
    let text = match &args.jwt_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
            text
        }
    };
    let jwt = text.trim();
    if jwt.is_empty() {
        return Err("the token to log in with is empty".into());
    }
    Ok(SecretString::from(jwt))
}

/// Logs in, saves the token (mode 0600) and says who logged in until when.
pub async fn run(args: LoginArgs) -> Result<(), String> {
    let jwt = read_jwt(&args)?;
    let path = settings::token_file()?;
    let auth = args
        .client
        .anonymous_client()?
        .login_as(&args.mount, &args.role, jwt)
        .await
        .map_err(crate::cli::message)?;
    let token = auth
        .client_token
        .as_ref()
        .ok_or("pgwarden's login answer holds no token")?;
    settings::save_token(&path, token)?;
    let expires = time::OffsetDateTime::now_utc()
        .checked_add(time::Duration::seconds(
            i64::try_from(auth.lease_duration).unwrap_or(i64::MAX),
        ))
        .map(output::instant)
        .unwrap_or_else(|| "never".into());
    let printed = args.print.then(|| token.expose_secret());
    match args.client.format {
        Format::Json => println!(
            "{}",
            output::json(&LoginOutput {
                entity_id: &auth.entity_id,
                accessor: &auth.accessor,
                role: &args.role,
                mount: &args.mount,
                lease_duration: auth.lease_duration,
                expire_time: expires,
                token_file: path.display().to_string(),
                client_token: printed,
            })?
        ),
        Format::Table => {
            let summary = format!(
                "logged in as {} (auth/{} role {}); the token expires {} (in {}) and is saved in {}",
                auth.entity_id,
                args.mount,
                args.role,
                expires,
                output::duration(auth.lease_duration),
                path.display()
            );
            match printed {
                Some(token) => {
                    eprintln!("{summary}");
                    println!("{token}");
                }
                None => println!("{summary}"),
            }
        }
    }
    Ok(())
}
