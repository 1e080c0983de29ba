//! The Vault-compatible HTTP API: one router, thin handlers over the broker and catalog.

mod caller;
mod respond;
mod routes;
mod tokens;

use crate::broker::Broker;
use crate::catalog::ConnectionWrite;
use crate::error::ServerError;
use crate::logins::Logins;
use crate::metrics::{Metrics, ResponseLabels};
use crate::policy::PolicyHolder;
use crate::tokens::Tokens;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use pgwarden_core::{RoleSpec, Ttl};
use routes::{Op, Route};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Time a client has to send a request's body once its headers are in.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every handler can reach.
pub struct AppState {
    /// The lease manager.
    pub broker: Arc<Broker>,
    /// The root token.
    pub root_token: SecretString,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Login tokens.
    pub tokens: Tokens,
    /// Auth mounts.
    pub logins: Logins,
    /// The policy in force.
    pub policy: Arc<PolicyHolder>,
    /// Users no lease names.
    pub orphans: Arc<crate::orphans::Orphans>,
    /// KV v1 data: mount → path → key/value.
    pub settings: BTreeMap<String, BTreeMap<String, BTreeMap<String, serde_json::Value>>>,
}

/// The whole HTTP surface.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/sys/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/{*path}", any(v1))
        .fallback(|| async {
            respond::error(&ServerError::NotFound("no handler for this path".into()))
        })
        .with_state(state)
}

async fn health() -> Response {
    axum::Json(json!({
        "initialized": true,
        "sealed": false,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": time::OffsetDateTime::now_utc().unix_timestamp(),
        "version": env!("CARGO_PKG_VERSION"),
        "cluster_name": "pgwarden",
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn operation(method: &Method, query: &HashMap<String, String>) -> Result<Op, ServerError> {
    Ok(match method.as_str() {
        "GET" if query.get("list").is_some_and(|v| v == "true") => Op::List,
        "GET" => Op::Read,
        "PUT" | "POST" => Op::Write,
        "DELETE" => Op::Delete,
        "LIST" => Op::List,
        _ => return Err(ServerError::MethodNotAllowed),
    })
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ServerError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Err(ServerError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    .map_err(|_| {
        ServerError::RequestTimeout(format!(
            "request body not received within {}s",
            BODY_READ_TIMEOUT.as_secs()
        ))
    })?
    .map_err(|_| ServerError::PayloadTooLarge(MAX_BODY_BYTES))
}

/// Parses a JSON body (empty means `{}`), naming what is wrong.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ServerError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text)
        .map_err(|e| ServerError::BadRequest(format!("invalid request body: {e}")))
}

async fn v1(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match handle(&state, &method, &path, &query, &headers, body).await {
        Ok(response) => response,
        Err(e) => {
            if e.status() >= 500 {
                tracing::error!(%method, path, error = %e, "request failed");
            }
            respond::error(&e)
        }
    };
    state
        .metrics
        .http_responses
        .get_or_create(&ResponseLabels {
            code: response.status().as_u16(),
        })
        .inc();
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    increment: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    lease_id: Option<String>,
    #[serde(default)]
    sync: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupBody {
    lease_id: String,
}

fn lease_id(from_path: Option<String>, from_body: Option<String>) -> Result<String, ServerError> {
    from_path
        .or(from_body)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ServerError::BadRequest("lease_id is required".into()))
}

/// A timestamp as Vault writes them.
pub(super) fn rfc3339(t: time::OffsetDateTime) -> String {
    // Only instants past year 9999 fail to format; pgwarden caps dates before that.
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

async fn handle(
    state: &AppState,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let route = routes::parse(path);
    if route == Route::Unknown {
        return Err(ServerError::NotFound(format!(
            "no handler for path {path:?}"
        )));
    }
    let op = operation(method, query)?;
    let body = if op == Op::Write {
        read_body(headers, body).await?
    } else {
        Bytes::new()
    };
    if let Route::Login { mount } = route {
        return match op {
            Op::Write => tokens::login(state, mount, parse_json(&body)?).await,
            _ => Err(ServerError::MethodNotAllowed),
        };
    }
    let caller = caller::authenticate(state, headers)?;
    if matches!(route, Route::Config { .. } | Route::Role { .. }) {
        caller.require_root(state, path)?;
    }
    let broker = &state.broker;
    let catalog = broker.catalog();
    Ok(match (route, op) {
        (Route::TokenLookupSelf, Op::Read) => tokens::lookup_self(&caller),
        (Route::TokenRenewSelf, Op::Write) => {
            tokens::renew_self(state, caller, parse_json(&body)?)?
        }
        (Route::TokenRevokeSelf, Op::Write) => tokens::revoke_self(state, &caller).await?,
        (Route::TokenRevokeAccessor, Op::Write) => {
            caller.require_root(state, "auth/token/revoke-accessor")?;
            tokens::revoke_accessor(state, parse_json(&body)?).await?
        }
        (Route::Kv { mount, path }, Op::Read) => {
            // Authorize first, so a caller without a grant cannot probe which paths exist.
            caller.authorize(state, mount, &path)?;
            let full = format!("{mount}/{path}");
            let data = state
                .settings
                .get(mount)
                .ok_or_else(|| ServerError::NotFound(format!("no handler for path {full:?}")))?
                .get(&path)
                .ok_or_else(|| ServerError::NotFound(format!("no settings at {full:?}")))?;
            respond::envelope(json!(data), None, None)
        }
        (Route::Creds { mount, role }, Op::Read | Op::Write) => {
            let cap = caller.authorize(state, mount, role)?;
            let issued = broker.issue(mount, role, caller.owner(), cap).await?;
            let ttl = issued.lease.granted_ttl().as_secs();
            respond::envelope(
                json!({
                    "username": issued.lease.username,
                    "password": issued.password.expose_secret(),
                    "host": issued.endpoint.host,
                    "port": issued.endpoint.port,
                    "database": issued.endpoint.database,
                }),
                Some((&issued.lease.id, ttl)),
                None,
            )
        }
        (Route::Renew(id), Op::Write) => {
            let request: RenewBody = parse_json(&body)?;
            let id = lease_id(id, request.lease_id)?;
            caller.require_owner(state, &broker.lookup(&id)?)?;
            let renewed = broker
                .renew(&id, request.increment.unwrap_or_default())
                .await?;
            let mut response = respond::envelope(
                serde_json::Value::Null,
                Some((&renewed.lease.id, renewed.ttl.as_secs())),
                renewed.warning.map(|w| vec![w]),
            );
            *response.status_mut() = StatusCode::OK;
            response
        }
        (Route::Revoke(id), Op::Write) => {
            let request: RevokeBody = parse_json(&body)?;
            let id = lease_id(id, request.lease_id)?;
            caller.require_owner(state, &broker.lookup(&id)?)?;
            if request.sync == Some(false) {
                broker.revoke_later(&id)?;
                respond::empty(StatusCode::ACCEPTED)
            } else {
                broker.revoke(&id).await?;
                respond::empty(StatusCode::NO_CONTENT)
            }
        }
        (Route::RevokePrefix(prefix), Op::Write) => {
            caller.require_root(state, "sys/leases/revoke-prefix")?;
            broker.revoke_prefix(&prefix).await?;
            respond::empty(StatusCode::NO_CONTENT)
        }
        (Route::Lookup, Op::Write) => {
            let request: LookupBody = parse_json(&body)?;
            let lease = broker.lookup(&request.lease_id)?;
            caller.require_owner(state, &lease)?;
            let now = time::OffsetDateTime::now_utc();
            respond::envelope(
                json!({
                    "id": lease.id,
                    "issue_time": rfc3339(lease.issued_at),
                    "expire_time": rfc3339(lease.expires_at),
                    "last_renewal": lease.last_renewal.map(rfc3339),
                    "renewable": lease.state == pgwarden_core::LeaseState::Active && now < lease.max_expires_at,
                    "ttl": lease.remaining(now).as_secs(),
                    "state": lease.state.as_str(),
                    "revocation_attempts": lease.revoke_attempts,
                    "last_error": lease.last_error,
                }),
                None,
                None,
            )
        }
        (Route::Orphans, Op::Read | Op::List) => {
            caller.require_root(state, "sys/orphans")?;
            let orphans: Vec<serde_json::Value> = state
                .orphans
                .list()
                .into_iter()
                .map(|o| {
                    json!({
                        "username": o.username,
                        "connection": o.connection,
                        "first_seen": rfc3339(o.first_seen),
                        "drop_at": o.drop_at.map(rfc3339),
                    })
                })
                .collect();
            respond::envelope(json!({ "orphans": orphans }), None, None)
        }
        (Route::ListLeases(prefix), Op::List) => {
            caller.require_root(state, "sys/leases/lookup")?;
            respond::keys(broker.list(&prefix)?)
        }
        (Route::Config { mount, name: None }, Op::List) => {
            respond::keys(catalog.connection_names(mount)?)
        }
        (
            Route::Config {
                mount,
                name: Some(name),
            },
            Op::Read,
        ) => respond::envelope(catalog.connection_info(mount, name)?, None, None),
        (
            Route::Config {
                mount,
                name: Some(name),
            },
            Op::Write,
        ) => {
            catalog
                .put_connection(mount, name, parse_json::<ConnectionWrite>(&body)?)
                .await?;
            respond::empty(StatusCode::NO_CONTENT)
        }
        (
            Route::Config {
                mount,
                name: Some(name),
            },
            Op::Delete,
        ) => {
            broker.delete_connection(mount, name).await?;
            respond::empty(StatusCode::NO_CONTENT)
        }
        (Route::Role { mount, name: None }, Op::List) => respond::keys(catalog.role_names(mount)?),
        (
            Route::Role {
                mount,
                name: Some(name),
            },
            Op::Read,
        ) => {
            let spec = catalog.role_spec(mount, name)?;
            respond::envelope(
                serde_json::to_value(spec).map_err(|e| ServerError::Internal(e.to_string()))?,
                None,
                None,
            )
        }
        (
            Route::Role {
                mount,
                name: Some(name),
            },
            Op::Write,
        ) => {
            catalog.put_role(mount, name, parse_json::<RoleSpec>(&body)?)?;
            respond::empty(StatusCode::NO_CONTENT)
        }
        (
            Route::Role {
                mount,
                name: Some(name),
            },
            Op::Delete,
        ) => {
            catalog.delete_role(mount, name)?;
            respond::empty(StatusCode::NO_CONTENT)
        }
        _ => return Err(ServerError::MethodNotAllowed),
    })
}
