//! Who a client is: the token it sent as its password, checked by pgwarden (a JWT through the
//! configured logins, a pgwarden token by looking it up), remembered for a short while.

use crate::config::Login;
use parking_lot::Mutex;
use pgwarden_client::{Auth, Client, ClientError};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A client whose token pgwarden accepted.
#[derive(Clone)]
pub struct Verified {
    /// The identity's policy subject (`system:serviceaccount:…`, `user:…`, `root`).
    pub subject: String,
    /// Its groups, sorted: policy may grant by group, so two tokens of one subject with
    /// different groups are different principals.
    pub groups: Vec<String>,
    /// A pgwarden token acting as it.
    pub token: SecretString,
    /// When that token stops working.
    pub until: Instant,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// pgwarden refused it.
    #[error("{0}")]
    Invalid(String),
    /// pgwarden could not be asked.
    #[error("{0}")]
    Unreachable(String),
}

impl Refusal {
    /// The `reason` label of the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid_token",
            Refusal::Unreachable(_) => "pgwarden_unreachable",
        }
    }
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Refusal {
        match error {
            // pgwarden itself failing (or shedding load) says nothing about the token.
            ClientError::Api { status, .. } if status >= 500 || status == 429 => {
                Refusal::Unreachable(error.to_string())
            }
            ClientError::Api { message, .. } => Refusal::Invalid(message),
            other => Refusal::Unreachable(other.to_string()),
        }
    }
}

/// Checks tokens with pgwarden and remembers the verdicts it accepted.
pub struct Identities {
    address: String,
    logins: Vec<Login>,
    remember: Duration,
    known: Mutex<HashMap<[u8; 32], Verified>>,
}

impl Identities {
    /// Checks tokens at pgwarden `address` through `logins`, trusting an accepted one for
    /// `remember` (never past its own expiry).
    pub fn new(address: &str, logins: Vec<Login>, remember: Duration) -> Identities {
        Identities {
            address: address.to_string(),
            logins,
            remember,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Who `password` proves the client is.
    pub async fn verify(&self, password: &SecretString) -> Result<Verified, Refusal> {
        let key: [u8; 32] = Sha256::digest(password.expose_secret().as_bytes()).into();
        let now = Instant::now();
        if let Some(known) = self.known.lock().get(&key).filter(|v| v.until > now) {
            return Ok(known.clone());
        }
        let token = if looks_like_jwt(password.expose_secret()) {
            self.login(password).await?
        } else {
            password.clone()
        };
        let verified = self.look_up(&token).await?;
        let mut known = self.known.lock();
        known.retain(|_, v| v.until > now);
        known.insert(
            key,
            Verified {
                until: verified.until.min(now + self.remember),
                ..verified.clone()
            },
        );
        Ok(verified)
    }

    /// Exchanges a JWT for a pgwarden token at the first login that accepts it.
    async fn login(&self, jwt: &SecretString) -> Result<SecretString, Refusal> {
        let client = Client::new(&self.address, Auth::Token(SecretString::from("")));
        let mut refusals = Vec::new();
        for login in &self.logins {
            let answer = client
                .login_as(&login.mount, &login.role, jwt.clone())
                .await;
            match answer.map(|auth| auth.client_token) {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => refusals.push(format!("auth/{}: no token in the answer", login.mount)),
                Err(error) => match Refusal::from(error) {
                    Refusal::Invalid(message) => {
                        refusals.push(format!("auth/{}: {message}", login.mount))
                    }
                    unreachable => return Err(unreachable),
                },
            }
        }
        Err(Refusal::Invalid(refusals.join("; ")))
    }

    /// Looks a pgwarden token up: who it is and how long it lasts.
    async fn look_up(&self, token: &SecretString) -> Result<Verified, Refusal> {
        let client = Client::new(&self.address, Auth::Token(token.clone()));
        let lookup = client.lookup_self().await?;
        let lasts = if lookup.ttl == 0 {
            // The root token does not expire.
            self.remember
        } else {
            Duration::from_secs(lookup.ttl)
        };
        Ok(Verified {
            subject: lookup.entity_id.unwrap_or_else(|| "root".to_string()),
            groups: lookup.groups,
            token: token.clone(),
            until: Instant::now() + lasts,
        })
    }
}

/// Three base64url parts separated by dots, the first one a JSON object (`eyJ`).
fn looks_like_jwt(text: &str) -> bool {
    text.starts_with("eyJ") && text.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_told_from_pgwarden_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt(
            "pgw_abcdefghijklmnopqrstuvwxyz0123456789abcd"
        ));
        assert!(!looks_like_jwt("eyJonlyonepart"));
    }
}
