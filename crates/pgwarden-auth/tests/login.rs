//! Kubernetes and OIDC logins with real signed tokens: every rejection reason, key rotation,
//! OIDC discovery, and TokenReview against a fake API server speaking the real JSON.

use pgwarden_auth::{
    AuthError, Jwks, JwtAuth, JwtRole, KeySource, KubernetesAuth, KubernetesRole, TokenReviewer,
    Validation,
};
use pgwarden_testkit::issuer::{
    FakeApiServer, TestIssuer, TestKey, service_account_claims, sign, sign_with_header, unix_now,
};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const AUD: &str = "pgwarden";

fn team_a_role() -> KubernetesRole {
    serde_json::from_value(json!({
        "bound_service_account_names": ["*"],
        "bound_service_account_namespaces": ["team-a"],
    }))
    .unwrap()
}

fn k8s(issuer: &TestIssuer, source: KeySource, allow_legacy: bool) -> KubernetesAuth {
    KubernetesAuth {
        mount: "kubernetes".into(),
        validation: Validation::Jwks {
            jwks: Jwks::new(source, reqwest::Client::new(), Duration::from_millis(200)),
            issuer: Some(issuer.issuer()),
            audiences: vec![AUD.into()],
            allow_legacy,
        },
        roles: HashMap::from([("team-a".to_string(), team_a_role())]),
    }
}

fn rejection(err: AuthError) -> (String, &'static str) {
    (err.to_string(), err.label())
}

#[tokio::test]
async fn service_account_login_and_every_rejection() {
    let issuer = TestIssuer::start(&[TestKey::Rsa1, TestKey::Ec1]).await;
    let auth = k8s(&issuer, KeySource::Discovery(issuer.issuer()), false);
    let iss = issuer.issuer();

    for key in [TestKey::Rsa1, TestKey::Ec1] {
        let id = auth
            .login(
                "team-a",
                &issuer.service_account_token(key, AUD, "team-a", "app"),
            )
            .await
            .unwrap();
        assert_eq!(id.subject, "system:serviceaccount:team-a:app");
        assert_eq!(id.metadata["service_account_uid"], "uid-team-a-app");
        assert_eq!(id.display_name, "kubernetes-team-a-app");
    }

    let good = issuer.service_account_token(TestKey::Rsa1, AUD, "team-a", "app");
    let mut claims = service_account_claims(&iss, AUD, "team-a", "app", 600);
    let wrong_issuer =
        format!("permission denied: the token's issuer is not accepted (accepted: [{iss:?}])");
    let cases: Vec<(&str, String, (&str, &str))> = vec![
        (
            "nope",
            good.clone(),
            (
                "login role \"nope\" not found in auth mount \"kubernetes\"",
                "unknown_role",
            ),
        ),
        (
            "team-a",
            issuer.service_account_token(TestKey::Rsa1, "other", "team-a", "app"),
            (
                "permission denied: the token's audience is not accepted (accepted: [\"pgwarden\"])",
                "wrong_audience",
            ),
        ),
        (
            "team-a",
            sign(
                TestKey::Rsa1,
                &service_account_claims(&iss, AUD, "team-a", "app", -3600),
            ),
            ("permission denied: the token has expired", "expired"),
        ),
        (
            "team-a",
            {
                let mut parts: Vec<String> = good.split('.').map(String::from).collect();
                let other = issuer.service_account_token(TestKey::Rsa1, AUD, "team-a", "admin");
                parts[1] = other.split('.').nth(1).unwrap().to_string();
                parts.join(".")
            },
            (
                "permission denied: the token's signature does not verify",
                "bad_signature",
            ),
        ),
        (
            "team-a",
            issuer.service_account_token(TestKey::Rsa1, AUD, "team-b", "app"),
            (
                "permission denied: namespace \"team-b\" is not bound to this login role",
                "namespace_not_bound",
            ),
        ),
        (
            "team-a",
            sign(
                TestKey::Rsa1,
                &service_account_claims("https://elsewhere", AUD, "team-a", "app", 600),
            ),
            (wrong_issuer.as_str(), "wrong_issuer"),
        ),
        (
            "team-a",
            sign(TestKey::Rsa2, &claims),
            (
                "permission denied: no signing key with kid \"rsa-2\" in the key set",
                "unknown_key",
            ),
        ),
        (
            "team-a",
            "not-a-jwt".into(),
            (
                "permission denied: the token is not a valid JWT: InvalidToken",
                "malformed",
            ),
        ),
        (
            "team-a",
            {
                let mut later = service_account_claims(&iss, AUD, "team-a", "app", 600);
                later["iat"] = json!(unix_now() + 3600);
                sign(TestKey::Rsa1, &later)
            },
            (
                "permission denied: the token was issued in the future (iat)",
                "not_yet_valid",
            ),
        ),
        (
            "team-a",
            {
                let mut odd = service_account_claims(&iss, AUD, "team-a", "app", 600);
                odd["iat"] = json!("yesterday");
                sign(TestKey::Rsa1, &odd)
            },
            (
                "permission denied: the token's iat is not a number",
                "malformed",
            ),
        ),
        (
            "team-a",
            {
                claims["nbf"] = json!(unix_now() + 3600);
                sign(TestKey::Rsa1, &claims)
            },
            (
                "permission denied: the token is not valid yet (nbf)",
                "not_yet_valid",
            ),
        ),
        (
            "team-a",
            sign(
                TestKey::Rsa1,
                &json!({"iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "team-a",
            "kubernetes.io/serviceaccount/service-account.name": "app",
            "kubernetes.io/serviceaccount/service-account.uid": "u"}),
            ),
            (
                "permission denied: legacy secret-based service-account tokens are not accepted; use a projected token",
                "legacy_token",
            ),
        ),
    ];
    for (role, token, (message, label)) in cases {
        let got = rejection(auth.login(role, &token).await.unwrap_err());
        assert_eq!(got, (message.to_string(), label), "case {label}");
    }

    // A checked claim that is missing fails its check; it is never skipped.
    let full = service_account_claims(&iss, AUD, "team-a", "app", 600);
    let without = |claim: &str| {
        let mut claims = full.clone();
        claims.as_object_mut().unwrap().remove(claim);
        sign(TestKey::Rsa1, &claims)
    };
    let missing = [
        (
            "aud",
            "permission denied: the token has no audience (aud); accepted: [\"pgwarden\"]"
                .to_string(),
            "wrong_audience",
        ),
        (
            "iss",
            format!("permission denied: the token has no issuer (iss); accepted: [{iss:?}]"),
            "wrong_issuer",
        ),
        (
            "exp",
            "permission denied: the token has no expiry (exp)".to_string(),
            "expired",
        ),
    ];
    for (claim, message, label) in missing {
        let got = rejection(auth.login("team-a", &without(claim)).await.unwrap_err());
        assert_eq!(got, (message, label), "token without {claim}");
    }

    // The key set says rsa-1 is for RS256: another RSA algorithm is refused with it. A header
    // parameter marked critical is one pgwarden does not understand.
    let claims = service_account_claims(&iss, AUD, "team-a", "app", 600);
    let other_alg = sign_with_header(
        TestKey::Rsa1,
        |h| h.alg = jsonwebtoken::Algorithm::RS512,
        &claims,
    );
    assert_eq!(
        rejection(auth.login("team-a", &other_alg).await.unwrap_err()),
        (
            "permission denied: the token is signed with RS512, but its key is for RS256".into(),
            "bad_signature"
        )
    );
    let critical = sign_with_header(
        TestKey::Rsa1,
        |h| h.crit = Some(vec!["exp".into()]),
        &claims,
    );
    assert_eq!(
        rejection(auth.login("team-a", &critical).await.unwrap_err()),
        (
            "permission denied: the token marks header parameters [\"exp\"] critical, which \
             pgwarden does not understand"
                .into(),
            "malformed"
        )
    );
}

#[tokio::test]
async fn new_keys_are_fetched_when_a_new_kid_appears() {
    let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
    let auth = k8s(&issuer, KeySource::Url(issuer.jwks_url()), false);
    auth.login(
        "team-a",
        &issuer.service_account_token(TestKey::Rsa1, AUD, "team-a", "app"),
    )
    .await
    .unwrap();
    let rotated = issuer.service_account_token(TestKey::Rsa2, AUD, "team-a", "app");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = auth.login("team-a", &rotated).await.unwrap_err();
    assert_eq!(err.label(), "unknown_key");
    issuer.publish(TestKey::Rsa2);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let id = auth
        .login("team-a", &rotated)
        .await
        .expect("rotated key fetched on unknown kid");
    assert_eq!(id.subject, "system:serviceaccount:team-a:app");
}

#[tokio::test]
async fn legacy_tokens_only_when_enabled_and_keys_from_a_file() {
    let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
    let dir = std::env::temp_dir().join(format!("pgwarden-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, issuer.jwks_json()).unwrap();
    let legacy = sign(
        TestKey::Rsa1,
        &json!({"iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "team-a",
        "kubernetes.io/serviceaccount/service-account.name": "old",
        "kubernetes.io/serviceaccount/service-account.uid": "u"}),
    );
    let mut auth = k8s(&issuer, KeySource::File(file.clone()), true);
    if let Validation::Jwks { audiences, .. } = &mut auth.validation {
        audiences.clear(); // legacy tokens carry no audience
    }
    let id = auth.login("team-a", &legacy).await.unwrap();
    assert_eq!(id.subject, "system:serviceaccount:team-a:old");
    // Where a token must be for an audience, a legacy one (for none) is refused, whether the
    // mount or the login role asks for it.
    let mut for_pgwarden = k8s(&issuer, KeySource::File(file.clone()), true);
    let mut role = team_a_role();
    role.audience = Some("pgwarden-strict".into());
    for_pgwarden.roles.insert("strict".into(), role);
    for (role, accepted) in [("team-a", AUD), ("strict", "pgwarden-strict")] {
        let err = for_pgwarden.login(role, &legacy).await.unwrap_err();
        assert_eq!(
            rejection(err),
            (
                format!(
                    "permission denied: a legacy service-account token is not for an audience; \
                     this login role accepts only tokens for one of [{accepted:?}]"
                ),
                "wrong_audience"
            )
        );
    }
    let mut strict = k8s(&issuer, KeySource::File(file), false);
    if let Validation::Jwks {
        audiences,
        issuer: iss,
        ..
    } = &mut strict.validation
    {
        audiences.clear();
        *iss = None;
    }
    let err = strict.login("team-a", &legacy).await.unwrap_err();
    assert_eq!(
        rejection(err),
        ("permission denied: legacy secret-based service-account tokens are not accepted; use a projected token".into(), "legacy_token")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn token_review_asks_the_api_server() {
    let api = FakeApiServer::start("reviewer-secret").await;
    api.add_token("opaque-token-1", "team-a", "app");
    let with_audiences = |reviewer: &str, audiences: &[&str]| KubernetesAuth {
        mount: "kubernetes".into(),
        validation: Validation::TokenReview {
            reviewer: TokenReviewer {
                host: api.url(),
                reviewer_token: reviewer.to_string().into(),
                http: reqwest::Client::new(),
            },
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        },
        roles: HashMap::from([("team-a".to_string(), team_a_role())]),
    };
    let auth = |reviewer: &str| with_audiences(reviewer, &[]);
    let id = auth("reviewer-secret")
        .login("team-a", "opaque-token-1")
        .await
        .unwrap();
    assert_eq!(id.subject, "system:serviceaccount:team-a:app");
    let err = auth("reviewer-secret")
        .login("team-a", "forged")
        .await
        .unwrap_err();
    assert_eq!(
        rejection(err),
        ("permission denied: the API server rejected the token: [invalid bearer token, token lookup failed]".into(), "token_review")
    );
    let err = auth("wrong-reviewer")
        .login("team-a", "opaque-token-1")
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unavailable");
    assert!(
        err.to_string().ends_with("failed: HTTP 401 Unauthorized"),
        "{err}"
    );

    // A mount's audiences are asked for: a token made for the API server itself (a pod's
    // default token) is refused, one made for pgwarden accepted; a login role's audience
    // replaces the mount's.
    api.add_token_for("opaque-token-2", "team-a", "app", &[AUD]);
    let for_pgwarden = with_audiences("reviewer-secret", &[AUD]);
    let err = for_pgwarden
        .login("team-a", "opaque-token-1")
        .await
        .unwrap_err();
    assert_eq!(
        rejection(err),
        (
            "permission denied: the API server rejected the token: [invalid bearer token, token \
             audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences \
             [\"pgwarden\"]]"
                .into(),
            "token_review"
        )
    );
    let id = for_pgwarden
        .login("team-a", "opaque-token-2")
        .await
        .unwrap();
    assert_eq!(id.subject, "system:serviceaccount:team-a:app");
    let mut role = team_a_role();
    role.audience = Some("https://kubernetes.default.svc".into());
    let mut by_role = with_audiences("reviewer-secret", &[AUD]);
    by_role.roles.insert("default-token".into(), role);
    by_role
        .login("default-token", "opaque-token-1")
        .await
        .expect("the login role's audience is asked for");
    assert_eq!(
        by_role
            .login("default-token", "opaque-token-2")
            .await
            .unwrap_err()
            .label(),
        "token_review"
    );
}

#[tokio::test]
async fn people_log_in_with_oidc_claims() {
    let issuer = TestIssuer::start(&[TestKey::Ec1]).await;
    let role: JwtRole = serde_json::from_value(json!({
        "user_claim": "email", "groups_claim": "groups", "bound_claims": { "hd": "example.com" }
    }))
    .unwrap();
    let auth = JwtAuth {
        mount: "jwt".into(),
        jwks: Jwks::new(
            KeySource::Discovery(issuer.issuer()),
            reqwest::Client::new(),
            Duration::from_secs(1),
        ),
        issuer: Some(issuer.issuer()),
        audiences: vec![AUD.into()],
        roles: HashMap::from([("people".to_string(), role)]),
    };
    let now = unix_now();
    let claims = |hd: &str| {
        json!({"iss": issuer.issuer(), "aud": AUD, "exp": now + 600, "sub": "123",
        "email": "ola.nordmann@example.com", "groups": ["dba", "team-a"], "hd": hd})
    };
    let id = auth
        .login("people", &sign(TestKey::Ec1, &claims("example.com")))
        .await
        .unwrap();
    assert_eq!(id.subject, "user:ola.nordmann@example.com");
    assert_eq!(id.groups, vec!["dba", "team-a"]);
    let err = auth
        .login("people", &sign(TestKey::Ec1, &claims("evil.com")))
        .await
        .unwrap_err();
    assert_eq!(
        rejection(err),
        (
            "permission denied: claim \"hd\" does not have a value this login role accepts".into(),
            "bound_claims"
        )
    );
    for (claim, label) in [("aud", "wrong_audience"), ("iss", "wrong_issuer")] {
        let mut partial = claims("example.com");
        partial.as_object_mut().unwrap().remove(claim);
        let err = auth
            .login("people", &sign(TestKey::Ec1, &partial))
            .await
            .unwrap_err();
        assert_eq!(err.label(), label, "an OIDC token without {claim}: {err}");
    }
}
