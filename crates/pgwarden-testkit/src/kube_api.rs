//! A Kubernetes API server stand-in for operator tests: no kube-apiserver can run here. It
//! speaks the real JSON and the semantics a controller relies on, for any resource type:
//! get, list and watch (with `resourceVersion`, replaying what happened since), create,
//! replace, merge and JSON patches, the `status` subresource, finalizers with
//! `deletionTimestamp`, `metadata.generation`, optimistic concurrency, equality label
//! selectors, and garbage collection of objects whose owner is gone. Errors are `Status`
//! objects with the real reasons (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One object's place: the collection path (`api/v1/secrets`,
/// `apis/pgwarden.io/v1alpha1/databaseaccessrequests`), its namespace and name.
type Key = (String, String, String);

/// A change, as a watch sends it.
#[derive(Clone)]
struct Change {
    version: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Objects {
    version: u64,
    next_uid: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
}

struct Shared {
    objects: Mutex<Objects>,
    changes: broadcast::Sender<Change>,
    calls: Mutex<std::collections::BTreeSet<Call>>,
}

/// A kind of call a client made, as RBAC names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Call {
    /// `get`, `list`, `watch`, `create`, `update`, `patch` or `delete`.
    pub verb: &'static str,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The resource, with its subresource (`databaseaccessrequests/status`).
    pub resource: String,
    /// The namespace (empty for every namespace).
    pub namespace: String,
}

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a request addresses.
struct Target {
    collection: String,
    /// `None`: every namespace.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// Splits `/api/v1/namespaces/ns/secrets/name/status` and the like.
fn target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (format!("api/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("apis/{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some(namespace.to_string()), rest)
        }
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (plural, None, false),
        [plural, name] => (plural, Some(name.to_string()), false),
        [plural, name, "status"] => (plural, Some(name.to_string()), true),
        _ => return None,
    };
    Some(Target {
        collection: format!("{prefix}/{plural}"),
        namespace,
        name,
        status,
    })
}

/// An error as the API server sends it: a `Status` object.
#[derive(Debug)]
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        });
        (self.code, axum::Json(body)).into_response()
    }
}

fn failure(code: StatusCode, reason: &'static str, message: String) -> Failure {
    Failure {
        code,
        reason,
        message,
    }
}

fn not_found(name: &str) -> Failure {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{name:?} not found"),
    )
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

/// Whether `object`'s labels satisfy an equality selector (`a=b,c==d,e!=f,g`).
fn selected(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| {
        if let Some((key, value)) = term.split_once("!=") {
            labels[key].as_str() != Some(value)
        } else if let Some((key, value)) = term.split_once('=') {
            labels[key].as_str() == Some(value.trim_start_matches('='))
        } else {
            !labels[term].is_null()
        }
    })
}

fn version_of(object: &Value) -> Option<u64> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
}

impl Objects {
    /// Stamps a new resourceVersion on `object`, stores it and records the change.
    fn record(&mut self, key: &Key, kind: &'static str, mut object: Value, shared: &Shared) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        if kind == "DELETED" {
            self.objects.remove(key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        let change = Change {
            version: self.version,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        };
        self.history.push(change.clone());
        let _ = shared.changes.send(change);
    }

    /// Deletes `key` now, or marks it deleting while it has finalizers; then collects the
    /// objects it owned.
    fn delete(&mut self, key: &Key, shared: &Shared) {
        let Some(mut object) = self.objects.get(key).cloned() else {
            return;
        };
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            if object["metadata"]["deletionTimestamp"].is_null() {
                object["metadata"]["deletionTimestamp"] = json!(now());
                self.record(key, "MODIFIED", object, shared);
            }
            return;
        }
        let uid = object["metadata"]["uid"].as_str().unwrap_or("").to_string();
        self.record(key, "DELETED", object, shared);
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in owned {
            self.delete(&key, shared);
        }
    }
}

impl FakeApiServer {
    /// Starts one on a free local port.
    pub async fn start() -> FakeApiServer {
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            objects: Mutex::new(Objects::default()),
            changes,
            calls: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { url, shared, task }
    }

    /// The object at `collection` (e.g. `api/v1/secrets`), namespace and name, if any.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (collection.into(), namespace.into(), name.into());
        self.shared
            .objects
            .lock()
            .unwrap()
            .objects
            .get(&key)
            .cloned()
    }

    /// Stores `object` as a client would create it (panics if it exists).
    pub fn create(&self, collection: &str, object: Value) -> Value {
        let mut objects = self.shared.objects.lock().unwrap();
        create(&mut objects, &self.shared, collection, object).expect("created")
    }

    /// Applies a merge patch to the object's `status` as its controller would (or to the
    /// whole object with `status == false`), like `kubectl patch --type=merge`.
    pub fn merge_patch(
        &self,
        collection: &str,
        namespace: &str,
        name: &str,
        patch: Value,
        status: bool,
    ) -> Value {
        let key = (collection.into(), namespace.into(), name.into());
        let mut objects = self.shared.objects.lock().unwrap();
        let mut object = objects.objects.get(&key).cloned().expect("object exists");
        json_patch::merge(&mut object, &patch);
        update(&mut objects, &self.shared, &key, object, status).expect("patched")
    }

    /// Deletes the object as `kubectl delete` would (finalizers first).
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let key = (collection.into(), namespace.into(), name.into());
        let mut objects = self.shared.objects.lock().unwrap();
        objects.delete(&key, &self.shared);
    }

    /// Every kind of call clients made over HTTP (the test's own calls through these methods
    /// are not counted): what their RBAC must allow.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().iter().cloned().collect()
    }

    /// Every object of `collection` in `namespace`.
    pub fn list(&self, collection: &str, namespace: &str) -> Vec<Value> {
        let objects = self.shared.objects.lock().unwrap();
        objects
            .objects
            .iter()
            .filter(|((c, n, _), _)| c == collection && n == namespace)
            .map(|(_, o)| o.clone())
            .collect()
    }
}

/// Stores a new object; `Err` is the error response.
fn create(
    objects: &mut Objects,
    shared: &Shared,
    collection: &str,
    mut object: Value,
) -> Result<Value, Failure> {
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let name = match object["metadata"]["name"].as_str() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05}", objects.next_uid + 1),
            None => {
                return Err(failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required".into(),
                ));
            }
        },
    };
    let key = (collection.to_string(), namespace, name.clone());
    if objects.objects.contains_key(&key) {
        return Err(failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{collection} {name:?} already exists"),
        ));
    }
    objects.next_uid += 1;
    let metadata = &mut object["metadata"];
    metadata["name"] = json!(name);
    metadata["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", objects.next_uid));
    metadata["creationTimestamp"] = json!(now());
    metadata["generation"] = json!(1);
    if let Some(map) = metadata.as_object_mut() {
        map.remove("deletionTimestamp");
    }
    objects.record(&key, "ADDED", object, shared);
    Ok(objects.objects[&key].clone())
}

/// Replaces the object at `key` with `new` (only its status with `status`), keeping what
/// clients cannot change; checks `resourceVersion` when `new` carries one.
fn update(
    objects: &mut Objects,
    shared: &Shared,
    key: &Key,
    mut new: Value,
    status: bool,
) -> Result<Value, Failure> {
    let Some(old) = objects.objects.get(key).cloned() else {
        return Err(not_found(&key.2));
    };
    if let Some(expected) = version_of(&new)
        && Some(expected) != version_of(&old)
    {
        return Err(failure(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                key.0, key.2
            ),
        ));
    }
    if status {
        let mut object = old.clone();
        object["status"] = new["status"].take();
        new = object;
    } else {
        if !old["status"].is_null() || !new["status"].is_null() {
            new["status"] = old["status"].clone();
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            new["metadata"][field] = old["metadata"][field].clone();
        }
        let changed = |o: &Value| {
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                map.remove("metadata");
                map.remove("status");
            }
            o
        };
        if changed(&old) != changed(&new) {
            let generation = old["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if new["metadata"]["deletionTimestamp"].is_null()
            && let Some(map) = new["metadata"].as_object_mut()
        {
            map.remove("deletionTimestamp");
        }
    }
    if new == old {
        return Ok(old);
    }
    objects.record(key, "MODIFIED", new, shared);
    let deleting = !objects.objects[key]["metadata"]["deletionTimestamp"].is_null();
    let finalized = objects.objects[key]["metadata"]["finalizers"]
        .as_array()
        .is_none_or(|f| f.is_empty());
    if deleting && finalized {
        let last = objects.objects[key].clone();
        objects.delete(key, shared);
        return Ok(last);
    }
    Ok(objects.objects[key].clone())
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(target) = target(parts.uri.path()) else {
        return not_found(parts.uri.path()).into_response();
    };
    let query = query(&parts.uri);
    shared
        .calls
        .lock()
        .unwrap()
        .insert(call(&parts.method, &target, &query));
    let body = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(body) => body,
        Err(error) => {
            return failure(StatusCode::BAD_REQUEST, "BadRequest", error.to_string())
                .into_response();
        }
    };
    match (&parts.method, &target.name) {
        (&Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(&shared, &target, &query)
        }
        (&Method::GET, None) => list(&shared, &target, &query),
        (&Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return failure(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON".into())
                    .into_response();
            };
            if let Some(namespace) = &target.namespace {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let mut objects = shared.objects.lock().unwrap();
            match create(&mut objects, &shared, &target.collection, object) {
                Ok(object) => (StatusCode::CREATED, axum::Json(object)).into_response(),
                Err(failure) => failure.into_response(),
            }
        }
        (method, Some(name)) => {
            let key = (
                target.collection.clone(),
                target.namespace.clone().unwrap_or_default(),
                name.clone(),
            );
            one(&shared, method, &key, target.status, &parts.headers, &body)
        }
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is not supported here", parts.method),
        )
        .into_response(),
    }
}

/// The RBAC verb, group and resource of a request.
fn call(method: &Method, target: &Target, query: &BTreeMap<String, String>) -> Call {
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (method.as_str(), &target.name) {
        ("GET", None) if watching => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "unknown",
    };
    let parts: Vec<&str> = target.collection.split('/').collect();
    let (group, plural) = match parts.as_slice() {
        ["api", _, plural] => (String::new(), plural.to_string()),
        ["apis", group, _, plural] => (group.to_string(), plural.to_string()),
        _ => (String::new(), target.collection.clone()),
    };
    Call {
        verb,
        group,
        resource: if target.status {
            format!("{plural}/status")
        } else {
            plural
        },
        namespace: target.namespace.clone().unwrap_or_default(),
    }
}

/// GET, PUT, PATCH or DELETE of one object.
fn one(
    shared: &Shared,
    method: &Method,
    key: &Key,
    status: bool,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let mut objects = shared.objects.lock().unwrap();
    let Some(current) = objects.objects.get(key).cloned() else {
        return not_found(&key.2).into_response();
    };
    let result = match *method {
        Method::GET => Ok(current),
        Method::DELETE => {
            objects.delete(key, shared);
            Ok(objects.objects.get(key).cloned().unwrap_or(current))
        }
        Method::PUT => match serde_json::from_slice::<Value>(body) {
            Ok(new) => update(&mut objects, shared, key, new, status),
            Err(e) => Err(failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                e.to_string(),
            )),
        },
        Method::PATCH => match patched(current, headers, body) {
            Ok(new) => update(&mut objects, shared, key, new, status),
            Err(response) => Err(response),
        },
        _ => Err(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    };
    match result {
        Ok(object) => axum::Json(object).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// `current` with the request's patch applied, by its content type.
fn patched(mut current: Value, headers: &HeaderMap, body: &Bytes) -> Result<Value, Failure> {
    let invalid = |message: String| failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
    let kind = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| failure(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
    if kind.starts_with("application/json-patch+json") {
        let operations: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| invalid(e.to_string()))?;
        // The API server's JSON patch finds a missing field equal to null (kube-rs tests
        // `/metadata/finalizers` for null before adding the first finalizer).
        for operation in &operations.0 {
            if let json_patch::PatchOperation::Test(test) = operation
                && test.value.is_null()
            {
                let path = test.path.to_string();
                if let Some((parent, field)) = path.rsplit_once('/')
                    && current.pointer(&path).is_none()
                    && let Some(object) = current.pointer_mut(parent).and_then(Value::as_object_mut)
                {
                    object.insert(field.to_string(), Value::Null);
                }
            }
        }
        json_patch::patch(&mut current, &operations).map_err(|e| invalid(e.to_string()))?;
    } else if kind.starts_with("application/merge-patch+json")
        || kind.starts_with("application/strategic-merge-patch+json")
    {
        // The patch's resourceVersion (if any) is a precondition, checked by `update`.
        if let Some(map) = current["metadata"].as_object_mut() {
            map.remove("resourceVersion");
        }
        json_patch::merge(&mut current, &patch);
    } else {
        return Err(failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake API server does not take {kind:?} patches"),
        ));
    }
    Ok(current)
}

/// The list of `target`'s collection (one namespace or all).
fn list(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let objects = shared.objects.lock().unwrap();
    let items: Vec<Value> = objects
        .objects
        .iter()
        .filter(|((collection, namespace, _), object)| {
            *collection == target.collection
                && target.namespace.as_ref().is_none_or(|n| n == namespace)
                && selected(object, query.get("labelSelector"))
        })
        .map(|(_, object)| object.clone())
        .collect();
    axum::Json(json!({
        "kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": objects.version.to_string()},
        "items": items,
    }))
    .into_response()
}

/// A watch: the changes after `resourceVersion`, then live ones, one JSON object per line,
/// until `timeoutSeconds`.
fn watch(shared: &Shared, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let wanted = {
        let (collection, namespace) = (target.collection.clone(), target.namespace.clone());
        let selector = query.get("labelSelector").cloned();
        move |change: &Change| {
            change.collection == collection
                && namespace.as_ref().is_none_or(|n| *n == change.namespace)
                && selected(&change.object, selector.as_ref())
        }
    };
    let (past, live) = {
        let objects = shared.objects.lock().unwrap();
        let past: Vec<Change> = objects
            .history
            .iter()
            .filter(|c| c.version > since && wanted(c))
            .cloned()
            .collect();
        (past, shared.changes.subscribe())
    };
    let last = past.last().map_or(since, |c| c.version);
    let line = |change: &Change| {
        let mut text = json!({"type": change.kind, "object": change.object}).to_string();
        text.push('\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(text))
    };
    let replay = futures::stream::iter(past.iter().map(line).collect::<Vec<_>>());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let live = futures::stream::unfold((live, last), move |(mut live, last)| {
        let wanted = wanted.clone();
        async move {
            loop {
                let received = tokio::time::timeout_at(deadline, live.recv()).await;
                match received {
                    Ok(Ok(change)) if change.version > last && wanted(&change) => {
                        let version = change.version;
                        return Some((line(&change), (live, version)));
                    }
                    Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                    _ => return None,
                }
            }
        }
    });
    use futures::StreamExt;
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(replay.chain(live)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collection_namespace_object_and_status() {
        let t = target("/apis/pgwarden.io/v1alpha1/namespaces/a/databaseaccessrequests/r/status")
            .unwrap();
        assert_eq!(
            t.collection,
            "apis/pgwarden.io/v1alpha1/databaseaccessrequests"
        );
        assert_eq!(t.namespace.as_deref(), Some("a"));
        assert_eq!(t.name.as_deref(), Some("r"));
        assert!(t.status);
        let t = target("/api/v1/secrets").unwrap();
        assert_eq!(
            (t.collection.as_str(), t.namespace, t.name),
            ("api/v1/secrets", None, None)
        );
        assert!(target("/healthz").is_none());
    }

    #[test]
    fn label_selectors_match_equality_and_existence() {
        let object = json!({"metadata": {"labels": {"app": "x", "tier": "db"}}});
        assert!(selected(&object, Some(&"app=x,tier==db".to_string())));
        assert!(selected(&object, Some(&"app".to_string())));
        assert!(!selected(&object, Some(&"app!=x".to_string())));
        assert!(!selected(&object, Some(&"other".to_string())));
    }
}
