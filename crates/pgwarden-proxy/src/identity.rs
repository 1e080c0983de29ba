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

/// How long a token pgwarden refused is refused again without asking it: a client retrying
/// a bad token (or someone trying many times) costs pgwarden one check.
const REMEMBER_REFUSAL: Duration = Duration::from_secs(10);
/// Most verdicts remembered of each kind; past that, the oldest go first.
const MAX_REMEMBERED: usize = 10_000;

/// Checks tokens with pgwarden and remembers its verdicts for a while.
pub struct Identities {
    client: Client,
    logins: Vec<Login>,
    remember: Duration,
    known: Mutex<HashMap<[u8; 32], Verified>>,
    refused: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

impl Identities {
    /// Checks tokens with `client` (pgwarden, as nobody in particular) through `logins`,
    /// trusting an accepted one for `remember` (never past its own expiry).
    pub fn new(client: Client, logins: Vec<Login>, remember: Duration) -> Identities {
        Identities {
            client,
            logins,
            remember,
            known: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Who `password` proves the client is.
    pub async fn verify(&self, password: &SecretString) -> Result<Verified, Refusal> {
        let key: [u8; 32] = Sha256::digest(password.expose_secret().as_bytes()).into();
        let now = Instant::now();
        if let Some(known) = self.known.lock().get(&key).filter(|v| v.until > now) {
            return Ok(known.clone());
        }
        if let Some((_, why)) = self
            .refused
            .lock()
            .get(&key)
            .filter(|(until, _)| *until > now)
        {
            return Err(Refusal::Invalid(why.clone()));
        }
        match self.check(password).await {
            Ok(verified) => {
                let remembered = Verified {
                    until: verified.until.min(now + self.remember),
                    ..verified.clone()
                };
                remember(&mut self.known.lock(), key, remembered, |v| v.until, now);
                Ok(verified)
            }
            Err(Refusal::Invalid(why)) => {
                let until = now + REMEMBER_REFUSAL;
                remember(
                    &mut self.refused.lock(),
                    key,
                    (until, why.clone()),
                    |r| r.0,
                    now,
                );
                Err(Refusal::Invalid(why))
            }
            Err(unreachable) => Err(unreachable),
        }
    }

    /// Asks pgwarden who `password` proves the client is.
    async fn check(&self, password: &SecretString) -> Result<Verified, Refusal> {
        let token = if looks_like_jwt(password.expose_secret()) {
            self.login(password).await?
        } else {
            password.clone()
        };
        self.look_up(&token).await
    }

    /// Exchanges a JWT for a pgwarden token at the first login that accepts it.
    async fn login(&self, jwt: &SecretString) -> Result<SecretString, Refusal> {
        let mut refusals = Vec::new();
        for login in &self.logins {
            let answer = self
                .client
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
        let client = self.client.acting_as(Auth::Token(token.clone()));
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
            // A TTL too long for the clock: checked again at the next login.
            until: Instant::now()
                .checked_add(lasts)
                .unwrap_or_else(Instant::now),
        })
    }
}

/// Remembers `value` for `key` in `map` until `until(value)`, first forgetting what expired
/// and, when full, what expires first.
fn remember<V>(
    map: &mut HashMap<[u8; 32], V>,
    key: [u8; 32],
    value: V,
    until: impl Fn(&V) -> Instant,
    now: Instant,
) {
    map.retain(|_, v| until(v) > now);
    if map.len() >= MAX_REMEMBERED
        && let Some(first) = map.iter().min_by_key(|(_, v)| until(v)).map(|(k, _)| *k)
    {
        map.remove(&first);
    }
    map.insert(key, value);
}

/// Three base64url parts separated by dots, the first one a JSON object (`eyJ`).
fn looks_like_jwt(text: &str) -> bool {
    text.starts_with("eyJ") && text.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pgwarden that refuses every token, counting the lookups it is asked for.
    async fn refusing_pgwarden() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let app = axum::Router::new().route(
            "/v1/auth/token/lookup-self",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        axum::http::StatusCode::FORBIDDEN,
                        axum::Json(serde_json::json!({"errors": ["permission denied"]})),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (address, asked)
    }

    #[tokio::test]
    async fn a_refused_token_is_refused_again_without_asking_pgwarden() {
        let (address, asked) = refusing_pgwarden().await;
        let anonymous = Client::new(&address, Auth::Token(SecretString::from("")));
        let identities = Identities::new(anonymous, Vec::new(), Duration::from_secs(60));
        let bad = SecretString::from("pgw_not_a_token");
        for _ in 0..3 {
            match identities.verify(&bad).await {
                Err(Refusal::Invalid(why)) => assert_eq!(why, "permission denied"),
                other => panic!("{:?}", other.map(|v| v.subject)),
            }
        }
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = SecretString::from("pgw_another_bad_one");
        assert!(identities.verify(&other).await.is_err());
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn jwts_are_told_from_pgwarden_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt(
            "pgw_abcdefghijklmnopqrstuvwxyz0123456789abcd"
        ));
        assert!(!looks_like_jwt("eyJonlyonepart"));
    }
}
