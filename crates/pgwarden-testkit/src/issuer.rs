//! A JWT issuer for tests: signs tokens with fixed test keys (RS256 and ES256) and serves its
//! JWKS and OIDC discovery document over HTTP, so key rotation can be exercised live. Also a
//! fake Kubernetes API server that answers TokenReviews the way the real one does.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fixed test key pair: its id, private key and public JWK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    /// RSA 2048, RS256, kid `rsa-1`.
    Rsa1,
    /// RSA 2048, RS256, kid `rsa-2` (for rotation).
    Rsa2,
    /// P-256, ES256, kid `ec-1`.
    Ec1,
}

impl TestKey {
    /// The key id.
    pub fn kid(self) -> &'static str {
        match self {
            TestKey::Rsa1 => "rsa-1",
            TestKey::Rsa2 => "rsa-2",
            TestKey::Ec1 => "ec-1",
        }
    }

    fn jwk(self) -> Value {
        let text = match self {
            TestKey::Rsa1 => include_str!("../keys/rsa-1.jwk.json"),
            TestKey::Rsa2 => include_str!("../keys/rsa-2.jwk.json"),
            TestKey::Ec1 => include_str!("../keys/ec-1.jwk.json"),
        };
        serde_json::from_str(text).expect("test JWKs are valid JSON")
    }

    fn encoding_key(self) -> (Algorithm, EncodingKey) {
        match self {
            TestKey::Rsa1 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(include_bytes!("../keys/rsa-1.pem")).expect("test key"),
            ),
            TestKey::Rsa2 => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(include_bytes!("../keys/rsa-2.pem")).expect("test key"),
            ),
            TestKey::Ec1 => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(include_bytes!("../keys/ec-1.pem")).expect("test key"),
            ),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Signs `claims` with `key` (kid in the header).
pub fn sign(key: TestKey, claims: &Value) -> String {
    sign_with_header(key, |_| {}, claims)
}

/// Signs `claims` with `key` under its usual header (kid included) as `edit` changes it: another
/// algorithm of the key's family, a `crit` parameter…
pub fn sign_with_header(key: TestKey, edit: impl FnOnce(&mut Header), claims: &Value) -> String {
    let (alg, encoding) = key.encoding_key();
    let mut header = Header::new(alg);
    header.kid = Some(key.kid().to_string());
    edit(&mut header);
    encode(&header, claims, &encoding).expect("signing with a test key")
}

/// Claims of a projected service-account token for `namespace`/`name`, valid for `ttl` seconds.
pub fn service_account_claims(
    issuer: &str,
    audience: &str,
    namespace: &str,
    name: &str,
    ttl: i64,
) -> Value {
    let now = unix_now();
    json!({
        "iss": issuer,
        "aud": [audience],
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": { "name": name, "uid": format!("uid-{namespace}-{name}") },
            "pod": { "name": format!("{name}-pod"), "uid": "pod-uid" },
        },
    })
}

/// An HTTP server publishing `/.well-known/openid-configuration` and `/jwks` for the keys it holds.
pub struct TestIssuer {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<TestKey>>>,
    server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    /// Starts serving with `keys` published.
    pub async fn start(keys: &[TestKey]) -> TestIssuer {
        let keys = Arc::new(Mutex::new(keys.to_vec()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the test issuer");
        let addr = listener.local_addr().expect("local address");
        let issuer = format!("http://{addr}");
        let published = keys.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let issuer = issuer.clone();
                    async move {
                        axum::Json(
                            json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") }),
                        )
                    }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let keys: Vec<Value> = published
                        .lock()
                        .expect("keys")
                        .iter()
                        .map(|k| k.jwk())
                        .collect();
                    async move { axum::Json(json!({ "keys": keys })) }
                }),
            );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestIssuer { addr, keys, server }
    }

    /// The issuer URL (`iss`), also the discovery base.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// The JWKS document of the keys published now.
    pub fn jwks_json(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .lock()
            .expect("keys")
            .iter()
            .map(|k| k.jwk())
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// Publishes another key (key rotation).
    pub fn publish(&self, key: TestKey) {
        self.keys.lock().expect("keys").push(key);
    }

    /// A person's OIDC ID token signed with `key`: `email` as subject and email claim, and
    /// `groups`, valid for ten minutes.
    pub fn person_token(
        &self,
        key: TestKey,
        audience: &str,
        email: &str,
        groups: &[&str],
    ) -> String {
        let claims = serde_json::json!({"iss": self.issuer(), "aud": audience,
            "exp": unix_now() + 600, "sub": email, "email": email, "groups": groups});
        sign(key, &claims)
    }

    /// A projected service-account token signed with `key`.
    pub fn service_account_token(
        &self,
        key: TestKey,
        audience: &str,
        namespace: &str,
        name: &str,
    ) -> String {
        sign(
            key,
            &service_account_claims(&self.issuer(), audience, namespace, name, 600),
        )
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The audience of a token made for the API server itself (a pod's default token).
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc";

/// A token the fake API server knows: its value, user name and audiences.
type KnownToken = (String, String, Vec<String>);

/// A fake Kubernetes API server answering `POST /apis/authentication.k8s.io/v1/tokenreviews`
/// with the real TokenReview JSON: it authenticates the reviewer by bearer token and reviews
/// tokens from a table of known tokens, each valid for its audiences, as a real API server
/// does: for `spec.audiences` (its own when none are asked), answering the ones that matched
/// in `status.audiences`.
pub struct FakeApiServer {
    addr: SocketAddr,
    scheme: &'static str,
    tokens: Arc<Mutex<Vec<KnownToken>>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts the fake over plain HTTP; only `reviewer_token` may create TokenReviews.
    pub async fn start(reviewer_token: &str) -> FakeApiServer {
        FakeApiServer::start_with(reviewer_token, None).await
    }

    /// Starts the fake over HTTPS with a certificate from `ca`, as a real API server runs.
    pub async fn start_tls(reviewer_token: &str, ca: &crate::tls::TestCa) -> FakeApiServer {
        FakeApiServer::start_with(reviewer_token, Some(ca.server_config.clone())).await
    }

    async fn start_with(
        reviewer_token: &str,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> FakeApiServer {
        let tokens: Arc<Mutex<Vec<KnownToken>>> = Arc::default();
        let known = tokens.clone();
        let reviewer = format!("Bearer {reviewer_token}");
        let app = axum::Router::new().route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, axum::Json(review): axum::Json<Value>| {
                    let known = known.clone();
                    let reviewer = reviewer.clone();
                    async move { review_token(&headers, &reviewer, &known, review) }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server");
        let addr = listener.local_addr().expect("local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = tokio::spawn(async move {
            let _ = match tls {
                Some(config) => {
                    axum::serve(crate::tls::TlsListener::new(listener, config), app).await
                }
                None => axum::serve(listener, app).await,
            };
        });
        FakeApiServer {
            addr,
            scheme,
            tokens,
            server,
        }
    }

    /// The API server URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Makes `token` valid for service account `namespace`/`name`, for the API server itself.
    pub fn add_token(&self, token: &str, namespace: &str, name: &str) {
        self.add_token_for(token, namespace, name, &[API_SERVER_AUDIENCE]);
    }

    /// Makes `token` valid for service account `namespace`/`name`, for `audiences`.
    pub fn add_token_for(&self, token: &str, namespace: &str, name: &str, audiences: &[&str]) {
        self.tokens.lock().expect("tokens").push((
            token.to_string(),
            format!("system:serviceaccount:{namespace}:{name}"),
            audiences.iter().map(|a| a.to_string()).collect(),
        ));
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn review_token(
    headers: &axum::http::HeaderMap,
    reviewer: &str,
    known: &Mutex<Vec<KnownToken>>,
    review: Value,
) -> (axum::http::StatusCode, axum::Json<Value>) {
    use axum::http::StatusCode;
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(reviewer);
    if !authorized {
        let status = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401 });
        return (StatusCode::UNAUTHORIZED, axum::Json(status));
    }
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        _ => vec![API_SERVER_AUDIENCE.to_string()],
    };
    let user = known
        .lock()
        .expect("tokens")
        .iter()
        .find(|(t, _, _)| t == token)
        .map(|(_, user, audiences)| (user.clone(), audiences.clone()));
    let status = match user {
        Some((username, audiences)) => {
            let matched: Vec<&String> = audiences.iter().filter(|a| asked.contains(a)).collect();
            if matched.is_empty() {
                json!({ "authenticated": false, "error": format!("[invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {asked:?}]") })
            } else {
                json!({
                    "authenticated": true,
                    "user": { "username": username, "uid": format!("uid-{username}"), "groups": ["system:serviceaccounts", "system:authenticated"] },
                    "audiences": matched,
                })
            }
        }
        None => {
            json!({ "authenticated": false, "error": "[invalid bearer token, token lookup failed]" })
        }
    };
    let mut response = review.clone();
    response["status"] = status;
    (StatusCode::CREATED, axum::Json(response))
}
