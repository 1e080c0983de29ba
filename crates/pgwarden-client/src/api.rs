//! The typed HTTP API of pgwarden (Vault-compatible paths).

use crate::ClientError;
use pgwarden_core::Ttl;
use pgwarden_core::wire::{
    AuthBlock, DbCredential, LeaseLookup, LoginBody, LookupBody, RenewBody, RevokeBody,
    SecretResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::RwLock;

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A pgwarden token (or the root token) used as is.
    Token(SecretString),
    /// Kubernetes service-account login; the token file is re-read at every login, since
    /// projected tokens rotate.
    Kubernetes {
        /// The auth mount (`kubernetes`).
        mount: String,
        /// The login role.
        role: String,
        /// The projected service-account token.
        token_file: PathBuf,
    },
}

/// A database credential.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The lease to renew or revoke.
    pub lease_id: String,
    /// How long the lease lasts from when it was issued.
    pub lease_duration: Duration,
    /// The database user.
    pub username: String,
    /// Its password.
    pub password: SecretString,
    /// Database host.
    pub host: String,
    /// Database port.
    pub port: u16,
    /// Database name.
    pub database: String,
}

/// The outcome of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// Time left on the lease after renewal.
    pub lease_duration: Duration,
    /// True when the max TTL cut the renewal short.
    pub capped: bool,
}

/// What a lease lookup tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Time left.
    pub ttl: Duration,
    /// Whether it can still be renewed.
    pub renewable: bool,
}

/// A pgwarden API client.
pub struct Client {
    address: String,
    http: reqwest::Client,
    auth: Auth,
    token: RwLock<Option<SecretString>>,
}

/// Reads a successful answer as the wire type `T`.
fn parse<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|e| ClientError::Protocol {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn body<T: Serialize>(value: &T) -> Value {
    // Wire types are plain structs of strings and numbers: they always serialize.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Client {
    /// A client of the pgwarden at `address` (e.g. `http://127.0.0.1:8200`).
    pub fn new(address: &str, auth: Auth) -> Client {
        let token = match &auth {
            Auth::Token(token) => Some(token.clone()),
            Auth::Kubernetes { .. } => None,
        };
        Client {
            address: address.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("a default HTTP client"),
            auth,
            token: RwLock::new(token),
        }
    }

    /// The address of pgwarden.
    pub fn address(&self) -> &str {
        &self.address
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, ClientError> {
        let url = format!("{}/v1/{path}", self.address);
        let mut request = self.http.request(method, &url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            address: self.address.clone(),
            reason: pgwarden_core::chain(&e),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        if status >= 400 {
            let message = value["errors"]
                .as_array()
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|m| !m.is_empty())
                .unwrap_or(text);
            return Err(ClientError::Api {
                what: what.to_string(),
                status,
                message,
            });
        }
        Ok(value)
    }

    /// Logs in (Kubernetes auth) and keeps the token; a no-op with a fixed token.
    pub async fn login(&self) -> Result<(), ClientError> {
        let Auth::Kubernetes {
            mount,
            role,
            token_file,
        } = &self.auth
        else {
            return Ok(());
        };
        let jwt =
            tokio::fs::read_to_string(token_file)
                .await
                .map_err(|e| ClientError::TokenFile {
                    path: token_file.display().to_string(),
                    reason: e.to_string(),
                })?;
        let what = format!("login at auth/{mount}");
        let login = LoginBody {
            role: role.clone(),
            jwt: SecretString::from(jwt.trim()),
        };
        let answer = self
            .send(
                reqwest::Method::POST,
                &format!("auth/{mount}/login"),
                None,
                Some(&body(&login)),
                &what,
            )
            .await?;
        let answer: SecretResponse<Option<Value>> = parse(answer, &what)?;
        let token = answer
            .auth
            .and_then(|auth: AuthBlock| auth.client_token)
            .ok_or_else(|| ClientError::Protocol {
                what: what.clone(),
                reason: "no auth.client_token".into(),
            })?;
        *self.token.write().await = Some(token);
        Ok(())
    }

    /// Sends an authenticated request; with Kubernetes auth, logs in first if needed and once
    /// more if the token was refused (it may have expired).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, ClientError> {
        if self.token.read().await.is_none() {
            self.login().await?;
        }
        let token = self.token.read().await.clone();
        match self
            .send(method.clone(), path, token.as_ref(), body.as_ref(), what)
            .await
        {
            Err(e) if e.is_permission_denied() && matches!(self.auth, Auth::Kubernetes { .. }) => {
                self.login().await?;
                let token = self.token.read().await.clone();
                self.send(method, path, token.as_ref(), body.as_ref(), what)
                    .await
            }
            other => other,
        }
    }

    /// Issues a credential from `path` (e.g. `database/creds/appdb-user`).
    pub async fn credential(&self, path: &str) -> Result<Credential, ClientError> {
        let what = format!("GET {path}");
        let answer = self.call(reqwest::Method::GET, path, None, &what).await?;
        let answer: SecretResponse<DbCredential> = parse(answer, &what)?;
        if answer.lease_id.is_empty() {
            return Err(ClientError::Protocol {
                what,
                reason: "no lease_id".into(),
            });
        }
        Ok(Credential {
            lease_id: answer.lease_id,
            lease_duration: Duration::from_secs(answer.lease_duration),
            username: answer.data.username,
            password: answer.data.password,
            host: answer.data.host,
            port: answer.data.port,
            database: answer.data.database,
        })
    }

    /// Extends a lease by `increment`.
    pub async fn renew(&self, lease_id: &str, increment: Duration) -> Result<Renewal, ClientError> {
        let what = format!("renew {lease_id}");
        let request = RenewBody {
            lease_id: Some(lease_id.to_string()),
            increment: Some(Ttl::from_secs(increment.as_secs())),
        };
        let answer = self
            .call(
                reqwest::Method::PUT,
                "sys/leases/renew",
                Some(body(&request)),
                &what,
            )
            .await?;
        let answer: SecretResponse<Option<Value>> = parse(answer, &what)?;
        let lease_duration = Duration::from_secs(answer.lease_duration);
        Ok(Renewal {
            lease_duration,
            capped: lease_duration < increment,
        })
    }

    /// Drops a lease's user now.
    pub async fn revoke(&self, lease_id: &str) -> Result<(), ClientError> {
        let request = RevokeBody {
            lease_id: Some(lease_id.to_string()),
            sync: None,
        };
        self.call(
            reqwest::Method::PUT,
            "sys/leases/revoke",
            Some(body(&request)),
            &format!("revoke {lease_id}"),
        )
        .await
        .map(|_| ())
    }

    /// What pgwarden knows of a lease.
    pub async fn lookup(&self, lease_id: &str) -> Result<LeaseInfo, ClientError> {
        let what = format!("lookup {lease_id}");
        let request = LookupBody {
            lease_id: lease_id.to_string(),
        };
        let answer = self
            .call(
                reqwest::Method::PUT,
                "sys/leases/lookup",
                Some(body(&request)),
                &what,
            )
            .await?;
        let answer: SecretResponse<LeaseLookup> = parse(answer, &what)?;
        Ok(LeaseInfo {
            ttl: Duration::from_secs(answer.data.ttl),
            renewable: answer.data.renewable,
        })
    }
}
