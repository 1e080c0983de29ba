//! Access requests end to end over HTTP, against a real PostgreSQL: who may ask, who may
//! decide, N-of-M approvals, final decisions, the credential only for the request's subjects,
//! withdrawal revoking the user, expiry, races between decisions and withdrawals, and the
//! audit records all of it leaves (without a password or token in any of them).

mod common;

use common::*;
use pgwarden_core::ChainVerifier;
use pgwarden_core::wire::AuditList;
use pgwarden_testkit::issuer::{TestIssuer, TestKey};
use serde_json::{Value, json};
use std::time::Duration;

const AUD: &str = "pgwarden";

/// Developers may ask for `appdb-admin` (two DBAs approve) or `custom-reader` (one does).
const POLICY: &str = r#"
grants:
  - subjects: ["group:dev"]
    roles: ["database/appdb-admin"]
    requires_approval: true
    approvers: ["group:dba"]
    min_approvals: 2
    max_ttl: 1h
  - subjects: ["group:dev"]
    roles: ["database/custom-reader"]
    requires_approval: true
    approvers: ["group:dba", "user:ola@example.com"]
"#;

struct Setup {
    env: Env,
    issuer: TestIssuer,
    /// The audit log's JSON-lines copy.
    audit_file: std::path::PathBuf,
    _policy_dir: tempfile::TempDir,
}

async fn start(pending_ttl: &str) -> Setup {
    start_with(&format!("pending_ttl: {pending_ttl}")).await
}

/// Like [`start`], with `requests` settings.
async fn start_with(requests: &str) -> Setup {
    let issuer = TestIssuer::start(&[TestKey::Ec1]).await;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy_file = policy_dir.path().join("policy.yaml");
    std::fs::write(&policy_file, POLICY).unwrap();
    let audit_file = policy_dir.path().join("audit.jsonl");
    let extra = format!(
        r#"
policy_file: "{policy}"
requests: {{ {requests} }}
audit: {{ file: "{audit}" }}
auth:
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [{AUD}]
    roles:
      people: {{ user_claim: email, groups_claim: groups }}
"#,
        policy = policy_file.display(),
        audit = audit_file.display(),
        iss = issuer.issuer(),
        jwks = issuer.jwks_url(),
    );
    Setup {
        env: Env::start_with(ROLES, &extra).await,
        issuer,
        audit_file,
        _policy_dir: policy_dir,
    }
}

impl Setup {
    /// Logs a person in with `groups`; returns the token.
    async fn person(&self, email: &str, groups: &[&str]) -> String {
        self.env.login_person(&self.issuer, email, groups).await
    }

    async fn ask(&self, token: &str, body: Value) -> String {
        let (status, made) = self
            .env
            .call_as(token, "POST", "pgwarden/requests", Some(body))
            .await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["data"]["state"], "pending");
        made["data"]["id"].as_str().unwrap().to_string()
    }

    async fn decide(&self, token: &str, id: &str, verb: &str, reason: &str) -> (u16, Value) {
        self.env
            .call_as(
                token,
                "POST",
                &format!("pgwarden/requests/{id}/{verb}"),
                Some(json!({ "reason": reason })),
            )
            .await
    }

    async fn audit(&self) -> AuditList {
        // A request that succeeds is answered only once its record is stored, after every
        // record queued before it (refusals are answered without waiting for theirs).
        let (status, _) = self.env.call("GET", "pgwarden/requests", None).await;
        assert_eq!(status, 200);
        let (status, body) = self
            .env
            .call("GET", "pgwarden/audit?limit=1000", None)
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["data"].clone()).unwrap()
    }
}

fn error(body: &Value) -> &str {
    body["errors"][0].as_str().unwrap_or_default()
}

#[tokio::test]
async fn two_dbas_approve_and_only_the_subjects_get_a_working_credential() {
    let s = start("1h").await;
    let ola = s.person("ola@example.com", &["dev"]).await;
    let per = s.person("per@example.com", &["dev"]).await;
    let kari = s.person("kari@example.com", &["dba"]).await;
    let eva = s.person("eva@example.com", &["dba"]).await;

    // Direct access is refused with the way forward.
    let (status, body) = s
        .env
        .call_as(&ola, "GET", "database/creds/appdb-admin", None)
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        error(&body),
        "database/appdb-admin is granted only through an approved access request: pgwarden \
         request create database/appdb-admin --reason \"…\" (POST /v1/pgwarden/requests)"
    );
    // Someone no grant names cannot even ask.
    let (status, body) = s
        .env
        .call_as(
            &kari,
            "POST",
            "pgwarden/requests",
            Some(json!({"role": "database/appdb-admin"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        error(&body),
        "no policy grant lets user:kari@example.com request database/appdb-admin: ask for a \
         role a grant with requires_approval: true names for you"
    );

    // Ola asks for 2h; the grant caps it at 1h.
    let id = s
        .ask(
            &ola,
            json!({"role": "database/appdb-admin", "reason": "incident 42", "ttl": "2h"}),
        )
        .await;
    let (_, shown) = s
        .env
        .call_as(&kari, "GET", &format!("pgwarden/requests/{id}"), None)
        .await;
    assert_eq!(shown["data"]["ttl"], 3600);
    assert_eq!(shown["data"]["approvals_required"], 2);
    assert_eq!(shown["data"]["subjects"], json!(["user:ola@example.com"]));

    // The requester cannot decide, a developer is no approver.
    let (status, body) = s.decide(&ola, &id, "approve", "me").await;
    assert_eq!((status, error(&body)), (403, format!("user:ola@example.com made request {id} and may not decide it; another approver must").as_str()));
    let (status, body) = s.decide(&per, &id, "approve", "sure").await;
    assert_eq!(
        (status, error(&body)),
        (
            403,
            format!("user:per@example.com is not an approver of request {id}").as_str()
        )
    );

    // One approval of two: still pending, no credential yet, the same approver cannot count twice.
    let (status, body) = s.decide(&kari, &id, "approve", "ok").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "pending");
    let (status, body) = s
        .env
        .call_as(&ola, "GET", &format!("pgwarden/requests/{id}/creds"), None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (
            409,
            format!("request {id} is pending: it needs 1 more approval(s)").as_str()
        )
    );
    let (status, body) = s.decide(&kari, &id, "approve", "again").await;
    assert_eq!((status, error(&body)), (409, format!("user:kari@example.com already approved request {id}; it needs 1 more approval(s) from other approvers").as_str()));

    // The second approver completes it.
    let (status, body) = s.decide(&eva, &id, "approve", "ok too").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "approved");
    let lease_id = body["data"]["lease_id"].as_str().unwrap().to_string();

    // Decisions are final.
    let (status, body) = s.decide(&eva, &id, "deny", "changed my mind").await;
    assert_eq!(status, 409);
    assert!(
        error(&body).starts_with(&format!(
            "request {id} is already approved (by user:kari@example.com at "
        )),
        "{body}"
    );

    // The subject reads a working credential; anyone else is refused.
    let (status, creds) = s
        .env
        .call_as(&ola, "GET", &format!("pgwarden/requests/{id}/creds"), None)
        .await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["lease_id"], lease_id.as_str());
    assert!(creds["lease_duration"].as_u64().unwrap() > 3500);
    let (user, password) = (
        creds["data"]["username"].as_str().unwrap().to_string(),
        creds["data"]["password"].as_str().unwrap().to_string(),
    );
    let client = s
        .env
        .cluster
        .connect_as(&user, &password, "appdb")
        .await
        .expect("the approved password works");
    client.simple_query("SELECT 1").await.unwrap();
    let (status, body) = s
        .env
        .call_as(&per, "GET", &format!("pgwarden/requests/{id}/creds"), None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (403, "permission denied"),
        "per may not even see the request"
    );
    let (status, body) = s
        .env
        .call_as(&kari, "GET", &format!("pgwarden/requests/{id}/creds"), None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (
            403,
            format!(
                "user:kari@example.com is not a subject of request {id}: only \
                 user:ola@example.com may read its credential"
            )
            .as_str()
        ),
        "an approver sees the request but not its credential"
    );

    // Lists: the approver sees it among decided ones; another developer does not.
    let (_, list) = s
        .env
        .call_as(&eva, "GET", "pgwarden/requests?state=approved", None)
        .await;
    assert_eq!(list["data"]["requests"][0]["id"], id.as_str());
    let (_, list) = s.env.call_as(&per, "GET", "pgwarden/requests", None).await;
    assert_eq!(list["data"]["requests"], json!([]));
    let (status, body) = s
        .env
        .call_as(&per, "GET", "pgwarden/requests?state=maybe", None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (
            400,
            "state \"maybe\" must be one of pending, approved, denied, withdrawn, expired"
        )
    );

    // Only the requester (or root) withdraws; withdrawing drops the user at once.
    let (status, body) = s
        .env
        .call_as(&kari, "DELETE", &format!("pgwarden/requests/{id}"), None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (
            403,
            format!("only the requester (user:ola@example.com) or root may withdraw request {id}")
                .as_str()
        )
    );
    let (status, body) = s
        .env
        .call_as(&ola, "DELETE", &format!("pgwarden/requests/{id}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "withdrawn");
    assert!(
        !s.env.role_exists(&user).await,
        "withdrawal dropped the user"
    );
    assert_invalid_password(
        s.env
            .cluster
            .connect_as(&user, &password, "appdb")
            .await
            .unwrap_err(),
    );
    let (status, body) = s
        .env
        .call_as(&ola, "GET", &format!("pgwarden/requests/{id}/creds"), None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (
            409,
            format!("request {id} is withdrawn: it has no credential").as_str()
        )
    );

    // Every step is on record, the chain verifies, and no secret is in it.
    let audit = s.audit().await;
    let mut verifier = ChainVerifier::new(Some(pgwarden_testkit::broker::audit_chain_key()));
    for record in &audit.records {
        verifier.check(record).unwrap();
    }
    verifier.finish().unwrap();
    // The file copy holds the same records, one JSON object per line, private to pgwarden.
    let lines = std::fs::read_to_string(&s.audit_file).unwrap();
    let copied: Vec<pgwarden_core::AuditRecord> = lines
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(copied, audit.records);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.audit_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = serde_json::to_string(&audit).unwrap() + &lines;
    for secret in [&password, &ola, &kari, &eva, &per] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret reached the audit log"
        );
    }
    let find = |action: &str, actor: &str| {
        audit
            .records
            .iter()
            .filter(|r| r.event.action == action && r.event.actor == actor)
            .map(|r| (r.event.object.clone(), r.event.outcome.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        find("request.approve", "user:eva@example.com"),
        vec![(id.clone(), "success")]
    );
    let approval = audit
        .records
        .iter()
        .find(|r| r.event.action == "request.approve" && r.event.actor == "user:eva@example.com")
        .unwrap();
    assert_eq!(
        approval.event.detail,
        format!("approved; lease {lease_id} issued; reason: ok too")
    );
    // A refusal happens before the request is read: its record names the path.
    assert_eq!(
        find("request.approve", "user:ola@example.com"),
        vec![(format!("pgwarden/requests/{id}/approve"), "denied")]
    );
    assert_eq!(
        find("creds.issue", "user:ola@example.com"),
        vec![("database/creds/appdb-admin".into(), "denied")]
    );
    assert_eq!(
        find("request.withdraw", "user:ola@example.com"),
        vec![(id.clone(), "success")]
    );
    assert_eq!(find("user.drop", "pgwarden"), vec![(lease_id, "success")]);
    assert_eq!(find("auth.login", "user:kari@example.com").len(), 1);
}

#[tokio::test]
async fn subjects_are_exact_and_cannot_approve_and_bad_input_is_named() {
    let s = start("1h").await;
    let ola = s.person("ola@example.com", &["dev"]).await;
    let kari = s.person("kari@example.com", &["dba"]).await;
    for (body, message) in [
        (
            json!({"role": "database/custom-reader", "subjects": ["user:*"]}),
            "subject \"user:*\" must name one identity or group: \
             system:serviceaccount:<ns>:<name>, group:<name> or user:<name>, without * or invisible characters",
        ),
        (
            json!({"role": "database/custom-reader", "subjects": ["user:a\nb"]}),
            "subject \"user:a\\nb\" must name one identity or group: \
             system:serviceaccount:<ns>:<name>, group:<name> or user:<name>, without * or invisible characters",
        ),
        (
            json!({"role": "database/custom-reader", "subjects": ["user:ola@exam\u{200b}ple.com"]}),
            "subject \"user:ola@exam\\u{200b}ple.com\" must name one identity or group: \
             system:serviceaccount:<ns>:<name>, group:<name> or user:<name>, without * or invisible characters",
        ),
        (
            json!({"role": "database/custom-reader", "subjects": [format!("user:{}", "x".repeat(100_000))]}),
            "a subject of 100005 bytes is too long: at most 512",
        ),
        (
            json!({"role": "appdb-admin"}),
            "role \"appdb-admin\" must look like <mount>/<role>, e.g. database/appdb-admin",
        ),
        (
            json!({"role": "database/custom-reader", "ttl": "0s"}),
            "ttl must be positive",
        ),
        (
            json!({"role": "database/custom-reader", "reason": "x".repeat(2001)}),
            "reason is longer than 2000 characters",
        ),
    ] {
        let (status, body) = s
            .env
            .call_as(&ola, "POST", "pgwarden/requests", Some(body))
            .await;
        assert_eq!((status, error(&body)), (400, message));
    }
    // An approver the requester names as a subject would approve its own access.
    let id = s
        .ask(
            &ola,
            json!({"role": "database/custom-reader", "subjects": ["user:ola@example.com", "group:dba"]}),
        )
        .await;
    let (status, body) = s.decide(&kari, &id, "approve", "mine too").await;
    assert_eq!(
        (status, error(&body)),
        (
            403,
            format!(
                "user:kari@example.com is a subject of request {id} (may read its credential) \
                 and may not decide it; another approver must"
            )
            .as_str()
        )
    );
    // A control character in a path is refused before anything is stored or looked up, and
    // a failed login leaves no part of its token in the audit log.
    let (status, body) = s
        .env
        .call_as(&kari, "GET", "pgwarden/requests/a%00b", None)
        .await;
    assert_eq!(
        (status, error(&body)),
        (400, "the path contains a control character")
    );
    let bogus = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
    let (status, _) = s
        .env
        .call_as(
            "",
            "POST",
            "auth/jwt/login",
            Some(json!({"role": "people", "jwt": bogus})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .env
        .call_as(
            &ola,
            "POST",
            "pgwarden/requests",
            Some(json!({"role": "database/custom-reader", "ttl": ola})),
        )
        .await;
    assert_eq!(status, 400);
    let audit = s.audit().await;
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(bogus) && !text.contains(&ola), "{text}");
    assert!(audit.records.iter().any(|r| r.event.action == "auth.login"
        && r.event.actor == "anonymous"
        && r.event.outcome.as_str() == "denied"));
}

#[tokio::test]
async fn a_denial_ends_the_request_and_pending_requests_expire() {
    let s = start("2s").await;
    let ola = s.person("ola@example.com", &["dev"]).await;
    let kari = s.person("kari@example.com", &["dba"]).await;
    let denied = s
        .ask(
            &ola,
            json!({"role": "database/custom-reader", "reason": "look"}),
        )
        .await;
    let (status, body) = s.decide(&kari, &denied, "deny", "not today").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "denied");
    assert_eq!(body["data"]["denial"]["reason"], "not today");
    let (status, body) = s.decide(&kari, &denied, "approve", "").await;
    assert_eq!(status, 409);
    assert!(
        error(&body).starts_with(&format!(
            "request {denied} is already denied (by user:kari@example.com at "
        )),
        "{body}"
    );

    let late = s.ask(&ola, json!({"role": "database/custom-reader"})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = s.decide(&kari, &late, "approve", "").await;
    assert_eq!(status, 409);
    assert!(
        error(&body).starts_with(&format!("request {late} is already expired (at ")),
        "{body}"
    );
    // The leader's sweep records the expiry once.
    let mut expired = Vec::new();
    for _ in 0..100 {
        expired = s
            .audit()
            .await
            .records
            .into_iter()
            .filter(|r| r.event.action == "request.expire")
            .collect();
        if !expired.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].event.object, late);
    assert!(s.env.cluster.roles_like("v-%").await.unwrap().is_empty());
}

#[tokio::test]
async fn finished_requests_are_forgotten_after_keep_finished() {
    let s = start_with("pending_ttl: 1h, keep_finished: 2s").await;
    let ola = s.person("ola@example.com", &["dev"]).await;
    let kari = s.person("kari@example.com", &["dba"]).await;
    let ask = || s.ask(&ola, json!({"role": "database/custom-reader"}));
    let (denied, pending, approved) = (ask().await, ask().await, ask().await);
    assert_eq!(s.decide(&kari, &denied, "deny", "no").await.0, 200);
    assert_eq!(s.decide(&kari, &approved, "approve", "ok").await.0, 200);
    let (env, ola) = (&s.env, ola.as_str());
    let read = |id: String| async move {
        env.call_as(ola, "GET", &format!("pgwarden/requests/{id}"), None)
            .await
            .0
    };
    // The leader sweeps every 5 s.
    let mut forgotten = false;
    for _ in 0..150 {
        if read(denied.clone()).await == 404 {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forgotten, "the denied request is forgotten");
    // Still pending, or its credential still live: kept.
    assert_eq!(read(pending).await, 200);
    assert_eq!(read(approved).await, 200);
    let forgets: Vec<_> = s
        .audit()
        .await
        .records
        .into_iter()
        .filter(|r| r.event.action == "request.forget")
        .map(|r| (r.event.object, r.event.detail))
        .collect();
    assert_eq!(
        forgets,
        vec![(denied, "denied and kept for 2s".to_string())]
    );
}

#[tokio::test]
async fn one_requester_has_at_most_sixteen_requests_pending() {
    let s = start("1h").await;
    let ola = s.person("ola@example.com", &["dev"]).await;
    let body = json!({"role": "database/custom-reader"});
    let mut made = Vec::new();
    for _ in 0..16 {
        made.push(s.ask(&ola, body.clone()).await);
    }
    let (status, refused) = s
        .env
        .call_as(&ola, "POST", "pgwarden/requests", Some(body.clone()))
        .await;
    assert_eq!(
        (status, error(&refused)),
        (
            409,
            "user:ola@example.com has 16 requests pending, the most one may have: withdraw \
             one or wait for decisions"
        )
    );
    let (status, _) = s
        .env
        .call_as(
            &ola,
            "DELETE",
            &format!("pgwarden/requests/{}", made[0]),
            None,
        )
        .await;
    assert_eq!(status, 200);
    s.ask(&ola, body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_racing_withdrawals_never_leave_a_user_behind() {
    let s = start("1h").await;
    let ola = s.person("ola@example.com", &["dev"]).await;
    let kari = s.person("kari@example.com", &["dba"]).await;
    let mut outcomes = Vec::new();
    for round in 0..12 {
        let id = s
            .ask(
                &ola,
                json!({"role": "database/custom-reader", "reason": format!("round {round}")}),
            )
            .await;
        let approve = s.decide(&kari, &id, "approve", "ok");
        let withdraw = async {
            // Vary who goes first; the last round gives the approval a long head start, so
            // that at least one approval wins on a loaded machine too.
            let head_start = match round {
                11 => Duration::from_millis(500),
                _ => Duration::from_micros(round * 1500),
            };
            tokio::time::sleep(head_start).await;
            s.env
                .call_as(&ola, "DELETE", &format!("pgwarden/requests/{id}"), None)
                .await
        };
        let ((approved, _), (withdrawn, _)) = tokio::join!(approve, withdraw);
        let (_, shown) = s
            .env
            .call_as(&ola, "GET", &format!("pgwarden/requests/{id}"), None)
            .await;
        assert_eq!(shown["data"]["state"], "withdrawn", "{shown}");
        outcomes.push((approved, withdrawn));
    }
    assert!(
        outcomes.iter().any(|(approved, _)| *approved == 200),
        "some approvals won before their withdrawal: {outcomes:?}"
    );
    // Whatever the order, no user survives and no lease is left.
    assert!(s.env.cluster.roles_like("v-%").await.unwrap().is_empty());
    let (status, _) = s
        .env
        .call(
            "LIST",
            "sys/leases/lookup/database/creds/custom-reader/",
            None,
        )
        .await;
    assert_eq!(status, 404, "no lease left: {outcomes:?}");
}
