//! Identity and policy end to end: service accounts and people log in, get exactly what the
//! policy grants, touch only their own leases; token revocation is a logout; policy reloads live.

mod common;

use common::*;
use pgwarden_testkit::issuer::{TestIssuer, TestKey, service_account_claims, sign, unix_now};
use serde_json::{Value, json};
use std::time::Duration;

const AUD: &str = "pgwarden";

struct Identity {
    env: Env,
    issuer: TestIssuer,
    policy: std::path::PathBuf,
    _policy_dir: tempfile::TempDir,
}

const POLICY: &str = r#"
grants:
  - subjects: ["system:serviceaccount:team-a:*", "group:team-a"]
    roles: ["database/appdb-user", "database/appdb-readonly", "kv/team-a/*"]
    max_ttl: 30m
  - subjects: ["group:dba"]
    roles: ["database/*"]
"#;

async fn start(policy: &str, token_ttl: &str) -> Identity {
    let issuer = TestIssuer::start(&[TestKey::Rsa1, TestKey::Ec1]).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy_file = policy_dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy).unwrap();
    let extra = format!(
        r#"
policy_file: "{policy}"
auth:
  kubernetes:
    type: kubernetes
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [{AUD}]
    roles:
      team-a: {{ bound_service_account_names: ["*"], bound_service_account_namespaces: [team-a], token_ttl: {token_ttl}, token_max_ttl: 1h }}
      team-b: {{ bound_service_account_names: ["*"], bound_service_account_namespaces: [team-b] }}
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ oidc_discovery: true }}
    audiences: [{AUD}]
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
  partner:
    type: jwt
    issuer: "{iss}"
    keys: {{ oidc_discovery: true }}
    audiences: [{AUD}]
    subject_prefix: partner
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
settings:
  kv:
    team-a/appdb: {{ host: 127.0.0.1, port: 5432, database: appdb, credentials: database/creds/appdb-user }}
"#,
        policy = policy_file.display(),
        iss = issuer.issuer(),
        jwks = issuer.jwks_url(),
    );
    let env = Env::start_with(ROLES, &extra).await;
    Identity {
        env,
        issuer,
        policy: policy_file,
        _policy_dir: policy_dir,
    }
}

impl Identity {
    async fn login_sa(&self, role: &str, namespace: &str, name: &str) -> (u16, Value) {
        let jwt = self
            .issuer
            .service_account_token(TestKey::Rsa1, AUD, namespace, name);
        self.env
            .call_as(
                "",
                "POST",
                "auth/kubernetes/login",
                Some(json!({ "role": role, "jwt": jwt })),
            )
            .await
    }

    async fn token(&self, role: &str, namespace: &str, name: &str) -> String {
        let (status, body) = self.login_sa(role, namespace, name).await;
        assert_eq!(status, 200, "{body}");
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn service_accounts_get_exactly_what_policy_grants() {
    let id = start(POLICY, "1h").await;
    let env = &id.env;
    let (status, body) = id.login_sa("team-a", "team-a", "app").await;
    assert_eq!(status, 200, "{body}");
    let auth = &body["auth"];
    assert!(auth["client_token"].as_str().unwrap().starts_with("pgw_"));
    assert_eq!(
        auth["metadata"],
        json!({"role": "team-a", "service_account_name": "app", "service_account_namespace": "team-a", "service_account_uid": "uid-team-a-app"})
    );
    assert_eq!(auth["lease_duration"], 3600);
    assert_eq!(auth["renewable"], true);
    let a = auth["client_token"].as_str().unwrap().to_string();

    // Granted: a real credential, capped by the grant's 30m.
    let (status, creds) = env
        .call_as(&a, "GET", "database/creds/appdb-user", None)
        .await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["lease_duration"], 1800);
    let user = creds["data"]["username"].as_str().unwrap();
    assert!(user.starts_with("v-kubernet-appdb-us-"), "{user}");
    env.cluster
        .connect_as(user, creds["data"]["password"].as_str().unwrap(), "appdb")
        .await
        .expect("password works");

    // Not granted.
    let (status, body) = env
        .call_as(&a, "GET", "database/creds/appdb-admin", None)
        .await;
    assert_eq!(
        (status, body),
        (403, json!({"errors": ["permission denied"]}))
    );

    // Another namespace may not read team-a's role, nor touch team-a's lease.
    let b = id.token("team-b", "team-b", "app").await;
    let (status, _) = env
        .call_as(&b, "GET", "database/creds/appdb-user", None)
        .await;
    assert_eq!(status, 403);
    let lease = json!({ "lease_id": creds["lease_id"] });
    for path in ["sys/leases/renew", "sys/leases/lookup", "sys/leases/revoke"] {
        let (status, body) = env.call_as(&b, "PUT", path, Some(lease.clone())).await;
        assert_eq!(
            (status, body),
            (403, json!({"errors": ["permission denied"]})),
            "{path}"
        );
    }
    // Admin endpoints are root's.
    let (status, _) = env
        .call_as(&a, "LIST", "sys/leases/lookup/database/creds/", None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = env
        .call_as(&a, "GET", "database/roles/appdb-user", None)
        .await;
    assert_eq!(status, 403);

    // The owner may renew and look up its lease.
    let (status, body) = env
        .call_as(
            &a,
            "PUT",
            "sys/leases/renew",
            Some(json!({ "lease_id": creds["lease_id"], "increment": "10m" })),
        )
        .await;
    assert_eq!((status, body["lease_duration"].clone()), (200, json!(600)));
    let (status, _) = env
        .call_as(&a, "PUT", "sys/leases/lookup", Some(lease.clone()))
        .await;
    assert_eq!(status, 200);

    // lookup-self and renew-self.
    let (status, me) = env.call_as(&a, "GET", "auth/token/lookup-self", None).await;
    assert_eq!(status, 200);
    assert_eq!(me["data"]["entity_id"], "system:serviceaccount:team-a:app");
    assert_eq!(me["data"]["path"], "auth/kubernetes/login");
    let (status, renewed) = env
        .call_as(
            &a,
            "POST",
            "auth/token/renew-self",
            Some(json!({ "increment": "2h" })),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert!(
        renewed["warnings"][0].as_str().unwrap().contains("capped"),
        "{renewed}"
    );

    let (status, body) = env
        .call_as(
            &a,
            "POST",
            "auth/token/renew-self",
            Some(json!({ "increment": 18446744073709551615u64 })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"errors": ["invalid request body: TTL \"18446744073709551615\" is too long: the maximum is 3155760000s (100 years) at line 1 column 34"]})
        )
    );

    // KV settings: team-a may read its own, team-b may not.
    let (status, body) = env.call_as(&a, "GET", "kv/team-a/appdb", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["credentials"], "database/creds/appdb-user");
    assert_eq!(body["data"]["port"], 5432);
    let (status, _) = env.call_as(&b, "GET", "kv/team-a/appdb", None).await;
    assert_eq!(status, 403);
    // Without a grant, a path that exists and one that does not look the same.
    for path in ["kv/team-a/appdb", "kv/team-a/nothing-here", "nokv/x"] {
        let (status, body) = env.call_as(&b, "GET", path, None).await;
        assert_eq!(
            (status, body),
            (403, json!({"errors": ["permission denied"]})),
            "{path}"
        );
    }
    let (status, _) = env.call_as(&a, "GET", "kv/team-a/nothing-here", None).await;
    assert_eq!(status, 404, "with a grant, a missing path is 404");

    let metrics = env.metrics().await;
    assert_eq!(
        metric(&metrics, "pgwarden_denials_total{reason=\"policy\"}"),
        6.0
    );
    assert_eq!(
        metric(&metrics, "pgwarden_denials_total{reason=\"not_owner\"}"),
        3.0
    );
}

#[tokio::test]
async fn login_rejections_are_precise_and_counted() {
    let id = start(POLICY, "1h").await;
    let env = &id.env;
    let iss = id.issuer.issuer();
    let good = id
        .issuer
        .service_account_token(TestKey::Rsa1, AUD, "team-a", "app");
    let mut tampered: Vec<String> = good.split('.').map(String::from).collect();
    tampered[1] = id
        .issuer
        .service_account_token(TestKey::Rsa1, AUD, "team-b", "app")
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let cases = [
        (
            "nope",
            good.clone(),
            400,
            "login role \"nope\" not found in auth mount \"kubernetes\"".to_string(),
        ),
        (
            "team-a",
            id.issuer
                .service_account_token(TestKey::Rsa1, "other", "team-a", "app"),
            403,
            "permission denied: the token's audience is not accepted (accepted: [\"pgwarden\"])"
                .to_string(),
        ),
        (
            "team-a",
            sign(
                TestKey::Rsa1,
                &service_account_claims(&iss, AUD, "team-a", "app", -600),
            ),
            403,
            "permission denied: the token has expired".to_string(),
        ),
        (
            "team-a",
            tampered.join("."),
            403,
            "permission denied: the token's signature does not verify".to_string(),
        ),
        (
            "team-a",
            id.issuer
                .service_account_token(TestKey::Rsa1, AUD, "team-b", "app"),
            403,
            "permission denied: namespace \"team-b\" is not bound to this login role".to_string(),
        ),
    ];
    for (role, jwt, status, message) in cases {
        let got = env
            .call_as(
                "",
                "POST",
                "auth/kubernetes/login",
                Some(json!({ "role": role, "jwt": jwt })),
            )
            .await;
        assert_eq!(got, (status, json!({ "errors": [message] })));
    }
    let (status, _) = env
        .call_as(
            "",
            "POST",
            "auth/nowhere/login",
            Some(json!({ "role": "x", "jwt": good })),
        )
        .await;
    assert_eq!(status, 404);
    let metrics = env.metrics().await;
    for result in [
        "unknown_role",
        "wrong_audience",
        "expired",
        "bad_signature",
        "namespace_not_bound",
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("pgwarden_logins_total{{mount=\"kubernetes\",result=\"{result}\"}}")
            ),
            1.0,
            "{result}"
        );
    }
}

#[tokio::test]
async fn revoking_a_token_revokes_its_leases_but_expiry_does_not() {
    let id = start(POLICY, "2s").await;
    let env = &id.env;
    let a = id.token("team-a", "team-a", "app").await;
    let mut users = Vec::new();
    for role in ["appdb-user", "appdb-readonly"] {
        let (status, creds) = env
            .call_as(&a, "GET", &format!("database/creds/{role}"), None)
            .await;
        assert_eq!(status, 200, "{creds}");
        users.push(creds["data"]["username"].as_str().unwrap().to_string());
    }
    let (status, _) = env
        .call_as(&a, "POST", "auth/token/revoke-self", None)
        .await;
    assert_eq!(status, 204);
    for user in &users {
        assert!(!env.role_exists(user).await, "{user} dropped at logout");
    }
    let (status, _) = env.call_as(&a, "GET", "auth/token/lookup-self", None).await;
    assert_eq!(status, 403, "revoked token no longer works");

    // A token that simply expires leaves its leases alone.
    let short = id.token("team-a", "team-a", "app").await;
    let (_, creds) = env
        .call_as(&short, "GET", "database/creds/appdb-user", None)
        .await;
    let user = creds["data"]["username"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = env
        .call_as(&short, "GET", "auth/token/lookup-self", None)
        .await;
    assert_eq!(status, 403, "token expired");
    assert!(
        env.role_exists(&user).await,
        "the lease outlives its token's expiry"
    );
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": creds["lease_id"] })),
        )
        .await;
    assert_eq!(
        (status, body["data"]["state"].clone()),
        (200, json!("active"))
    );
    // A new login of the same service account may still renew it.
    let again = id.token("team-a", "team-a", "app").await;
    let (status, _) = env
        .call_as(
            &again,
            "PUT",
            "sys/leases/renew",
            Some(json!({ "lease_id": creds["lease_id"] })),
        )
        .await;
    assert_eq!(status, 200);
    // Root revokes a token by accessor: its leases go too.
    let (_, me) = env
        .call_as(&again, "GET", "auth/token/lookup-self", None)
        .await;
    let (_, creds) = env
        .call_as(&again, "GET", "database/creds/appdb-readonly", None)
        .await;
    let (status, _) = env
        .call(
            "POST",
            "auth/token/revoke-accessor",
            Some(json!({ "accessor": me["data"]["accessor"] })),
        )
        .await;
    assert_eq!(status, 204);
    assert!(
        !env.role_exists(creds["data"]["username"].as_str().unwrap())
            .await
    );
}

#[tokio::test]
async fn revoke_self_racing_issuance_leaves_no_user_behind() {
    let id = std::sync::Arc::new(start(POLICY, "1h").await);
    let (mut issued, mut refused) = (Vec::new(), 0);
    for round in 0..24u64 {
        let token = id.token("team-a", "team-a", "app").await;
        let mut calls = Vec::new();
        for _ in 0..7 {
            let (id, token) = (id.clone(), token.clone());
            calls.push(tokio::spawn(async move {
                id.env
                    .call_as(&token, "GET", "database/creds/appdb-readonly", None)
                    .await
            }));
        }
        // Land the logout at different points of the issuances.
        tokio::time::sleep(Duration::from_millis(round * 25)).await;
        let (status, body) = id
            .env
            .call_as(&token, "POST", "auth/token/revoke-self", None)
            .await;
        assert_eq!(status, 204, "{body}");
        for call in calls {
            let (status, body) = call.await.unwrap();
            match status {
                200 => issued.push(body["data"]["username"].as_str().unwrap().to_string()),
                403 => {
                    let revoked_meanwhile = json!({"errors": ["the token was revoked while the credential was being issued; nothing was issued"]});
                    let revoked_before = json!({"errors": ["permission denied"]});
                    assert!(
                        body == revoked_meanwhile || body == revoked_before,
                        "{body}"
                    );
                    refused += 1;
                }
                _ => panic!("{status} {body}"),
            }
        }
    }
    let survivors = id.env.cluster.roles_like("v-kubernet-%").await.unwrap();
    assert!(
        !issued.is_empty() && refused > 0,
        "{} issued, {refused} refused",
        issued.len()
    );
    assert_eq!(
        survivors,
        Vec::<String>::new(),
        "of {} issued",
        issued.len()
    );
}

/// Logs a person in at `auth/<mount>/login` (login role `people`) with a token of `claims`;
/// returns the answer.
async fn person_login(env: &Env, mount: &str, claims: &Value) -> Value {
    let (status, body) = env
        .call_as(
            "",
            "POST",
            &format!("auth/{mount}/login"),
            Some(json!({ "role": "people", "jwt": sign(TestKey::Ec1, claims) })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn people_log_in_with_oidc_and_get_their_groups_grants() {
    let id = start(POLICY, "1h").await;
    let claims = json!({"iss": id.issuer.issuer(), "aud": AUD, "exp": unix_now() + 600, "sub": "42",
        "email": "kari@example.com", "groups": ["dba"]});
    let body = person_login(&id.env, "jwt", &claims).await;
    let token = body["auth"]["client_token"].as_str().unwrap();
    let (status, creds) = id
        .env
        .call_as(token, "GET", "database/creds/appdb-admin", None)
        .await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(
        creds["lease_duration"], 900,
        "no grant cap: the role's own 15m"
    );
    assert!(
        creds["data"]["username"]
            .as_str()
            .unwrap()
            .starts_with("v-jwt-kari-appdb-ad-")
    );

    // The same person through a second identity provider (a mount with a subject prefix) is
    // another subject: the first one's grants and leases are not theirs.
    let body = person_login(&id.env, "partner", &claims).await;
    assert_eq!(body["auth"]["entity_id"], "partner/user:kari@example.com");
    let partner = body["auth"]["client_token"].as_str().unwrap();
    let (status, denied) = id
        .env
        .call_as(partner, "GET", "database/creds/appdb-admin", None)
        .await;
    assert_eq!(
        (status, denied),
        (403, json!({ "errors": ["permission denied"] }))
    );
    let (status, denied) = id
        .env
        .call_as(
            partner,
            "PUT",
            "sys/leases/revoke",
            Some(json!({ "lease_id": creds["lease_id"] })),
        )
        .await;
    assert_eq!(
        (status, denied["errors"].clone()),
        (403, json!(["permission denied"]))
    );
    // A grant names them with the prefix.
    std::fs::write(
        &id.policy,
        format!("{POLICY}  - subjects: [\"partner/group:dba\"]\n    roles: [\"database/appdb-readonly\"]\n"),
    )
    .unwrap();
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = id
            .env
            .call_as(partner, "GET", "database/creds/appdb-readonly", None)
            .await
            .0;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the prefixed group's grant applies");

    // The mount's prefix changes: its earlier tokens name subjects it no longer makes, and
    // are refused until their callers log in again.
    let mut id = id;
    id.env.stop().await;
    id.env
        .broker
        .replace_in_config("subject_prefix: partner", "subject_prefix: partner-eu");
    id.env.boot().await;
    let (status, _) = id
        .env
        .call_as(partner, "GET", "auth/token/lookup-self", None)
        .await;
    assert_eq!(status, 403, "a token from before the prefix changed");
    let body = person_login(&id.env, "partner", &claims).await;
    assert_eq!(
        body["auth"]["entity_id"],
        "partner-eu/user:kari@example.com"
    );
    let (status, _) = id
        .env
        .call_as(token, "GET", "auth/token/lookup-self", None)
        .await;
    assert_eq!(status, 200, "the unprefixed mount's token is unaffected");
}

#[tokio::test]
async fn policy_reloads_live_and_a_broken_file_keeps_the_last_good_one() {
    let id = start("grants: []\n", "1h").await;
    let env = &id.env;
    let a = id.token("team-a", "team-a", "app").await;
    let (status, _) = env
        .call_as(&a, "GET", "database/creds/appdb-readonly", None)
        .await;
    assert_eq!(status, 403);

    std::fs::write(&id.policy, POLICY).unwrap();
    let mut allowed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env
            .call_as(&a, "GET", "database/creds/appdb-readonly", None)
            .await
            .0
            == 200
        {
            allowed = true;
            break;
        }
    }
    assert!(allowed, "new grant took effect without a restart");

    std::fs::write(
        &id.policy,
        "grants:\n  - subjects: [\"team-a\"]\n    roles: [\"database/*\"]\n",
    )
    .unwrap();
    let mut rejected = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let metrics = env.metrics().await;
        if metrics.contains("pgwarden_policy_reloads_total{result=\"rejected\"} 1") {
            rejected = true;
            break;
        }
    }
    assert!(rejected, "broken policy was noticed and rejected");
    let (status, _) = env
        .call_as(&a, "GET", "database/creds/appdb-readonly", None)
        .await;
    assert_eq!(status, 200, "the previous policy stays in force");
}

#[tokio::test]
async fn a_key_rotated_in_while_the_server_runs_is_picked_up() {
    let id = start(POLICY, "1h").await;
    id.token("team-a", "team-a", "app").await;
    let rotated = id
        .issuer
        .service_account_token(TestKey::Rsa2, AUD, "team-a", "app");
    let login = json!({ "role": "team-a", "jwt": rotated });
    let (status, body) = id
        .env
        .call_as("", "POST", "auth/kubernetes/login", Some(login.clone()))
        .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({ "errors": ["permission denied: no signing key with kid \"rsa-2\" in the key set"] })
        )
    );
    id.issuer.publish(TestKey::Rsa2);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the JWKS refresh rate limit
    let (status, body) = id
        .env
        .call_as("", "POST", "auth/kubernetes/login", Some(login))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn token_review_over_tls_trusts_only_the_configured_ca() {
    use pgwarden_testkit::issuer::FakeApiServer;
    use pgwarden_testkit::tls::TestCa;
    let ca = TestCa::localhost();
    let api = FakeApiServer::start_tls("reviewer-secret", &ca).await;
    api.add_token("opaque-sa-token", "team-a", "app");
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, reviewer_file, policy) = (
        dir.path().join("ca.pem"),
        dir.path().join("reviewer"),
        dir.path().join("policy.yaml"),
    );
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    std::fs::write(&reviewer_file, "reviewer-secret\n").unwrap();
    std::fs::write(&policy, POLICY).unwrap();
    let role = "team-a: { bound_service_account_names: [app], bound_service_account_namespaces: [team-a] }";
    let extra = format!(
        r#"
policy_file: "{policy}"
auth:
  review:
    type: kubernetes
    token_review: {{ host: "{url}", reviewer_token_file: "{reviewer}", ca_file: "{ca}" }}
    roles:
      {role}
  review-untrusted:
    type: kubernetes
    subject_prefix: untrusted
    token_review: {{ host: "{url}", reviewer_token_file: "{reviewer}" }}
    roles:
      {role}
"#,
        policy = policy.display(),
        url = api.url(),
        reviewer = reviewer_file.display(),
        ca = ca_file.display(),
    );
    assert!(api.url().starts_with("https://127.0.0.1:"));
    let env = Env::start_with(ROLES, &extra).await;
    let login = |mount: &'static str, jwt: &'static str| {
        let env = &env;
        async move {
            env.call_as(
                "",
                "POST",
                &format!("auth/{mount}/login"),
                Some(json!({ "role": "team-a", "jwt": jwt })),
            )
            .await
        }
    };
    let (status, body) = login("review", "opaque-sa-token").await;
    assert_eq!(status, 200, "{body}");
    let token = body["auth"]["client_token"].as_str().unwrap();
    let (status, _) = env
        .call_as(token, "GET", "database/creds/appdb-readonly", None)
        .await;
    assert_eq!(status, 200);

    let (status, body) = login("review", "forged").await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({ "errors": ["permission denied: the API server rejected the token: [invalid bearer token, token lookup failed]"] })
        )
    );
    let (status, body) = login("review-untrusted", "opaque-sa-token").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("TokenReview at https://127.0.0.1:"),
        "{body}"
    );
    // The whole cause chain reaches the message: why the request failed, not only that it did.
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{body}"
    );
}

/// PostgREST-style per-identity roles: a user joins the role named exactly like the caller's
/// identity and gets what the database owner granted it; no such role is a clear 403.
#[tokio::test]
async fn identity_roles_join_the_role_named_after_the_caller() {
    let policy = r#"
grants:
  - subjects: ["system:serviceaccount:team-a:*"]
    roles: ["database/mine"]
"#;
    let id = start(policy, "1h").await;
    let env = &id.env;
    let (status, body) = env
        .call(
            "POST",
            "database/roles/mine",
            Some(json!({ "db_name": "appdb", "identity_role": true })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // The database owner's per-identity grants, as PostgREST setups have them.
    env.cluster
        .create_identity_role("appdb", "system:serviceaccount:team-a:app")
        .await
        .unwrap();

    let app = id.token("team-a", "team-a", "app").await;
    let (status, body) = env.call_as(&app, "GET", "database/creds/mine", None).await;
    assert_eq!(status, 200, "{body}");
    let creds = Creds {
        lease_id: body["lease_id"].as_str().unwrap().to_string(),
        username: body["data"]["username"].as_str().unwrap().to_string(),
        password: body["data"]["password"].as_str().unwrap().to_string(),
        lease_duration: body["lease_duration"].as_u64().unwrap(),
    };
    let client = env.login(&creds).await.unwrap();
    let acting: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(acting, "system:serviceaccount:team-a:app");
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
    let denied = client
        .execute("INSERT INTO items (name) VALUES ('x')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let (status, _) = env
        .call_as(
            &app,
            "PUT",
            &format!("sys/leases/revoke/{}", creds.lease_id),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(!env.role_exists(&creds.username).await);
    assert!(env.role_exists("system:serviceaccount:team-a:app").await);

    // An identity without its role gets a 4xx that says what to do, and no user.
    let other = id.token("team-a", "team-a", "other").await;
    let (status, body) = env
        .call_as(&other, "GET", "database/creds/mine", None)
        .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({ "errors": ["no database role is named after identity \
                \"system:serviceaccount:team-a:other\": a database owner must create it \
                (CREATE ROLE \"system:serviceaccount:team-a:other\" NOLOGIN) and grant it \
                what this identity may do"] })
        )
    );
    let long = "a-service-account-with-a-rather-long-name";
    let long_token = id.token("team-a", "team-a", long).await;
    let (status, body) = env
        .call_as(&long_token, "GET", "database/creds/mine", None)
        .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({ "errors": [format!("identity \"system:serviceaccount:team-a:{long}\" is \
                longer than PostgreSQL's 63-byte role names, so no database role can be named \
                after it; give it a preset or template role instead")] })
        )
    );
    let (status, body) = env.call("GET", "database/creds/mine", None).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({ "errors": ["role \"mine\" gives each caller the database role named after \
                its identity, and the root token has none: log in (auth/<mount>/login) to use it"] })
        )
    );
    let (status, _) = env
        .call("LIST", "sys/leases/lookup/database/creds/mine/", None)
        .await;
    assert_eq!(status, 404, "no lease is left behind");
}
