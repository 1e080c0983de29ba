//! The agent's life: log in, fetch or adopt each credential (or sign each RDS token), write its
//! files, then (as a sidecar) keep them fresh until told to stop.

use crate::config::{Agent, AuthConfig, Delivery, RdsConfig, Source};
use crate::files::{load_state, render, save_state, state_path, write_atomically};
use crate::health::{Slot, Status};
use crate::on_change::fire;
use pgwarden_client::{Auth, Client, ClientError, Credential, CredentialProvider, ProviderOptions};
use secrecy::SecretString;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A lease found beside the files is adopted only if it has at least this long left.
const MIN_ADOPTABLE: Duration = Duration::from_secs(2);

/// Why the agent stopped; the message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AgentError(String);

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        AgentError(e.to_string())
    }
}

impl From<String> for AgentError {
    fn from(e: String) -> Self {
        AgentError(e)
    }
}

/// How the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write the files and keep them fresh until stopped.
    Sidecar,
    /// Write the files and exit (init container).
    Once,
}

fn client(address: &str, auth: &AuthConfig) -> Result<Client, AgentError> {
    let auth = match auth {
        AuthConfig::Kubernetes {
            role,
            token_file,
            mount,
        } => Auth::Kubernetes {
            mount: mount.clone(),
            role: role.clone(),
            token_file: token_file.clone(),
        },
        AuthConfig::Token { token_file } => {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                AgentError(format!(
                    "cannot read the token file {}: {e}",
                    token_file.display()
                ))
            })?;
            Auth::Token(SecretString::from(token.trim().to_string()))
        }
    };
    Ok(Client::new(address, auth))
}

/// One credential being kept fresh.
struct Kept {
    delivery: Delivery,
    provider: Arc<CredentialProvider>,
}

/// Where the state of `delivery` lives: beside its first file.
fn state_file(delivery: &Delivery) -> std::path::PathBuf {
    let first = delivery
        .files
        .first()
        .map_or(std::path::Path::new("."), |f| f.path.as_path());
    state_path(first, &delivery.path)
}

impl Kept {
    /// Writes every file and the state beside them.
    fn write(&self) -> Result<(), AgentError> {
        let current = self.provider.current();
        let delivery = &self.delivery;
        for file in &delivery.files {
            write_atomically(&file.path, &render(file, &current.credential)?)?;
        }
        save_state(&state_file(delivery), &delivery.path, &current.credential)?;
        tracing::info!(path = %delivery.path, lease_id = %current.credential.lease_id, files = delivery.files.len(), "credential files written");
        Ok(())
    }
}

/// A credential to deliver, and whether its lease was issued just now (rather than adopted).
struct Obtained {
    provider: CredentialProvider,
    fresh: bool,
}

/// Adopts the lease recorded beside the files if it is still valid, else issues a new one.
async fn obtain(
    client: &Arc<Client>,
    config: &Delivery,
    options: ProviderOptions,
) -> Result<Obtained, AgentError> {
    if let Some(recorded) = load_state(&state_file(config), &config.path) {
        match client.lookup(&recorded.lease_id).await {
            Ok(info) if info.ttl >= MIN_ADOPTABLE => {
                tracing::info!(path = %config.path, lease_id = %recorded.lease_id, valid_for_s = info.ttl.as_secs(), "adopting the existing lease");
                return Ok(Obtained {
                    provider: CredentialProvider::adopt(
                        client.clone(),
                        &config.path,
                        recorded,
                        info.ttl,
                        options,
                    ),
                    fresh: false,
                });
            }
            Ok(_) => {
                tracing::info!(lease_id = %recorded.lease_id, "the recorded lease is about to end; fetching a new one")
            }
            Err(error) => {
                tracing::info!(lease_id = %recorded.lease_id, %error, "the recorded lease cannot be adopted; fetching a new one")
            }
        }
    }
    Ok(Obtained {
        provider: CredentialProvider::start(client.clone(), &config.path, options).await?,
        fresh: true,
    })
}

/// Rewrites the files and tells the application whenever the credential is replaced, and keeps
/// the health status current on renewals too.
async fn watch(kept: Arc<Kept>, status: Arc<Status>) {
    let mut changes = kept.provider.subscribe();
    let mut written = changes.borrow().generation;
    while changes.changed().await.is_ok() {
        let current = changes.borrow_and_update().clone();
        status.set(Slot::of(&kept.delivery.path, &current));
        if current.generation == written {
            continue;
        }
        match kept.write() {
            Ok(()) => {
                written = current.generation;
                if let Some(action) = &kept.delivery.on_change {
                    fire(action).await;
                }
            }
            Err(error) => {
                tracing::error!(path = %kept.delivery.path, %error, "cannot write the new credential; the previous files stay")
            }
        }
    }
}

/// First wait before retrying a failed RDS token refresh; it doubles up to [`RDS_MAX_BACKOFF`].
const RDS_FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait between RDS token retries.
const RDS_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An RDS IAM token being kept fresh: signed anew every `refresh`, from the AWS credential chain.
struct RdsKept {
    delivery: Delivery,
    config: RdsConfig,
    chain: pgwarden_aws::CredentialChain,
}

impl RdsKept {
    fn new(delivery: Delivery, config: RdsConfig) -> RdsKept {
        let mut chain = pgwarden_aws::CredentialChain::new(pgwarden_aws::Env::process());
        if let Some(profile) = &config.profile {
            chain = chain.with_profile(profile.clone());
        }
        RdsKept {
            delivery,
            config,
            chain,
        }
    }

    /// Signs a new token, writes every file with it, and returns when it expires.
    async fn refresh(&self) -> Result<Instant, AgentError> {
        let failed = |e: &(dyn std::error::Error + 'static)| {
            AgentError(format!(
                "{}: cannot make the RDS token: {}",
                self.delivery.path,
                pgwarden_core::chain(e)
            ))
        };
        let credentials = self.chain.credentials().await.map_err(|e| failed(&e))?;
        let signed_at = Instant::now();
        let c = &self.config;
        let token = pgwarden_aws::rds_auth_token(
            &c.hostname,
            c.port,
            &c.username,
            &c.region,
            &credentials,
            SystemTime::now(),
        )
        .map_err(|e| failed(&e))?;
        let lifetime = Duration::from_secs(pgwarden_aws::TOKEN_LIFETIME_SECONDS);
        let credential = Credential {
            lease_id: String::new(),
            lease_duration: lifetime,
            username: c.username.clone(),
            password: SecretString::from(token),
            host: c.hostname.clone(),
            port: c.port,
            database: c.database.clone().unwrap_or_default(),
        };
        for file in &self.delivery.files {
            write_atomically(&file.path, &render(file, &credential)?)?;
        }
        tracing::info!(path = %self.delivery.path, access_key_id = credentials.access_key_id(), files = self.delivery.files.len(), "RDS token files written");
        Ok(signed_at + lifetime)
    }

    /// The health slot of a token valid until `expires_at`.
    fn slot(&self, expires_at: Instant) -> Slot {
        Slot {
            path: self.delivery.path.clone(),
            lease_id: String::new(),
            expires_at,
        }
    }
}

/// Signs a new RDS token every `refresh` and rewrites the files, firing `on_change` after each
/// rewrite; a failure is retried with capped exponential backoff while the last files stay.
async fn keep_rds(rds: Arc<RdsKept>, status: Arc<Status>, mut expires_at: Instant) {
    loop {
        tokio::time::sleep(rds.config.refresh).await;
        let mut attempt = 0;
        loop {
            match rds.refresh().await {
                Ok(new_expiry) => {
                    expires_at = new_expiry;
                    status.set(rds.slot(expires_at));
                    if let Some(action) = &rds.delivery.on_change {
                        fire(action).await;
                    }
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    let wait = pgwarden_core::backoff(attempt, RDS_FIRST_BACKOFF, RDS_MAX_BACKOFF);
                    tracing::warn!(path = %rds.delivery.path, %error, valid_for_s = expires_at.saturating_duration_since(Instant::now()).as_secs(), retry_in_ms = wait.as_millis() as u64, "refreshing the RDS token failed; the previous files stay");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves (sidecar) or the files are written (once).
pub async fn run(
    agent: Agent,
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let Agent { config, deliveries } = agent;
    let client = if deliveries.iter().any(|d| d.source == Source::Broker) {
        let (Some(address), Some(auth)) = (&config.address, &config.auth) else {
            return Err(AgentError(
                "address and auth: required when a credential has a path".into(),
            ));
        };
        let client = Arc::new(client(address, auth)?);
        client.login().await?;
        Some(client)
    } else {
        None
    };
    let options = ProviderOptions {
        grace: config.grace_period,
        ..ProviderOptions::default()
    };
    let status = Arc::new(Status::default());
    let mut kept = Vec::new();
    let mut tokens = Vec::new();
    for delivery in deliveries {
        let client = match (&delivery.source, &client) {
            (Source::Rds(rds), _) => {
                let r = RdsKept::new(delivery.clone(), rds.clone());
                let expires_at = r.refresh().await?;
                status.set(r.slot(expires_at));
                tokens.push((Arc::new(r), expires_at));
                continue;
            }
            (Source::Broker, Some(client)) => client,
            (Source::Broker, None) => unreachable!("a client exists when a credential has a path"),
        };
        let obtained = obtain(client, &delivery, options).await?;
        let k = Arc::new(Kept {
            delivery,
            provider: Arc::new(obtained.provider),
        });
        if let Err(error) = k.write() {
            if obtained.fresh {
                // Nobody can use a credential that was not delivered: do not leave it alive.
                let lease_id = k.provider.current().credential.lease_id.clone();
                if let Err(revoke_error) = client.revoke(&lease_id).await {
                    tracing::warn!(%lease_id, error = %revoke_error, "revoking the undelivered lease failed; it will expire on its own");
                }
            }
            return Err(error);
        }
        let current = k.provider.current();
        status.set(Slot::of(&k.delivery.path, &current));
        kept.push(k);
    }
    if mode == Mode::Once {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| AgentError(format!("cannot listen on {}: {e}", config.listen)))?;
    let router = crate::health::router(status.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let watchers: Vec<_> =
        kept.iter()
            .map(|k| tokio::spawn(watch(k.clone(), status.clone())))
            .chain(tokens.iter().map(|(r, expires_at)| {
                tokio::spawn(keep_rds(r.clone(), status.clone(), *expires_at))
            }))
            .collect();
    tracing::info!(credentials = kept.len() + tokens.len(), listen = %config.listen, "agent ready");
    shutdown.await;
    for w in &watchers {
        w.abort();
    }
    if let Some(client) = client.filter(|_| config.revoke_on_shutdown && !kept.is_empty()) {
        tracing::info!(
            grace_s = config.grace_period.as_secs(),
            "revoking leases after the grace period"
        );
        tokio::time::sleep(config.grace_period).await;
        for k in kept {
            let lease_id = k.provider.current().credential.lease_id.clone();
            if let Err(error) = client.revoke(&lease_id).await {
                tracing::warn!(%lease_id, %error, "revoking on shutdown failed; the lease will expire on its own");
            }
        }
    }
    Ok(())
}
