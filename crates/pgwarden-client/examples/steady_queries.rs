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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "database/creds/appdb-short".into());
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let address = std::env::var("PGWARDEN_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8200".into());
    let auth = match std::env::var("PGWARDEN_TOKEN") {
        Ok(token) => Auth::Token(SecretString::from(token)),
        Err(_) => Auth::Kubernetes {
            mount: "kubernetes".into(),
            role: std::env::var("PGWARDEN_ROLE")?,
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
        },
    };
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
