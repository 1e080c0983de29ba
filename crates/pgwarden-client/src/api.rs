//! The typed HTTP API of pgwarden (Vault-compatible paths).

use crate::ClientError;
use crate::paths;
use pgwarden_core::Ttl;
use pgwarden_core::wire::{
    AuthBlock, DbCredential, ErrorBody, KeyList, LeaseLookup, LoginBody, LookupBody, RenewBody,
    RevokeBody, SecretResponse, StaticCredential, TokenLookup,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
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
    /// Every `host:port` when the connection names several (primary and replicas); empty
    /// for one host.
    pub hosts: Vec<String>,
}

impl From<SecretResponse<DbCredential>> for Credential {
    fn from(answer: SecretResponse<DbCredential>) -> Credential {
        Credential {
            lease_id: answer.lease_id,
            lease_duration: Duration::from_secs(answer.lease_duration),
            username: answer.data.username,
            password: answer.data.password,
            host: answer.data.host,
            port: answer.data.port,
            database: answer.data.database,
            hosts: answer.data.hosts,
        }
    }
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

/// Longest answer read from pgwarden (the largest, a page of audit records or a long lease
/// list, are a few MiB).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Most characters of an error page that is not pgwarden's kept in an error.
const MAX_FOREIGN_MESSAGE_CHARS: usize = 512;

/// Why an answer's body was not read.
enum Unread {
    /// Longer than [`MAX_RESPONSE_BYTES`].
    TooLarge(String),
    /// The connection failed while reading it.
    Broken(String),
}

/// The response's body as text, refused beyond [`MAX_RESPONSE_BYTES`].
async fn read_capped(mut response: reqwest::Response) -> Result<String, Unread> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Unread::Broken(pgwarden_core::chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Unread::TooLarge(format!(
                "the answer is larger than {} MiB",
                MAX_RESPONSE_BYTES >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `text` on one line and cut to [`MAX_FOREIGN_MESSAGE_CHARS`].
fn shortened(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_FOREIGN_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// A transport error's `reason`, with what to do about the two a TLS setup causes: a
/// certificate this client does not trust, and plain HTTP sent to a TLS port.
fn with_hint(address: &str, reason: String) -> String {
    if reason.contains("invalid peer certificate") {
        format!(
            "{reason} (pgwarden's certificate is not signed by a CA this client trusts: give \
             the CA's certificate with --ca-cert, PGWARDEN_CACERT or ca_file)"
        )
    } else if address.starts_with("http://") && reason.contains("invalid HTTP version parsed") {
        format!("{reason} (the server may speak TLS: use an https:// address)")
    } else {
        reason
    }
}

/// The HTTP client settings every [`Client`] shares.
fn http_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(Duration::from_secs(15))
}

/// Reads a successful answer as the wire type `T`.
pub(crate) fn parse<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|e| ClientError::Protocol {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

/// The JSON of a wire body.
pub(crate) fn body<T: Serialize>(value: &T) -> Value {
    // Wire types are plain structs of strings and numbers: they always serialize.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl Client {
    /// A client of the pgwarden at `address` (e.g. `http://127.0.0.1:8200`, or `https://…`
    /// with a certificate the system trusts).
    pub fn new(address: &str, auth: Auth) -> Client {
        let http = http_client().build().expect("a default HTTP client");
        Client::with_http(address, auth, http)
    }

    /// A client of the pgwarden at `address` that trusts only the CA certificates in the PEM
    /// file `ca_file` (as Vault clients do with `VAULT_CACERT`), or without one the system's
    /// roots, as [`Client::new`]. A CA file with an address other than `https://` is refused.
    pub fn with_ca_file(
        address: &str,
        auth: Auth,
        ca_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let Some(ca_file) = ca_file else {
            return Ok(Client::new(address, auth));
        };
        let unusable = |reason: String| ClientError::CaFile {
            path: ca_file.display().to_string(),
            reason,
        };
        if !address.starts_with("https://") {
            // Trusting a CA for a plain address would send tokens in clear all the same.
            return Err(unusable(format!(
                "it is for an https:// address, and {address} is not one"
            )));
        }
        let pem = std::fs::read(ca_file).map_err(|e| unusable(e.to_string()))?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| unusable(e.to_string()))?;
        if certificates.is_empty() {
            return Err(unusable("no certificate in the file".into()));
        }
        let http = http_client()
            .tls_certs_only(certificates)
            .build()
            .map_err(|e| unusable(pgwarden_core::chain(&e)))?;
        Ok(Client::with_http(address, auth, http))
    }

    fn with_http(address: &str, auth: Auth, http: reqwest::Client) -> Client {
        let token = match &auth {
            Auth::Token(token) => Some(token.clone()),
            Auth::Kubernetes { .. } => None,
        };
        Client {
            address: address.trim_end_matches('/').to_string(),
            http,
            auth,
            token: RwLock::new(token),
        }
    }

    /// A client of the same pgwarden acting with `auth`, sharing this one's HTTP connections.
    pub fn acting_as(&self, auth: Auth) -> Client {
        let token = match &auth {
            Auth::Token(token) => Some(token.clone()),
            Auth::Kubernetes { .. } => None,
        };
        Client {
            address: self.address.clone(),
            http: self.http.clone(),
            auth,
            token: RwLock::new(token),
        }
    }

    /// The address of pgwarden.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Uses `token` from now on (a fresher login of the same identity).
    pub async fn set_token(&self, token: SecretString) {
        *self.token.write().await = Some(token);
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
            reason: with_hint(&self.address, pgwarden_core::chain(&e)),
        })?;
        let status = response.status().as_u16();
        let text = match read_capped(response).await {
            Ok(text) => text,
            Err(Unread::TooLarge(reason)) => {
                return Err(ClientError::Protocol {
                    what: what.to_string(),
                    reason,
                });
            }
            // Cut off while reading (a reset, the timeout): as if unreachable, so retried.
            Err(Unread::Broken(reason)) => {
                return Err(ClientError::Unreachable {
                    address: self.address.clone(),
                    reason,
                });
            }
        };
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        if status >= 400 {
            // Vault's `{"errors": [...]}`; an empty list (a LIST finding nothing) gives an
            // empty message; anything else is passed on as the text it was.
            let message = match serde_json::from_value::<ErrorBody>(value) {
                Ok(errors) => errors.errors.join("; "),
                // Not pgwarden's (a proxy's error page, say): its start, on one line.
                Err(_) => shortened(&text),
            };
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
        let auth = self
            .login_as(mount, role, SecretString::from(jwt.trim()))
            .await?;
        *self.token.write().await = auth.client_token;
        Ok(())
    }

    /// Logs in at `auth/<mount>/login` with `jwt` for login role `role`, without keeping the
    /// token: the answer's `auth` block, whose `client_token` is always set.
    pub async fn login_as(
        &self,
        mount: &str,
        role: &str,
        jwt: SecretString,
    ) -> Result<AuthBlock, ClientError> {
        let what = format!("login at auth/{mount}");
        let login = LoginBody {
            role: role.to_string(),
            jwt,
        };
        let answer = self
            .send(
                reqwest::Method::POST,
                &paths::login(mount),
                None,
                Some(&body(&login)),
                &what,
            )
            .await?;
        let answer: SecretResponse<Option<serde::de::IgnoredAny>> = parse(answer, &what)?;
        match answer.auth {
            Some(auth) if auth.client_token.is_some() => Ok(auth),
            _ => Err(ClientError::Protocol {
                what,
                reason: "no auth.client_token".into(),
            }),
        }
    }

    /// Sends an authenticated request; with Kubernetes auth, logs in first if needed and once
    /// more if the token was refused (it may have expired).
    pub(crate) async fn call(
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
        Ok(Credential::from(answer))
    }

    /// The current password of a static role at `path` (e.g.
    /// `database/static-creds/appdb-legacy`), with when it changed and how long until it
    /// changes next.
    pub async fn static_credential(&self, path: &str) -> Result<StaticCredential, ClientError> {
        let what = format!("GET {path}");
        let answer = self.call(reqwest::Method::GET, path, None, &what).await?;
        let answer: SecretResponse<StaticCredential> = parse(answer, &what)?;
        Ok(answer.data)
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
                paths::RENEW,
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
            paths::REVOKE,
            Some(body(&request)),
            &format!("revoke {lease_id}"),
        )
        .await
        .map(|_| ())
    }

    /// What pgwarden knows of a lease.
    pub async fn lookup(&self, lease_id: &str) -> Result<LeaseInfo, ClientError> {
        let lookup = self.lease_lookup(lease_id).await?;
        Ok(LeaseInfo {
            ttl: Duration::from_secs(lookup.ttl),
            renewable: lookup.renewable,
        })
    }

    /// Everything pgwarden tells of a lease (`PUT sys/leases/lookup`).
    pub async fn lease_lookup(&self, lease_id: &str) -> Result<LeaseLookup, ClientError> {
        let what = format!("lookup {lease_id}");
        let request = LookupBody {
            lease_id: lease_id.to_string(),
        };
        let answer = self
            .call(
                reqwest::Method::PUT,
                paths::LOOKUP,
                Some(body(&request)),
                &what,
            )
            .await?;
        let answer: SecretResponse<LeaseLookup> = parse(answer, &what)?;
        Ok(answer.data)
    }

    /// Issues a credential for `<mount>/<role>` and returns the whole answer: the lease, its
    /// duration and the login.
    pub async fn issue(
        &self,
        mount_role: &str,
    ) -> Result<SecretResponse<DbCredential>, ClientError> {
        let path = paths::creds(mount_role).ok_or_else(|| ClientError::Usage {
            reason: format!("\"{mount_role}\" is not <mount>/<role>, e.g. database/appdb-readonly"),
        })?;
        let what = format!("GET {path}");
        let answer = self.call(reqwest::Method::GET, &path, None, &what).await?;
        parse(answer, &what)
    }

    /// Writes the definition at `path` (e.g. `database/roles/appdb-user` or
    /// `database/config/appdb`) from its JSON body; needs the root token.
    pub async fn write(&self, path: &str, definition: Value) -> Result<(), ClientError> {
        let what = format!("write {path}");
        self.call(reqwest::Method::PUT, path, Some(definition), &what)
            .await
            .map(|_| ())
    }

    /// Reads the definition at `path` (its `data`); needs the root token.
    pub async fn read(&self, path: &str) -> Result<Value, ClientError> {
        let what = format!("read {path}");
        let mut answer = self.call(reqwest::Method::GET, path, None, &what).await?;
        Ok(answer["data"].take())
    }

    /// Deletes the definition at `path`; needs the root token.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let what = format!("delete {path}");
        self.call(reqwest::Method::DELETE, path, None, &what)
            .await
            .map(|_| ())
    }

    /// Extends a lease by `increment` (the role's default TTL when `None`); the answer holds
    /// the time now left and a warning when the max TTL cut the renewal short.
    pub async fn renew_lease(
        &self,
        lease_id: &str,
        increment: Option<Ttl>,
    ) -> Result<SecretResponse<()>, ClientError> {
        let what = format!("renew {lease_id}");
        let request = RenewBody {
            lease_id: Some(lease_id.to_string()),
            increment,
        };
        let answer = self
            .call(
                reqwest::Method::PUT,
                paths::RENEW,
                Some(body(&request)),
                &what,
            )
            .await?;
        parse(answer, &what)
    }

    /// The lease ids and folders (ending in `/`) directly under `prefix` (root only); empty
    /// when there is none.
    pub async fn list_leases(&self, prefix: &str) -> Result<Vec<String>, ClientError> {
        let what = format!("list leases under \"{prefix}\"");
        let answer = self
            .call(
                reqwest::Method::GET,
                &paths::list_leases(prefix),
                None,
                &what,
            )
            .await;
        match answer {
            Ok(answer) => Ok(parse::<SecretResponse<KeyList>>(answer, &what)?.data.keys),
            // Vault's answer to a LIST that finds nothing: 404 with no error message.
            Err(ClientError::Api {
                status: 404,
                message,
                ..
            }) if message.is_empty() => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Every lease id under `prefix`, walking its folders (root only).
    pub async fn list_leases_recursive(&self, prefix: &str) -> Result<Vec<String>, ClientError> {
        let mut found = Vec::new();
        let mut folders = vec![prefix.to_string()];
        while let Some(folder) = folders.pop() {
            let folder = if folder.is_empty() || folder.ends_with('/') {
                folder
            } else {
                format!("{folder}/")
            };
            for key in self.list_leases(&folder).await? {
                let full = format!("{folder}{key}");
                if key.ends_with('/') {
                    folders.push(full);
                } else {
                    found.push(full);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// What pgwarden knows of the token in use (`auth/token/lookup-self`).
    pub async fn lookup_self(&self) -> Result<TokenLookup, ClientError> {
        let what = "lookup-self".to_string();
        let answer = self
            .call(reqwest::Method::GET, paths::LOOKUP_SELF, None, &what)
            .await?;
        Ok(parse::<SecretResponse<TokenLookup>>(answer, &what)?.data)
    }
}
