//! The typed HTTP API of pgwarden (Vault-compatible paths).

use crate::ClientError;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
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

fn protocol(what: &str, reason: &str) -> ClientError {
    ClientError::Protocol {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

fn str_field(value: &Value, pointer: &str, what: &str) -> Result<String, ClientError> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| protocol(what, &format!("no {pointer}")))
}

fn secs_field(value: &Value, pointer: &str, what: &str) -> Result<Duration, ClientError> {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .map(Duration::from_secs)
        .ok_or_else(|| protocol(what, &format!("no {pointer}")))
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
        let body = json!({ "role": role, "jwt": jwt.trim() });
        let answer = self
            .send(
                reqwest::Method::POST,
                &format!("auth/{mount}/login"),
                None,
                Some(&body),
                &what,
            )
            .await?;
        let token = str_field(&answer, "/auth/client_token", &what)?;
        *self.token.write().await = Some(SecretString::from(token));
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
        Ok(Credential {
            lease_id: str_field(&answer, "/lease_id", &what)?,
            lease_duration: secs_field(&answer, "/lease_duration", &what)?,
            username: str_field(&answer, "/data/username", &what)?,
            password: SecretString::from(str_field(&answer, "/data/password", &what)?),
            host: answer
                .pointer("/data/host")
                .and_then(Value::as_str)
                .unwrap_or("localhost")
                .to_string(),
            port: answer
                .pointer("/data/port")
                .and_then(Value::as_u64)
                .unwrap_or(5432) as u16,
            database: answer
                .pointer("/data/database")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// Extends a lease by `increment`.
    pub async fn renew(&self, lease_id: &str, increment: Duration) -> Result<Renewal, ClientError> {
        let what = format!("renew {lease_id}");
        let body = json!({ "lease_id": lease_id, "increment": increment.as_secs() });
        let answer = self
            .call(reqwest::Method::PUT, "sys/leases/renew", Some(body), &what)
            .await?;
        let lease_duration = secs_field(&answer, "/lease_duration", &what)?;
        Ok(Renewal {
            lease_duration,
            capped: lease_duration < increment,
        })
    }

    /// Drops a lease's user now.
    pub async fn revoke(&self, lease_id: &str) -> Result<(), ClientError> {
        let body = json!({ "lease_id": lease_id });
        self.call(
            reqwest::Method::PUT,
            "sys/leases/revoke",
            Some(body),
            &format!("revoke {lease_id}"),
        )
        .await
        .map(|_| ())
    }

    /// What pgwarden knows of a lease.
    pub async fn lookup(&self, lease_id: &str) -> Result<LeaseInfo, ClientError> {
        let what = format!("lookup {lease_id}");
        let body = json!({ "lease_id": lease_id });
        let answer = self
            .call(reqwest::Method::PUT, "sys/leases/lookup", Some(body), &what)
            .await?;
        Ok(LeaseInfo {
            ttl: secs_field(&answer, "/data/ttl", &what)?,
            renewable: answer
                .pointer("/data/renewable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}
