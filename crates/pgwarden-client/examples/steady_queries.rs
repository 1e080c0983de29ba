//! Runs a query every second through the auto-renewing pool, for longer than the credential's
//! max TTL, and stops at the first failure (there should be none).
//!
//! ```sh
//! cargo run --release -- dev            # in another terminal; note PGWARDEN_ADDR and PGWARDEN_TOKEN
//! PGWARDEN_ADDR=http://127.0.0.1:8200 PGWARDEN_TOKEN=… \
//!   cargo run -p pgwarden-client --example steady_queries -- database/creds/appdb-short 45
//! ```

use pgwarden_client::{Auth, Client, CredentialProvider, ProviderOptions, pool};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to log in, from the environment `var`: a token from `PGWARDEN_TOKEN`, or a Kubernetes
/// login role from `PGWARDEN_ROLE` (inside a pod); a message naming both when neither is set.
fn auth_from_env(var: impl Fn(&str) -> Option<String>) -> Result<Auth, String> {
    if let Some(token) = var("PGWARDEN_TOKEN") {
        return Ok(Auth::Token(SecretString::from(token)));
    }
    match var("PGWARDEN_ROLE") {
        Some(role) => Ok(Auth::Kubernetes {
            mount: "kubernetes".into(),
            role,
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
        }),
        None => Err(
            "neither PGWARDEN_TOKEN nor PGWARDEN_ROLE is set: export PGWARDEN_TOKEN \
             (and PGWARDEN_ADDR, default http://127.0.0.1:8200) as `pgwarden dev` prints them, \
             or PGWARDEN_ROLE to log in with this pod's service-account token"
                .into(),
        ),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "database/creds/appdb-short".into());
    let seconds: u64 = match args.next() {
        Some(text) => text
            .parse()
            .map_err(|_| format!("the second argument is a number of seconds, not {text:?}"))?,
        None => 60,
    };
    let address = std::env::var("PGWARDEN_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8200".into());
    let auth = auth_from_env(|name| std::env::var(name).ok())?;
    let client = Arc::new(Client::new(&address, auth));
    let options = ProviderOptions {
        grace: Duration::from_secs(5),
        ..ProviderOptions::default()
    };
    let provider = Arc::new(CredentialProvider::start(client, &path, options).await?);
    let pool = pool(provider.clone(), tokio_postgres::Config::new(), 4)?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let conn = pool.get().await?;
        let row = conn
            .query_one("SELECT session_user::text, now()::text", &[])
            .await?;
        println!(
            "{:>4}s  {}  {}",
            start.elapsed().as_secs(),
            row.get::<_, String>(0),
            row.get::<_, String>(1)
        );
        drop(conn);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(pool);
    Arc::try_unwrap(provider)
        .map_err(|_| "provider still shared")?
        .stop(true)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::auth_from_env;

    #[test]
    fn names_the_variables_to_set() {
        let err = auth_from_env(|_| None).err().unwrap();
        assert!(
            err.starts_with("neither PGWARDEN_TOKEN nor PGWARDEN_ROLE is set"),
            "{err}"
        );
        assert!(auth_from_env(|name| (name == "PGWARDEN_TOKEN").then(|| "t".into())).is_ok());
        assert!(auth_from_env(|name| (name == "PGWARDEN_ROLE").then(|| "r".into())).is_ok());
    }
}
