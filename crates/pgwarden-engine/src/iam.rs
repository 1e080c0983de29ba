//! `auth: rds_iam`: the administrative user's password is an RDS IAM auth token, so no
//! administrator password is stored anywhere. A token is valid for 15 minutes and only needed
//! to open a connection (RDS checks it at log-in, not afterwards), so one is signed when a
//! connection is about to be opened and the last one is older than [`TOKEN_REFRESH`].

use crate::error::EngineError;
use pgwarden_aws::{CredentialChain, Env, rds_auth_token};
use pgwarden_core::ConnectionDef;
use secrecy::{ExposeSecret, SecretString};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// How long a signed token is used for new connections (tokens live 15 minutes).
pub(crate) const TOKEN_REFRESH: Duration = Duration::from_secs(10 * 60);
/// A token is not used for new connections closer than this to the end of the (temporary)
/// AWS credentials that signed it.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(60);

/// What to check when the database refuses a token.
pub(crate) const REFUSED_HINT: &str = "the RDS IAM token was refused: check that the AWS \
    identity may rds-db:connect as this user, the region (aws_region), and that the user is \
    granted rds_iam";

/// The process's AWS credential chain (environment, web identity, profiles), shared by every
/// target so credentials are fetched and cached once.
fn chain() -> &'static CredentialChain {
    static CHAIN: OnceLock<CredentialChain> = OnceLock::new();
    CHAIN.get_or_init(|| CredentialChain::new(Env::process()))
}

/// The token source of one target: where and as whom tokens are signed, and the last token.
pub(crate) struct IamPassword {
    connection: String,
    host: String,
    port: u16,
    user: String,
    region: String,
    /// The last token and until when it is used.
    last: parking_lot::Mutex<Option<(SecretString, Instant)>>,
}

impl IamPassword {
    /// The token source for `def` (with `auth: rds_iam` and `region`) reached through `config`.
    /// Refuses a URL naming several hosts or a socket (a token is signed for one host name),
    /// and a connection that would send the token in plaintext unless the URL says
    /// `sslmode=disable`.
    pub(crate) fn new(
        def: &ConnectionDef,
        region: Option<&str>,
        config: &Config,
        tls: bool,
    ) -> Result<IamPassword, EngineError> {
        let invalid = |reason: String| EngineError::InvalidUrl {
            connection: def.name.clone(),
            reason,
        };
        let host = match config.get_hosts() {
            [Host::Tcp(host)] => host.clone(),
            [_] => {
                return Err(invalid(
                    "auth rds_iam needs a host name, not a socket".into(),
                ));
            }
            hosts => {
                return Err(invalid(format!(
                    "auth rds_iam signs a token for one host name, and the URL names {}; use \
                     the cluster's endpoint",
                    hosts.len()
                )));
            }
        };
        if !tls && !def.connection_url.contains("sslmode=disable") {
            return Err(invalid(
                "auth rds_iam sends its token as a password: add sslmode=verify-full (or \
                 sslmode=disable to send it in plaintext on purpose)"
                    .into(),
            ));
        }
        let region = match region {
            Some(region) => region.to_string(),
            None => chain()
                .region()
                .map_err(|e| invalid(format!("auth rds_iam: {e}")))?
                .ok_or_else(|| {
                    invalid(
                        "auth rds_iam needs a region: set aws_region on the connection, or \
                         AWS_REGION"
                            .into(),
                    )
                })?,
        };
        Ok(IamPassword {
            connection: def.name.clone(),
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or(&def.username).to_string(),
            region,
            last: parking_lot::Mutex::new(None),
        })
    }

    /// A token for a connection opened now: the last one while younger than
    /// [`TOKEN_REFRESH`] and its credentials have a minute left, else a new one (credentials
    /// from the chain's cache, or fetched).
    pub(crate) async fn token(&self) -> Result<SecretString, EngineError> {
        if let Some((token, until)) = self.last.lock().as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let unreachable = |e: pgwarden_aws::Error| EngineError::Unreachable {
            connection: self.connection.clone(),
            reason: format!("no RDS IAM token: {e}"),
        };
        let credentials = chain().credentials().await.map_err(unreachable)?;
        let token = rds_auth_token(
            &self.host,
            self.port,
            &self.user,
            &self.region,
            &credentials,
            SystemTime::now(),
        )
        .map_err(unreachable)?;
        let token = SecretString::from(token);
        let credentials_left = credentials
            .expires_at()
            .and_then(|end| end.duration_since(SystemTime::now()).ok())
            .map_or(TOKEN_REFRESH, |left| {
                left.saturating_sub(CREDENTIALS_MARGIN)
            });
        let now = Instant::now();
        let until = now
            .checked_add(TOKEN_REFRESH.min(credentials_left))
            .unwrap_or(now);
        *self.last.lock() = Some((token.clone(), until));
        tracing::debug!(connection = %self.connection, "signed an RDS IAM token");
        Ok(token)
    }

    /// Drops the last token (the database refused it): the next connection signs a new one.
    pub(crate) fn forget(&self) {
        *self.last.lock() = None;
    }

    /// Sets the token last signed as `config`'s password (for connections opened right after
    /// [`Self::token`]).
    pub(crate) fn apply(&self, config: &mut Config) {
        if let Some((token, _)) = self.last.lock().as_ref() {
            config.password(token.expose_secret());
        }
    }
}
