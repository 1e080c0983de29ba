//! The Vault-compatible API against a real PostgreSQL: issue, renew, revoke, lookup, list,
//! runtime definitions, and every kind of bad input.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn issue_login_revoke() {
    let env = Env::start(ROLES).await;
    for role in [
        "appdb-readonly",
        "appdb-user",
        "appdb-admin",
        "custom-reader",
    ] {
        let creds = env.creds(role).await;
        assert!(
            creds
                .lease_id
                .starts_with(&format!("database/creds/{role}/"))
        );
        assert!(creds.username.starts_with("v-root-"), "{}", creds.username);
        let client = env.login(&creds).await.expect("issued password works");
        let (_, lookup) = env
            .call("GET", &format!("database/creds/{role}"), None)
            .await;
        assert_eq!(
            (
                &lookup["data"]["host"],
                &lookup["data"]["port"],
                &lookup["data"]["database"]
            ),
            (
                &json!("127.0.0.1"),
                &json!(env.cluster.port()),
                &json!("appdb")
            ),
            "where to connect comes with the credential"
        );
        let n: i64 = client
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 3);
        let (status, _) = env.revoke(&creds.lease_id).await;
        assert_eq!(status, 204);
        assert_invalid_password(env.login(&creds).await.unwrap_err());
        assert!(!env.role_exists(&creds.username).await);
    }
    let creds = env.creds("appdb-readonly").await;
    assert_eq!(creds.lease_duration, 3600);
    // No cache may keep an answer: a credential, an error, anything.
    for path in [
        "database/creds/appdb-readonly",
        "sys/health",
        "no/such/path",
    ] {
        let response = env
            .http
            .get(format!("{}/v1/{path}", env.broker.base))
            .header("X-Vault-Token", ROOT)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "{path}: {}",
            response.status()
        );
    }
}

#[tokio::test]
async fn renewal_is_capped_and_moves_valid_until() {
    let env = Env::start(
        "      short: { db_name: appdb, preset: readonly, default_ttl: 10s, max_ttl: 30s }",
    )
    .await;
    let creds = env.creds("short").await;
    assert_eq!(creds.lease_duration, 10);
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/renew",
            Some(json!({ "lease_id": creds.lease_id, "increment": "20s" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lease_duration"], 20);
    assert_eq!(body["warnings"], serde_json::Value::Null);
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/renew",
            Some(json!({ "lease_id": creds.lease_id, "increment": 3600 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let capped = body["lease_duration"].as_u64().unwrap();
    assert!(
        (28..=30).contains(&capped),
        "capped to the max TTL, got {capped}"
    );
    let warning = body["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("TTL of \"3600s\" exceeded the effective max_ttl of \""),
        "{warning}"
    );

    // VALID UNTIL follows: lookup's expire_time + 5 s.
    let (lookup, expire) = env.lookup_lease(&creds.lease_id).await;
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    let until: i64 = su
        .query_one(
            "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
            &[&creds.username],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(until, expire.unix_timestamp() + 5);
    assert_eq!(lookup["data"]["state"], "active");
    assert_eq!(lookup["data"]["renewable"], true);
}

#[tokio::test]
async fn reaper_drops_expired_users_within_two_seconds() {
    let env = Env::start(
        "      blink: { db_name: appdb, preset: readonly, default_ttl: 3s, max_ttl: 1m }",
    )
    .await;
    let creds = env.creds("blink").await;
    let session = env.login(&creds).await.unwrap();
    // Judged against the lease's own end, so a slow machine cannot make this test lie.
    let (_, expire) = env.lookup_lease(&creds.lease_id).await;
    env.wait_role_gone(&creds.username, Duration::from_secs(10))
        .await
        .expect("dropped");
    let late = time::OffsetDateTime::now_utc() - expire;
    assert!(
        late >= time::Duration::ZERO,
        "dropped {} before its expiry",
        -late
    );
    assert!(
        late <= time::Duration::seconds(5),
        "dropped {late} after its expiry"
    );
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "live session was ended"
    );
    assert_invalid_password(env.login(&creds).await.unwrap_err());
    let (status, body) = env
        .call(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": creds.lease_id })),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0],
        format!(
            "lease {:?} not found (it may have expired or been revoked)",
            creds.lease_id
        )
    );
    let metrics = env.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pgwarden_leases_revoked_total{reason=\"expired\"}"
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "pgwarden_leases"), 0.0);
}

#[tokio::test]
async fn lookup_list_and_revoke_prefix() {
    let env = Env::start(ROLES).await;
    let a = env.creds("appdb-readonly").await;
    let b = env.creds("appdb-readonly").await;
    let c = env.creds("appdb-user").await;
    let (status, body) = env
        .call("LIST", "sys/leases/lookup/database/creds/", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["keys"],
        json!(["appdb-readonly/", "appdb-user/"])
    );
    let (_, body) = env
        .call(
            "GET",
            "sys/leases/lookup/database/creds/appdb-readonly?list=true",
            None,
        )
        .await;
    let mut keys: Vec<String> = body["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    keys.sort();
    let mut expected: Vec<String> = [&a, &b]
        .iter()
        .map(|c| c.lease_id.rsplit('/').next().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(keys, expected);

    let (status, _) = env
        .call(
            "PUT",
            "sys/leases/revoke-prefix/database/creds/appdb-readonly",
            None,
        )
        .await;
    assert_eq!(status, 204);
    for creds in [&a, &b] {
        assert!(!env.role_exists(&creds.username).await);
    }
    assert!(env.role_exists(&c.username).await);
    let (status, body) = env
        .call(
            "LIST",
            "sys/leases/lookup/database/creds/appdb-readonly/",
            None,
        )
        .await;
    assert_eq!((status, body), (404, json!({ "errors": [] })));

    // Queued revocation (sync: false) answers 202 and the reaper does it.
    let (status, _) = env
        .call(
            "PUT",
            "sys/leases/revoke",
            Some(json!({ "lease_id": c.lease_id, "sync": false })),
        )
        .await;
    assert_eq!(status, 202);
    env.wait_role_gone(&c.username, Duration::from_secs(5))
        .await
        .expect("queued revocation ran");
}

#[tokio::test]
async fn roles_and_connections_at_run_time() {
    let env = Env::start(ROLES).await;
    let url = env.cluster.templated_url("appdb");
    let (status, body) = env
        .call(
            "POST",
            "database/config/second",
            Some(json!({ "plugin_name": "postgresql-database-plugin", "connection_url": url, "username": ADMIN, "password": ADMIN_PW, "allowed_roles": "rt-*" })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, body) = env.call("GET", "database/config/second", None).await;
    assert_eq!(body["data"]["connection_details"]["username"], ADMIN);
    assert_eq!(body["data"]["allowed_roles"], json!(["rt-*"]));
    assert!(
        !body.to_string().contains(ADMIN_PW),
        "password never read back"
    );

    let (status, body) = env
        .call("POST", "database/roles/rt-reader", Some(json!({ "db_name": "second", "preset": "readonly", "default_ttl": "1m", "max_ttl": 120 })))
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, body) = env.call("GET", "database/roles/rt-reader", None).await;
    assert_eq!(body["data"]["default_ttl"], 60);
    assert_eq!(body["data"]["max_ttl"], 120);
    assert_eq!(body["data"]["preset"], "readonly");
    let (_, body) = env.call("LIST", "database/roles", None).await;
    assert!(
        body["data"]["keys"]
            .as_array()
            .unwrap()
            .contains(&json!("rt-reader"))
    );

    let creds = env.creds("rt-reader").await;
    env.login(&creds).await.unwrap();

    // A connection's allowed_roles are enforced.
    env.call(
        "POST",
        "database/roles/not-allowed",
        Some(json!({ "db_name": "second", "preset": "readonly" })),
    )
    .await;
    let (status, body) = env.call("GET", "database/creds/not-allowed", None).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({ "errors": ["role \"not-allowed\" is not in the allowed_roles of connection \"second\""] })
        )
    );

    // Runtime definitions survive a restart (the password sealed in the store).
    let mut env = env;
    env.stop().await;
    env.boot().await;
    let again = env.creds("rt-reader").await;
    env.login(&again).await.unwrap();

    // Definitions from the file are read-only through the API.
    let (status, body) = env.call("DELETE", "database/roles/appdb-admin", None).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({ "errors": ["role \"appdb-admin\" is defined in the configuration file and is read-only through the API"] })
        )
    );
    let (status, _) = env.call("DELETE", "database/roles/rt-reader", None).await;
    assert_eq!(status, 204);
    let (status, _) = env.call("GET", "database/roles/rt-reader", None).await;
    assert_eq!(status, 404);

    // A connection that cannot be reached is refused when written.
    let (status, body) = env
        .call("POST", "database/config/broken", Some(json!({ "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:1/x", "username": "u", "password": "p" })))
        .await;
    assert_eq!(status, 400);
    assert!(body["errors"][0].as_str().unwrap().starts_with("connection \"broken\" failed verification: database of connection \"broken\" is unreachable: "), "{body}");

    // Nor moved to another server: their users live on this one.
    let elsewhere = url.replace("127.0.0.1", "localhost");
    let (status, body) = env
        .call(
            "POST",
            "database/config/second",
            Some(json!({ "connection_url": elsewhere, "username": ADMIN, "password": ADMIN_PW, "allowed_roles": "rt-*" })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            409,
            json!({ "errors": ["connection \"second\" is used by 2 lease(s) whose users live on its current server; its hosts cannot change until they are revoked (sys/leases/revoke-prefix/database/creds/<role>) or expire"] })
        )
    );

    // A connection in use by leases cannot be deleted: their revocation needs it.
    let (status, body) = env.call("DELETE", "database/config/second", None).await;
    assert_eq!(
        (status, body),
        (
            409,
            json!({ "errors": ["connection \"second\" is used by 2 lease(s); revoke them first (sys/leases/revoke-prefix/database/creds/<role>) or let them expire"] })
        )
    );
    let (status, _) = env
        .call(
            "PUT",
            "sys/leases/revoke-prefix/database/creds/rt-reader",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = env.call("DELETE", "database/config/second", None).await;
    assert_eq!(status, 204);

    // A password written into the URL is sealed like any other: never stored or shown in it.
    let embedded = url
        .replace("{{username}}", ADMIN)
        .replace("{{password}}", ADMIN_PW);
    let (status, body) = env
        .call(
            "POST",
            "database/config/embedded",
            Some(json!({ "connection_url": embedded, "username": ADMIN, "allowed_roles": ["*"] })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (_, body) = env.call("GET", "database/config/embedded", None).await;
    assert_eq!(
        body["data"]["connection_details"]["connection_url"],
        url.replace("{{username}}", ADMIN)
    );
    env.call(
        "POST",
        "database/roles/via-embedded",
        Some(json!({ "db_name": "embedded", "preset": "readonly" })),
    )
    .await;
    env.login(&env.creds("via-embedded").await).await.unwrap();
    let state = std::fs::read(env.broker.data.path().join("state.db")).unwrap();
    let wal = std::fs::read(env.broker.data.path().join("state.db-wal")).unwrap_or_default();
    for bytes in [&state, &wal] {
        assert!(
            !bytes
                .windows(ADMIN_PW.len())
                .any(|w| w == ADMIN_PW.as_bytes()),
            "the password is not stored in plaintext"
        );
    }
    let (status, body) = env
        .call(
            "POST",
            "database/config/twice",
            Some(json!({ "connection_url": embedded, "username": ADMIN, "password": ADMIN_PW })),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({ "errors": ["connection \"twice\": the password is in both connection_url and password; give it once"] })
        )
    );
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_changes_nothing() {
    let env = Env::start(ROLES).await;
    let cases: Vec<(
        &str,
        &str,
        Option<serde_json::Value>,
        u16,
        serde_json::Value,
    )> = vec![
        (
            "GET",
            "nomount/creds/x",
            None,
            404,
            json!({"errors": ["no mount \"nomount\": mounts are defined in the configuration file"]}),
        ),
        (
            "GET",
            "database/creds/nope",
            None,
            404,
            json!({"errors": ["role \"nope\" not found in mount \"database\""]}),
        ),
        (
            "GET",
            "database/frobnicate/x",
            None,
            404,
            json!({"errors": ["no handler for path \"database/frobnicate/x\""]}),
        ),
        (
            "PUT",
            "sys/leases/renew",
            Some(json!({"lease_id": "database/creds/appdb-readonly/nope"})),
            400,
            json!({"errors": ["lease \"database/creds/appdb-readonly/nope\" not found (it may have expired or been revoked)"]}),
        ),
        (
            "PUT",
            "sys/leases/revoke",
            Some(json!({"lease_id": "database/creds/appdb-readonly/nope"})),
            400,
            json!({"errors": ["lease \"database/creds/appdb-readonly/nope\" not found (it may have expired or been revoked)"]}),
        ),
        (
            "PUT",
            "sys/leases/revoke",
            Some(json!({})),
            400,
            json!({"errors": ["lease_id is required"]}),
        ),
        (
            "PUT",
            "sys/leases/lookup",
            Some(json!({"lease_id": ""})),
            400,
            json!({"errors": ["lease_id is required"]}),
        ),
        (
            "PUT",
            "sys/leases/lookup",
            Some(json!({"lease_id": "x\n"})),
            400,
            json!({"errors": ["lease_id contains a control character"]}),
        ),
        (
            "PUT",
            "sys/leases/renew/%ff%fe",
            None,
            400,
            json!({"errors": ["invalid request path: Invalid URL: Invalid UTF-8 in `path`"]}),
        ),
        (
            "PUT",
            "sys/leases/renew",
            Some(json!({"lease_id": "x", "increment": "soon"})),
            400,
            json!({"errors": ["invalid request body: invalid TTL \"soon\": use integer seconds or a duration like 90s, 15m, 1h, 24h at line 1 column 19"]}),
        ),
        (
            "POST",
            "database/roles/r1",
            Some(json!({"db_name": "appdb", "preset": "readonly", "max_ttl": "forever"})),
            400,
            json!({"errors": ["invalid request body: invalid TTL \"forever\": use integer seconds or a duration like 90s, 15m, 1h, 24h at line 1 column 38"]}),
        ),
        (
            "PUT",
            "sys/leases/renew",
            Some(json!({"lease_id": "x", "increment": 9223372036854775807u64})),
            400,
            json!({"errors": ["invalid request body: TTL \"9223372036854775807\" is too long: the maximum is 3155760000s (100 years) at line 1 column 32"]}),
        ),
        (
            "POST",
            "database/roles/r-copy",
            Some(json!({"db_name": "appdb", "creation_statements": [
                "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}'",
                "COPY audit_seed FROM STDIN",
            ]})),
            400,
            json!({"errors": ["role \"r-copy\": statement runs COPY, which templates cannot use: pgwarden does not carry COPY's data (FROM STDIN, TO STDOUT)"]}),
        ),
        (
            "POST",
            "database/roles/r3",
            Some(
                json!({"db_name": "appdb", "preset": "readonly", "max_ttl": 18446744073709551615u64}),
            ),
            400,
            json!({"errors": ["invalid request body: TTL \"18446744073709551615\" is too long: the maximum is 3155760000s (100 years) at line 1 column 49"]}),
        ),
        (
            "POST",
            "database/roles/r4",
            Some(json!({"db_name": "appdb", "preset": "readonly", "max_ttl": 3e11})),
            400,
            json!({"errors": ["invalid request body: TTL \"300000000000\" is too long: the maximum is 3155760000s (100 years) at line 1 column 43"]}),
        ),
        (
            "POST",
            "database/roles/r2",
            Some(json!({"db_name": "appdb"})),
            400,
            json!({"errors": ["role \"r2\": creation_statements or preset (readonly, user, admin) is required"]}),
        ),
        (
            "DELETE",
            "database/creds/appdb-readonly",
            None,
            405,
            json!({"errors": ["unsupported operation"]}),
        ),
    ];
    for (method, path, body, status, expected) in cases {
        let (got_status, got) = env.call(method, path, body).await;
        assert_eq!((got_status, &got), (status, &expected), "{method} {path}");
    }

    // Malformed JSON.
    let response = env
        .http
        .put(env.url("sys/leases/renew"))
        .header("X-Vault-Token", ROOT)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"errors": ["invalid request body: key must be a string at line 1 column 2"]})
    );
    // Body over 1 MiB.
    let big = format!("{{\"lease_id\": \"{}\"}}", "x".repeat(1024 * 1024));
    let response = env
        .http
        .put(env.url("sys/leases/renew"))
        .header("X-Vault-Token", ROOT)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"errors": ["request body is larger than 1048576 bytes"]})
    );
    // Missing and wrong tokens.
    let response = env
        .http
        .get(env.url("database/creds/appdb-readonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"errors": ["permission denied"]})
    );
    let response = env
        .http
        .get(env.url("database/creds/appdb-readonly"))
        .bearer_auth("test-root-token-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = env
        .http
        .get(env.url("database/creds/appdb-readonly"))
        .bearer_auth(ROOT)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "Authorization: Bearer works too");

    // Nothing above left a lease behind except the last one.
    let (_, body) = env
        .call("LIST", "sys/leases/lookup/database/creds/", None)
        .await;
    assert_eq!(body["data"]["keys"], json!(["appdb-readonly/"]));
}

#[tokio::test]
async fn hostile_role_names_are_handled_safely() {
    let env = Env::start(ROLES).await;
    let name = "a\"; DROP TABLE items; --";
    let path = format!(
        "database/roles/{}",
        "a%22%3B%20DROP%20TABLE%20items%3B%20--"
    );
    let (status, body) = env
        .call(
            "POST",
            &path,
            Some(json!({ "db_name": "appdb", "preset": "user" })),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = env
        .call(
            "GET",
            "database/creds/a%22%3B%20DROP%20TABLE%20items%3B%20--",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let lease_id = body["lease_id"].as_str().unwrap().to_string();
    assert_eq!(
        lease_id.rsplit_once('/').unwrap().0,
        format!("database/creds/{name}")
    );
    let user = body["data"]["username"].as_str().unwrap().to_string();
    let client = env
        .cluster
        .connect_as(&user, body["data"]["password"].as_str().unwrap(), "appdb")
        .await
        .unwrap();
    let current: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, name);
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let (status, _) = env.revoke(&lease_id).await;
    assert_eq!(status, 204);
    assert!(!env.role_exists(&user).await);
}

/// Adds connection `down` (nothing listens at its port) and its role `down-ro`.
async fn add_unreachable_role(env: &Env) {
    let (status, body) = env
        .call("POST", "database/config/down", Some(json!({ "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:1/x", "username": "u", "password": "p", "allowed_roles": ["*"], "verify_connection": false })))
        .await;
    assert_eq!(status, 204, "{body}");
    let body = json!({ "db_name": "down", "preset": "readonly" });
    let (status, body) = env.call("POST", "database/roles/down-ro", Some(body)).await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn unreachable_database_is_503_and_leaves_no_lease() {
    let env = Env::start(ROLES).await;
    add_unreachable_role(&env).await;
    let (status, body) = env.call("GET", "database/creds/down-ro", None).await;
    assert_eq!(status, 503);
    assert!(
        body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("database of connection \"down\" is unreachable: "),
        "{body}"
    );
    let (status, _) = env
        .call("LIST", "sys/leases/lookup/database/creds/", None)
        .await;
    assert_eq!(status, 404, "no lease left behind");
    assert_eq!(
        metric(&env.metrics().await, "pgwarden_issue_failures_total"),
        1.0
    );
}

/// Adds role `sneaky`, whose creation statements commit the user themselves.
async fn add_self_committing_role(env: &Env) {
    let role = json!({ "db_name": "appdb", "creation_statements": [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        "COMMIT;"
    ] });
    let (status, body) = env.call("POST", "database/roles/sneaky", Some(role)).await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test]
async fn a_creation_template_that_commits_by_itself_is_refused_and_its_user_dropped() {
    let env = Env::start(ROLES).await;
    add_self_committing_role(&env).await;
    let (status, body) = env.call("GET", "database/creds/sneaky", None).await;
    assert_eq!(status, 400, "{body}");
    let error = body["errors"][0].as_str().unwrap();
    let username = error
        .strip_prefix("creating user \"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("{error}"));
    assert_eq!(
        error,
        format!(
            "creating user \"{username}\" for role \"sneaky\": the creation statements end the \
             transaction (COMMIT, END or ROLLBACK); remove that statement: pgwarden commits the \
             user itself once its lease is recorded"
        )
    );
    // The template committed the user; its lease, recorded first, has it dropped.
    env.wait_role_gone(username, Duration::from_secs(10))
        .await
        .expect("the user the template committed is dropped");
    env.wait_no_leases(Duration::from_secs(5))
        .await
        .expect("no lease left behind");
    assert_eq!(
        metric(&env.metrics().await, "pgwarden_issue_failures_total"),
        1.0
    );
}

#[tokio::test]
async fn a_lease_that_cannot_be_recorded_leaves_no_user_even_from_a_self_committing_template() {
    let cluster = pgwarden_testkit::PgCluster::start_with_appdb()
        .await
        .unwrap();
    let su = cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute("CREATE DATABASE state").await.unwrap();
    let state = format!(
        "state: {{ postgresql: {{ url: \"{}\" }} }}",
        cluster.superuser_url("state")
    );
    let broker = TestBroker::start(&cluster, ROLES, &state).await;
    let env = Env {
        cluster,
        broker,
        http: reqwest::Client::new(),
    };
    add_self_committing_role(&env).await;
    // The state refuses every new lease.
    let state = env.cluster.connect_superuser("state").await.unwrap();
    state
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'no room for leases'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON pgwarden_leases \
             FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let app = env.cluster.connect_superuser("appdb").await.unwrap();
    for role in ["sneaky", "custom-reader", "appdb-readonly"] {
        let (status, body) = env
            .call("GET", &format!("database/creds/{role}"), None)
            .await;
        assert_eq!(status, 500, "{role}: {body}");
        assert_eq!(
            body,
            json!({"errors": ["state database: db error: ERROR: no room for leases"]}),
            "{role}"
        );
        // Refused before its answer: whatever the statements made is gone already.
        let left: i64 = app
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%' AND rolname LIKE $1",
                &[&format!("%{}%", role.split('-').next_back().unwrap())],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{role}: a user outlived its unrecorded lease");
    }
    assert_eq!(
        metric(&env.metrics().await, "pgwarden_issue_failures_total"),
        3.0
    );
    // Once the state takes leases again, so does issuance.
    state
        .batch_execute("DROP TRIGGER refuse ON pgwarden_leases")
        .await
        .unwrap();
    env.creds("custom-reader").await;
}

#[tokio::test]
async fn failed_revocation_is_retried_and_stays_visible() {
    let env = Env::start(ROLES).await;
    let creds = env.creds("appdb-readonly").await;
    // Lock pgwarden's administrator out, and end its pooled sessions.
    let su = env.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!("ALTER ROLE {ADMIN} NOLOGIN"))
        .await
        .unwrap();
    su.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
        &[&ADMIN],
    )
    .await
    .unwrap();
    poll_until(Duration::from_secs(10), || async {
        let sessions: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&ADMIN],
            )
            .await
            .unwrap()
            .get(0);
        sessions == 0
    })
    .await
    .expect("the administrator's sessions end");

    let (status, body) = env.revoke(&creds.lease_id).await;
    assert_eq!(status, 500, "{body}");
    let message = body["errors"][0].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "revoking lease {:?} failed (attempt 1, retrying in 1s): ",
            creds.lease_id
        )),
        "{message}"
    );
    let (_, lookup) = env
        .call(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": creds.lease_id })),
        )
        .await;
    assert_eq!(lookup["data"]["state"], "revoking");
    assert!(lookup["data"]["revocation_attempts"].as_u64().unwrap() >= 1);
    assert!(
        lookup["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{lookup}"
    );
    let metrics = env.metrics().await;
    assert_eq!(metric(&metrics, "pgwarden_leases_failing_revocation"), 1.0);
    assert!(metric(&metrics, "pgwarden_revocation_failures_total") >= 1.0);

    // Let it back in: the retry succeeds on its own.
    su.batch_execute(&format!("ALTER ROLE {ADMIN} LOGIN"))
        .await
        .unwrap();
    env.wait_role_gone(&creds.username, Duration::from_secs(10))
        .await
        .expect("retried revocation succeeded");
    poll_until(Duration::from_secs(5), || async {
        metric(&env.metrics().await, "pgwarden_leases_failing_revocation") == 0.0
    })
    .await
    .expect("the lease leaves the failing ones");
    let metrics = env.metrics().await;
    // The retry finished a revocation that was asked for, long before the lease's expiry.
    assert_eq!(
        metric(
            &metrics,
            "pgwarden_leases_revoked_total{reason=\"requested\"}"
        ),
        1.0
    );
    assert!(!metrics.contains("reason=\"expired\""), "{metrics}");
    let (status, _) = env
        .call(
            "PUT",
            "sys/leases/lookup",
            Some(json!({ "lease_id": creds.lease_id })),
        )
        .await;
    assert_eq!(status, 400);
}

/// The audit records of one issue and one revoke, in chain order: each request's start is
/// stored before it takes effect, then how it ended; a failed issue says so after its start.
#[tokio::test]
async fn issue_and_revoke_are_audited_before_they_take_effect() {
    let env = Env::start(ROLES).await;
    let creds = env.creds("custom-reader").await;
    let (status, _) = env.revoke(&creds.lease_id).await;
    assert_eq!(status, 204);
    add_unreachable_role(&env).await;
    let (status, _) = env.call("GET", "database/creds/down-ro", None).await;
    assert_eq!(status, 503);

    // The root token pasted where a lease id belongs is kept nowhere.
    let (status, _) = env.revoke(ROOT).await;
    assert_eq!(status, 400);

    // This request's record is durable only after every record queued before it.
    let (status, _) = env.call("LIST", "database/roles", None).await;
    assert_eq!(status, 200);
    let (status, body) = env.call("GET", "pgwarden/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(!text.contains(ROOT), "the root token is in the audit log");
    assert!(
        text.contains("lease \\\"[redacted]\\\" not found"),
        "the refused revocation is audited, its lease id redacted: {text}"
    );
    let audit: pgwarden_core::wire::AuditList =
        serde_json::from_value(body["data"].clone()).unwrap();
    let of_lease: Vec<_> = audit
        .records
        .iter()
        .filter(|r| r.event.object == creds.lease_id)
        .map(|r| {
            let e = &r.event;
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.outcome.as_str(),
                e.detail.clone(),
            )
        })
        .collect();
    let user = format!("user {}", creds.username);
    assert_eq!(
        of_lease,
        vec![
            ("root", "creds.issue", "started", user.clone()),
            ("root", "creds.issue", "success", user.clone()),
            ("root", "lease.revoke", "started", String::new()),
            (
                "pgwarden",
                "user.drop",
                "success",
                format!("requested: {user} dropped")
            ),
            ("root", "lease.revoke", "success", "revoked".into()),
        ]
    );
    let issues: Vec<_> = audit
        .records
        .iter()
        .filter(|r| r.event.action == "creds.issue")
        .collect();
    assert_eq!(
        issues[0].event.request_id, issues[1].event.request_id,
        "a start and its end share the request id"
    );
    // The failed issue: started for a lease that was never made, then the failure.
    let failed: Vec<_> = issues[2..]
        .iter()
        .map(|r| (r.event.outcome.as_str(), r.event.object.as_str()))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, "started");
    assert!(
        failed[0].1.starts_with("database/creds/down-ro/"),
        "{failed:?}"
    );
    assert_eq!(failed[1], ("failure", "database/creds/down-ro"));
    assert_eq!(issues[2].event.request_id, issues[3].event.request_id);
}

/// A request refused before its token is read (a path no route serves, one that is not UTF-8
/// or holds a control character) is audited all the same: probing leaves a trace.
#[tokio::test]
async fn requests_refused_before_routing_are_audited() {
    let env = Env::start(ROLES).await;
    for (method, path, status) in [
        ("GET", "sys/frobnicate", 404),
        ("PUT", "sys/leases/renew/%ff%fe", 400),
        ("GET", "database/creds/x%07", 400),
    ] {
        assert_eq!(env.call(method, path, None).await.0, status, "{path}");
    }
    // Durable only after every record queued before it.
    let (status, _) = env.call("LIST", "database/roles", None).await;
    assert_eq!(status, 200);
    let (status, body) = env.call("GET", "pgwarden/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{body}");
    let audit: pgwarden_core::wire::AuditList =
        serde_json::from_value(body["data"].clone()).unwrap();
    let refused: Vec<_> = audit
        .records
        .iter()
        .map(|r| &r.event)
        .filter(|e| e.action == "request.refused")
        .map(|e| {
            (
                e.actor.as_str(),
                e.outcome.as_str(),
                e.object.as_str(),
                e.detail.as_str(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            (
                "anonymous",
                "failure",
                "sys/frobnicate",
                "no handler for path \"sys/frobnicate\""
            ),
            (
                "anonymous",
                "failure",
                "/v1/sys/leases/renew/%ff%fe",
                "invalid request path: Invalid URL: Invalid UTF-8 in `path`"
            ),
            (
                "anonymous",
                "failure",
                // Cleaned as every audit field is.
                "database/creds/x\\u{7}",
                "the path contains a control character"
            ),
        ]
    );
}
