//! The Vault-compatible HTTP API. `routes` maps a path to a route and says who may call it;
//! `handle` authenticates, checks that, and hands the request to the module of its path family
//! (`creds`, `leases`, `config`, `roles`, `kv`, `tokens`, `requests`, `audit`, `sys`), each
//! endpoint one short function from a typed body to a typed response. Errors become Vault's
//! error body once, in `ServerError`'s `IntoResponse`. Every request but successful reads of
//! the audit log itself leaves one audit record: who, what, on what, and how it ended.

mod audit;
mod caller;
mod config;
mod creds;
mod kv;
mod leases;
mod request;
mod requests;
pub(crate) mod respond;
mod roles;
mod routes;
mod static_roles;
mod sys;
mod tokens;

use crate::audit::{AuditLog, REQUEST_ID};
use crate::broker::Broker;
use crate::error::ServerError;
use crate::logins::Logins;
use crate::metrics::{Metrics, ResponseLabels};
use crate::policy::PolicyHolder;
use crate::tokens::Tokens;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use caller::{Admitted, Caller};
use pgwarden_core::{AuditEvent, Outcome};
use request::json;
use routes::{Access, Op, Route};
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use request::MAX_BODY_BYTES;

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
    /// The state store.
    pub store: Arc<dyn pgwarden_store::Store>,
    /// Access requests.
    pub requests: Arc<crate::requests::Requests>,
    /// The audit log.
    pub audit: AuditLog,
    /// Static roles.
    pub static_roles: Arc<crate::static_roles::StaticRoles>,
    /// Turns for API requests: at most `http.max_requests_in_flight` are worked on at once.
    pub turns: Arc<crate::turns::Turns>,
}

/// What a handler adds to its request's audit record, as a response extension: the object
/// the path does not name (the lease issued), the actor a login established, a detail.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// Who, when the request's token does not say (a login).
    pub actor: Option<String>,
    /// On what, instead of the path.
    pub object: Option<String>,
    /// Anything else worth keeping.
    pub detail: Option<String>,
    /// A durable record that the action started was stored before it took effect: the
    /// record of how it ended need not hold up the response.
    pub started: bool,
}

impl AuditNote {
    /// A note naming the `object` acted on, with `detail`.
    pub fn about(object: impl Into<String>, detail: impl Into<String>) -> AuditNote {
        AuditNote {
            actor: None,
            object: Some(object.into()),
            detail: Some(detail.into()),
            started: false,
        }
    }

    /// This note, for an action whose start was recorded durably before it took effect.
    pub fn after_start(self) -> AuditNote {
        AuditNote {
            started: true,
            ..self
        }
    }

    /// Attaches this note to `response`.
    pub fn on(self, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// The audit action of a request refused before it was routed: a path no route serves, or
/// that is not UTF-8 or holds a control character, a method the route does not take, a body
/// too large or unreadable.
const REFUSED: &str = "request.refused";

/// The whole HTTP surface.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/sys/health", get(sys::health))
        .route("/metrics", get(sys::metrics))
        .route("/ui/requests", get(crate::ui::requests))
        .route("/v1/{*path}", any(v1))
        .fallback(|| async { ServerError::NotFound("no handler for this path".into()) })
        .with_state(state)
        .layer(request::body_limit())
        .layer(axum::middleware::map_response(
            request::vault_payload_too_large,
        ))
        // Answers carry passwords and tokens: no cache (a proxy's, a browser's) may keep one.
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            ),
        )
}

async fn v1(
    State(state): State<Arc<AppState>>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    // Axum's refusal of a path that is not UTF-8 once decoded answers in Vault's error shape,
    // like every other.
    let (path, admitted) = match path {
        Ok(Path(path)) => {
            let admitted = admit(&method, &path, &query, body).await;
            (path, admitted)
        }
        Err(rejection) => (
            String::new(),
            Err(ServerError::BadRequest(format!(
                "invalid request path: {}",
                rejection.body_text()
            ))),
        ),
    };
    let response = match admitted {
        Ok((op, body)) => serve_in_turn(&state, &method, &path, query, headers, op, body).await,
        Err(error) => {
            // Refused before any token was read: recorded all the same, so that probing
            // leaves a trace. Named by the path as sent when it could not be decoded.
            let object = if path.is_empty() { uri.path() } else { &path };
            let refused = Err(error);
            let (event, _) = audit_event("anonymous".into(), REFUSED, object, &refused);
            state.audit.submit(event);
            refused
        }
    }
    .unwrap_or_else(|error| {
        if error.status() >= 500 {
            tracing::error!(%method, path, %error, "request failed");
        }
        error.into_response()
    });
    state
        .metrics
        .http_responses
        .get_or_create(&ResponseLabels {
            code: response.status().as_u16(),
        })
        .inc();
    response
}

/// Checks the path and method, and reads the body, before the request takes a turn: a
/// client slow to send its body holds none, and one that hangs up meanwhile leaves nothing.
async fn admit(
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<(Op, Bytes), ServerError> {
    if path.chars().any(char::is_control) {
        return Err(ServerError::BadRequest(
            "the path contains a control character".into(),
        ));
    }
    if routes::parse(path) == Route::Unknown {
        return Err(ServerError::NotFound(format!(
            "no handler for path {path:?}"
        )));
    }
    let op = request::operation(method, query)?;
    let body = request::read_body(op, body).await?;
    Ok((op, body))
}

/// Waits for a turn (while the client is still there: one that hangs up now leaves nothing
/// behind), then serves the request on a task of its own that keeps the turn until its work
/// ends, even if the client hangs up later: a flood of clients that hang up cannot pile up
/// work without bound, and none can stop a request half-way, between a write to the state
/// and the database statement it covers (axum drops this future when its client hangs up).
async fn serve_in_turn(
    state: &Arc<AppState>,
    method: &Method,
    path: &str,
    query: HashMap<String, String>,
    headers: HeaderMap,
    op: Op,
    body: Bytes,
) -> Result<Response, ServerError> {
    let database = database_of(state, path, &body).await;
    let Some(turn) = state.turns.take(database.as_deref()).await else {
        return Err(ServerError::Unavailable(
            "the server is shutting down".into(),
        ));
    };
    let task = {
        let (state, path) = (state.clone(), path.to_string());
        let request_id = uuid::Uuid::new_v4().to_string();
        tokio::spawn(REQUEST_ID.scope(request_id, async move {
            let response = handle(&state, &path, &query, &headers, op, &body).await;
            drop(turn);
            response
        }))
    };
    task.await.unwrap_or_else(|e| {
        Err(ServerError::Internal(format!(
            "request handler {method} {path} failed: {e}"
        )))
    })
}

/// The database connection (`<mount>/<connection>`) whose credentials the request at `path`
/// issues, renews or revokes, for its database's share of the turns: the connection of the
/// role asked for, or of the lease named (as recorded with the lease, whatever its role has
/// become since). Read from the path, the body and the state alone: nothing is checked yet,
/// and a request refused later counts the same. `None` for other requests, for a revocation
/// queued for later (`"sync": false`, which waits for no database), and for a role or lease
/// that does not exist.
async fn database_of(state: &AppState, path: &str, body: &Bytes) -> Option<String> {
    /// A renewal's or revocation's body, for the lease it names.
    #[derive(serde::Deserialize, Default)]
    struct LeaseBody {
        lease_id: Option<String>,
        sync: Option<bool>,
    }
    let lease_body = || serde_json::from_slice::<LeaseBody>(body).unwrap_or_default();
    let lease_id = match routes::parse(path) {
        Route::Creds { mount, role } => {
            let role = state.broker.catalog().role(mount, role).ok()?;
            return Some(format!("{mount}/{}", role.db_name));
        }
        Route::Renew(id) => id.or_else(|| lease_body().lease_id)?,
        Route::Revoke(id) => {
            let LeaseBody { lease_id, sync } = lease_body();
            if sync == Some(false) {
                return None;
            }
            id.or(lease_id)?
        }
        _ => return None,
    };
    let lease = state.store.get_lease(&lease_id).await.ok()??;
    Some(format!("{}/{}", lease.mount, lease.role.db_name))
}

/// Serves an admitted request and records it in the audit log.
async fn handle(
    state: &AppState,
    path: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    op: Op,
    body: &Bytes,
) -> Result<Response, ServerError> {
    let route = routes::parse(path);
    let mut actor = String::from("anonymous");
    let incoming = Incoming {
        route: route.clone(),
        op,
        path,
        query,
        headers,
        body,
    };
    let result = serve(state, &incoming, &mut actor).await;
    // Reading the audit log is not recorded (a tail would fill it), unless it was refused. A
    // success is answered once its record is durable, unless a durable record of its start
    // came before; a failure (perhaps the state database is unreachable, so the record
    // cannot be stored yet either) is answered at once. So is a lease look-up: it changes
    // nothing, and agents, proxies and clients send one every few minutes per credential.
    if route != Route::Audit || result.is_err() {
        let (event, wait) = audit_event(actor, route.action(op), path, &result);
        if wait && route != Route::Lookup {
            state.audit.record(event).await;
        } else {
            state.audit.submit(event);
        }
    }
    result
}

/// The audit record of a request that ended with `result`, and whether the response waits
/// until it is durable (a success whose start was not recorded durably before).
fn audit_event(
    actor: String,
    action: &str,
    path: &str,
    result: &Result<Response, ServerError>,
) -> (AuditEvent, bool) {
    match result {
        Ok(response) => {
            let note = response
                .extensions()
                .get::<AuditNote>()
                .cloned()
                .unwrap_or_default();
            let actor = note.actor.unwrap_or(actor);
            let object = note.object.unwrap_or_else(|| path.to_string());
            let event = AuditEvent::now(&actor, action, &object, Outcome::Success)
                .with_detail(note.detail.unwrap_or_default());
            (event, !note.started)
        }
        Err(error) => {
            let outcome = match error.status() {
                401 | 403 => Outcome::Denied,
                _ => Outcome::Failure,
            };
            let event =
                AuditEvent::now(&actor, action, path, outcome).with_detail(error.to_string());
            (event, false)
        }
    }
}

/// The audit record saying that `incoming`'s action, by `caller`, started.
fn started(caller: &Caller, incoming: &Incoming<'_>) -> AuditEvent {
    let action = incoming.route.action(incoming.op);
    AuditEvent::now(caller.subject(), action, incoming.path, Outcome::Started)
}

/// A request as read off the wire.
struct Incoming<'a> {
    route: Route<'a>,
    op: Op,
    path: &'a str,
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

/// Authenticates (setting `actor`), checks the route's access rule and dispatches.
async fn serve(
    state: &AppState,
    incoming: &Incoming<'_>,
    actor: &mut String,
) -> Result<Response, ServerError> {
    let Incoming { route, op, .. } = incoming;
    match route.access() {
        Access::Anyone => public(state, route.clone(), *op, incoming.body).await,
        access => {
            let caller: Caller = caller::authenticate(state, incoming.headers).await?;
            actor.clear();
            actor.push_str(caller.subject());
            let admitted = caller::admit(state, caller, access, incoming.path)?;
            dispatch(state, &admitted, incoming).await
        }
    }
}

/// Routes anyone may call: login.
async fn public(
    state: &AppState,
    route: Route<'_>,
    op: Op,
    body: &Bytes,
) -> Result<Response, ServerError> {
    match (route, op) {
        (Route::Login { mount }, Op::Write) => Ok(tokens::login(state, mount, json(body)?)
            .await?
            .into_response()),
        _ => Err(ServerError::MethodNotAllowed),
    }
}

/// Routes for an admitted caller: path family and operation to endpoint.
async fn dispatch(
    state: &AppState,
    admitted: &Admitted,
    incoming: &Incoming<'_>,
) -> Result<Response, ServerError> {
    let caller = &admitted.caller;
    let (body, query) = (incoming.body, incoming.query);
    Ok(match (incoming.route.clone(), incoming.op) {
        (Route::TokenLookupSelf, Op::Read) => tokens::lookup_self(caller).into_response(),
        (Route::TokenRenewSelf, Op::Write) => tokens::renew_self(state, caller, json(body)?)
            .await?
            .into_response(),
        (Route::TokenRevokeSelf, Op::Write) => {
            tokens::revoke_self(state, caller).await?.into_response()
        }
        (Route::TokenRevokeAccessor, Op::Write) => tokens::revoke_accessor(state, json(body)?)
            .await?
            .into_response(),
        (Route::Kv { mount, path }, Op::Read) => kv::read(state, mount, &path)?.into_response(),
        (Route::Creds { mount, role }, Op::Read | Op::Write) => {
            creds::issue(state, admitted, mount, role, started(caller, incoming))
                .await?
                .into_response()
        }
        (Route::Renew(id), Op::Write) => leases::renew(state, caller, id, json(body)?)
            .await?
            .into_response(),
        (Route::Revoke(id), Op::Write) => {
            let started = started(caller, incoming);
            leases::revoke(state, caller, id, json(body)?, started)
                .await?
                .into_response()
        }
        (Route::RevokePrefix(prefix), Op::Write) => {
            leases::revoke_prefix(state, &prefix).await?.into_response()
        }
        (Route::Lookup, Op::Write) => leases::lookup(state, caller, json(body)?)
            .await?
            .into_response(),
        (Route::ListLeases(prefix), Op::List) => leases::list(state, &prefix).await?,
        (Route::Orphans, Op::Read | Op::List) => sys::orphans(state).into_response(),
        (Route::Requests, Op::Write) => requests::create(state, caller, json(body)?)
            .await?
            .into_response(),
        (Route::Requests, Op::Read | Op::List) => {
            requests::list(state, caller, query).await?.into_response()
        }
        (Route::Request(id), Op::Read) => requests::read(state, caller, id).await?.into_response(),
        (Route::Request(id), Op::Delete) => {
            requests::withdraw(state, caller, id).await?.into_response()
        }
        (Route::Decide { id, approve }, Op::Write) => {
            requests::decide(state, caller, id, approve, json(body)?)
                .await?
                .into_response()
        }
        (Route::RequestCreds(id), Op::Read) => {
            requests::creds(state, caller, id).await?.into_response()
        }
        (Route::Audit, Op::Read) => audit::read(state, query).await?.into_response(),
        (Route::Config { mount, name: None }, Op::List) => config::list(state, mount)?,
        (
            Route::Config {
                mount,
                name: Some(name),
            },
            Op::Read,
        ) => config::read(state, mount, name)?.into_response(),
        (
            Route::Config {
                mount,
                name: Some(name),
            },
            Op::Write,
        ) => config::write(state, mount, name, json(body)?)
            .await?
            .into_response(),
        (
            Route::Config {
                mount,
                name: Some(name),
            },
            Op::Delete,
        ) => config::delete(state, mount, name).await?.into_response(),
        (Route::Role { mount, name: None }, Op::List) => roles::list(state, mount)?,
        (
            Route::Role {
                mount,
                name: Some(name),
            },
            Op::Read,
        ) => roles::read(state, mount, name)?.into_response(),
        (
            Route::Role {
                mount,
                name: Some(name),
            },
            Op::Write,
        ) => roles::write(state, mount, name, json(body)?)
            .await?
            .into_response(),
        (
            Route::Role {
                mount,
                name: Some(name),
            },
            Op::Delete,
        ) => roles::delete(state, mount, name).await?.into_response(),
        (Route::StaticRole { mount, name: None }, Op::List) => {
            static_roles::list(state, mount).await?
        }
        (
            Route::StaticRole {
                mount,
                name: Some(name),
            },
            Op::Read,
        ) => static_roles::read(state, mount, name)
            .await?
            .into_response(),
        (
            Route::StaticRole {
                mount,
                name: Some(name),
            },
            Op::Write,
        ) => static_roles::write(state, mount, name, json(body)?)
            .await?
            .into_response(),
        (
            Route::StaticRole {
                mount,
                name: Some(name),
            },
            Op::Delete,
        ) => static_roles::delete(state, mount, name)
            .await?
            .into_response(),
        (Route::StaticCreds { mount, name }, Op::Read) => static_roles::creds(state, mount, name)
            .await?
            .into_response(),
        (Route::RotateRoot { mount, name }, Op::Write) => config::rotate_root(state, mount, name)
            .await?
            .into_response(),
        (Route::RotateRole { mount, name }, Op::Write) => static_roles::rotate(state, mount, name)
            .await?
            .into_response(),
        _ => return Err(ServerError::MethodNotAllowed),
    })
}
