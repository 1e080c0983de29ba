//! A client's way in: its startup packet, who it is (its token checked by pgwarden, or the
//! pod itself for a local client of a sidecar), which pool serves it (made, with its first
//! credential, for the first client of an identity and role) and what it is welcomed with.

use crate::client::{self, Hello, Startup, Stream};
use crate::config::ClientAuth;
use crate::config::PoolMode;
use crate::identity::Refusal;
use crate::pool::{Attached, Checkout, Pool, PoolKey};
use crate::proxy::Shared;
use crate::reply::PgError;
use crate::settings::Settings;
use crate::upstream;
use pgwarden_client::{Auth, ClientError, CredentialProvider, ProviderOptions};
use std::sync::Arc;

/// How a client's way in ended.
pub enum Entry {
    /// It is in.
    In(Admitted),
    /// It was refused: why (a metric label) and what it is told, if it can still be told.
    Refused(Option<Stream>, &'static str, PgError),
    /// Nothing more to do (a cancel request was handled).
    Done,
}

/// A client that is in.
pub struct Admitted {
    /// Its connection.
    pub stream: Stream,
    /// Its pool.
    pub pool: Attached,
    /// The server connection it starts with (session pooling, or the pool's first client).
    pub first: Option<Checkout>,
    /// The server parameters it is told.
    pub parameters: Vec<(String, String)>,
}

/// A client past its startup packet and identity check.
pub struct Identified {
    startup: Startup,
    key: PoolKey,
    acting: Acting,
}

/// The first part of the way in, bounded by `client_login_timeout`: the startup packet and the
/// identity check.
pub async fn identify(
    shared: &Arc<Shared>,
    stream: Stream,
    local: bool,
) -> Result<Identified, Entry> {
    let mut startup = match client::hello(stream, shared.tls.as_ref()).await {
        Ok(Hello::Session(startup)) => startup,
        Ok(Hello::Cancel { pid, secret }) => {
            shared.cancels.cancel(pid, secret).await;
            return Err(Entry::Done);
        }
        Err((stream, error)) => return Err(Entry::Refused(stream, "bad_startup", error)),
    };
    let path = match role_path(startup.user(), &shared.config.mount) {
        Ok(path) => path,
        Err(error) => return Err(Entry::Refused(Some(startup.stream), "bad_startup", error)),
    };
    match who(shared, &mut startup, local).await {
        Ok((subject, groups, acting)) => Ok(Identified {
            startup,
            key: PoolKey {
                subject,
                groups,
                path,
            },
            acting,
        }),
        Err((reason, error)) => Err(Entry::Refused(Some(startup.stream), reason, error)),
    }
}

/// The second part: the pool (made if needed), the database check, the first connection.
pub async fn admit(shared: &Arc<Shared>, identified: Identified) -> Entry {
    let Identified {
        startup,
        key,
        acting,
    } = identified;
    let made = shared
        .registry
        .get(&key, || make_pool(shared, key.clone(), acting.clone()))
        .await;
    let pool = match made {
        Ok(pool) => pool,
        Err((reason, error)) => return Entry::Refused(Some(startup.stream), reason, error),
    };
    if let Acting::Token(token) = &acting {
        // The freshest token of the identity renews the pool's credential from now on.
        pool.client().set_token(token.clone()).await;
    }
    let credential = pool.credential();
    if let Some(asked) = startup.database()
        && asked != credential.database
        && asked != startup.user()
    {
        let error = PgError::new(
            "3D000",
            format!(
                "role {:?} serves database {:?}, not {asked:?}",
                startup.user(),
                credential.database
            ),
        );
        return Entry::Refused(Some(startup.stream), "bad_startup", error);
    }
    let settings = match Settings::from_startup(&startup.parameters) {
        Ok(settings) => settings,
        Err(error) => return Entry::Refused(Some(startup.stream), "bad_startup", error),
    };
    let transaction = shared.config.pool_mode == PoolMode::Transaction;
    let known = pool.parameters();
    let mut first = None;
    let parameters = if transaction && !known.is_empty() {
        known
    } else {
        let mut checkout = match pool.acquire(shared.config.query_wait_timeout).await {
            Ok(checkout) => checkout,
            Err(error) => {
                return Entry::Refused(Some(startup.stream), "server_unavailable", error);
            }
        };
        if let (false, Some(sql)) = (transaction, settings.sql())
            && let Err(error) = upstream::simple_query(checkout.server(), &sql).await
        {
            // The connection has the settings that worked: it is not reused.
            drop(checkout);
            return Entry::Refused(Some(startup.stream), "bad_startup", error);
        }
        let parameters = checkout.server().parameters.clone();
        first = Some(checkout);
        parameters
    };
    if transaction && let Err(error) = settings.check_unchanged(&parameters) {
        return Entry::Refused(Some(startup.stream), "bad_startup", error);
    }
    Entry::In(Admitted {
        stream: startup.stream,
        pool,
        first,
        parameters,
    })
}

/// What the client's identity gives: a pgwarden token (identity mode) or the pod's login.
#[derive(Clone)]
enum Acting {
    /// A pgwarden token of the client's identity.
    Token(secrecy::SecretString),
    /// The pod's own service-account login.
    Pod,
}

/// Who the client is, and how to act as it.
async fn who(
    shared: &Shared,
    startup: &mut Startup,
    local: bool,
) -> Result<(String, Vec<String>, Acting), (&'static str, PgError)> {
    let user = startup.user().to_string();
    let Some(identities) = &shared.identities else {
        if !local {
            return Err((
                "not_local",
                PgError::new(
                    "28000",
                    "the proxy runs as a sidecar: it serves only clients on loopback or its Unix socket",
                ),
            ));
        }
        return Ok(("sidecar".to_string(), Vec::new(), Acting::Pod));
    };
    if !startup.tls && !local {
        return Err((
            "cleartext_without_tls",
            PgError::new(
                "28000",
                "the proxy takes a token as the password only over TLS (sslmode=require) or from loopback or its Unix socket",
            ),
        ));
    }
    let password = startup
        .read_password()
        .await
        .map_err(|e| ("no_password", e))?;
    match identities.verify(&password).await {
        Ok(verified) => Ok((
            verified.subject,
            verified.groups,
            Acting::Token(verified.token),
        )),
        Err(refusal) => {
            let reason = refusal.reason();
            let error = match refusal {
                Refusal::Invalid(why) => PgError::new(
                    "28P01",
                    format!(
                        "password authentication failed for user \"{user}\": pgwarden refused the token: {why}"
                    ),
                ),
                Refusal::Unreachable(why) => {
                    PgError::new("08006", format!("cannot check the token: {why}"))
                }
            };
            Err((reason, error))
        }
    }
}

/// A new pool for `key`: its first credential, issued for the client's identity.
async fn make_pool(
    shared: &Shared,
    key: PoolKey,
    acting: Acting,
) -> Result<Arc<Pool>, (&'static str, PgError)> {
    let auth = match (&acting, &shared.config.auth) {
        (Acting::Token(token), _) => Auth::Token(token.clone()),
        (
            Acting::Pod,
            ClientAuth::Sidecar {
                role,
                mount,
                token_file,
            },
        ) => Auth::Kubernetes {
            mount: mount.clone(),
            role: role.clone(),
            token_file: token_file.clone(),
        },
        (Acting::Pod, ClientAuth::Identity { .. }) => {
            return Err((
                "not_allowed",
                PgError::new("28000", "no identity to act as"),
            ));
        }
    };
    let client = Arc::new(shared.broker.acting_as(auth));
    let options = ProviderOptions {
        revoke_replaced: false,
        ..ProviderOptions::default()
    };
    let provider = CredentialProvider::start(client.clone(), &key.path, options)
        .await
        .map_err(|error| refused_credential(&key, error))?;
    tracing::info!(path = %key.path, subject = %key.subject, lease_id = %provider.current().credential.lease_id, "pool opened");
    let (mount, role) = key.path.split_once("/creds/").unwrap_or(("", &key.path));
    let attrs = shared.config.upstream.attrs_for(mount, role);
    Ok(Pool::new(
        key,
        client,
        provider,
        (shared.connector.clone(), attrs),
        shared.metrics.clone(),
        shared.config.pool_size,
    ))
}

/// What a client is told when pgwarden would not issue its credential (the pool's first, or a
/// new one), and the refusal's metric label: its own refusal (a revoked token, a role the
/// policy no longer grants) is an authorization error, never a connection failure that
/// clients retry.
pub(crate) fn refused_credential(key: &PoolKey, error: ClientError) -> (&'static str, PgError) {
    match error {
        ClientError::Api {
            status: 403,
            message,
            ..
        } => (
            "not_allowed",
            PgError::new(
                "28000",
                format!("{} may not use {}: {message}", key.subject, key.path),
            ),
        ),
        ClientError::Api {
            status, message, ..
        } if status < 500 && status != 429 => (
            "not_allowed",
            PgError::new(
                "28000",
                format!("no credential from {}: {message}", key.path),
            ),
        ),
        other => (
            "pgwarden_unreachable",
            PgError::new(
                "08006",
                format!("cannot get a credential from pgwarden: {other}"),
            ),
        ),
    }
}

/// `database/creds/<role>` for a startup `user` of `<role>` or `<mount>/<role>`.
fn role_path(user: &str, default_mount: &str) -> Result<String, PgError> {
    let valid = |part: &str| {
        part.len() <= 128
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    let (mount, role) = user.split_once('/').unwrap_or((default_mount, user));
    if user.is_empty() {
        return Err(PgError::new(
            "28000",
            "no user name given: the user names the pgwarden role (e.g. appdb-readonly)",
        ));
    }
    if pgwarden_core::audit::holds_secret(user) {
        // Never echoed, logged or sent on as a role name.
        return Err(PgError::new(
            "28000",
            "the user name looks like a token: the user names the pgwarden role (e.g. \
             appdb-readonly), and the token goes in the password",
        ));
    }
    if !valid(mount) || !valid(role) {
        return Err(PgError::new(
            "28000",
            format!(
                "user {} must name a pgwarden role as <role> or <mount>/<role> (a letter or digit, then letters, digits, _ . -)",
                shown(user)
            ),
        ));
    }
    Ok(format!("{mount}/creds/{role}"))
}

/// A user name as errors show it: quoted, or only its length if it is long enough to be a
/// token pasted into the wrong field (errors are logged).
fn shown(user: &str) -> String {
    if user.chars().count() > 63 {
        format!("name of {} characters", user.chars().count())
    } else {
        format!("{user:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_names_the_role() {
        assert_eq!(
            role_path("appdb-readonly", "database").unwrap(),
            "database/creds/appdb-readonly"
        );
        assert_eq!(
            role_path("db2/reader", "database").unwrap(),
            "db2/creds/reader"
        );
        for bad in ["../x", "a/b/c", "x y", "ro\u{0}le"] {
            assert_eq!(
                role_path(bad, "database").unwrap_err().message,
                format!(
                    "user {bad:?} must name a pgwarden role as <role> or <mount>/<role> (a letter or digit, then letters, digits, _ . -)"
                )
            );
        }
        assert_eq!(role_path("", "database").unwrap_err().code, "28000");
        let token = format!("pgw_{}", "Ab1".repeat(14));
        for secret in [token.as_str(), "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"] {
            assert_eq!(
                role_path(secret, "database").unwrap_err().message,
                "the user name looks like a token: the user names the pgwarden role (e.g. \
                 appdb-readonly), and the token goes in the password"
            );
        }
    }
}
