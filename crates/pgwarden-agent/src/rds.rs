//! RDS IAM tokens kept in files: signed anew every `refresh` from the AWS credential chain.

use crate::config::{Delivery, RdsConfig};
use crate::refresh::{Refreshed, Refresher};
use crate::run::AgentError;
use pgwarden_client::Credential;
use secrecy::SecretString;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// An RDS IAM token being kept fresh.
pub(crate) struct RdsKept {
    delivery: Delivery,
    config: RdsConfig,
    chain: pgwarden_aws::CredentialChain,
}

impl RdsKept {
    /// The keeper of `delivery`'s token, signed as `config` says.
    pub(crate) fn new(delivery: Delivery, config: RdsConfig) -> RdsKept {
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
}

impl Refresher for RdsKept {
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Signs a new token (every token is a change).
    async fn refresh(&self) -> Result<Refreshed, AgentError> {
        let failed = |e: &(dyn std::error::Error + 'static)| {
            AgentError::from(format!(
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
        tracing::debug!(path = %self.delivery.path, access_key_id = credentials.access_key_id(), "RDS token signed");
        let lifetime = Duration::from_secs(pgwarden_aws::TOKEN_LIFETIME_SECONDS);
        Ok(Refreshed {
            credential: Credential {
                lease_id: String::new(),
                lease_duration: lifetime,
                username: c.username.clone(),
                password: SecretString::from(token),
                host: c.hostname.clone(),
                port: c.port,
                database: c.database.clone().unwrap_or_default(),
                hosts: Vec::new(),
            },
            expires_at: signed_at + lifetime,
            next_at: signed_at + c.refresh,
            changed: true,
            version: None,
        })
    }
}
