//! The agent keeps an RDS IAM token in its files: signed with static AWS keys from its
//! environment, written in the usual formats, re-signed after `refresh` with `on_change` fired.
//! The signing clock is the agent's, so the token is checked by parsing it rather than by
//! comparing it with one made here.

use percent_encoding::percent_decode_str;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const ACCESS_KEY_ID: &str = "AKIDAGENTRDSTEST";

/// The token's query parameters, decoded, and the `host:port` it starts with.
fn parse_token(token: &str) -> (String, HashMap<String, String>) {
    let (host, query) = token.split_once("/?").expect("host:port/?query");
    let params = query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("name=value");
            (
                name.to_string(),
                percent_decode_str(value)
                    .decode_utf8()
                    .unwrap()
                    .into_owned(),
            )
        })
        .collect();
    (host.to_string(), params)
}

/// The `PGPASSWORD` of an env-format file.
fn env_password(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("PGPASSWORD="))
        .map(str::to_string)
}

/// Waits up to 20 seconds for `check` to hold.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn writes_an_rds_token_and_refreshes_it() {
    // SAFETY: this test binary runs this one test, and nothing else runs yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "agent-test-secret");
        for name in [
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            std::env::remove_var(name);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = d.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
listen: "127.0.0.1:{port}"
credentials:
  - rds: {{ hostname: mydb.abc123.eu-west-1.rds.amazonaws.com, port: 5432, username: "app user", region: eu-west-1, database: appdb, refresh: 2s }}
    files:
      - {{ path: {d}/rds.env, format: env }}
      - {{ path: {d}/rds.url, format: url }}
      - {{ path: {d}/rds.json, format: json }}
    on_change: {{ command: [/bin/sh, -c, "echo changed >> {d}/changes"] }}
"#,
            d = d.display()
        ),
    )
    .unwrap();
    let agent = pgwarden_agent::AgentConfig::load(&config).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = runtime.spawn(pgwarden_agent::run(
        agent,
        pgwarden_agent::Mode::Sidecar,
        async move {
            let _ = stopped.await;
        },
    ));

    let env_file = d.join("rds.env");
    wait_for("the token files", || env_password(&env_file).is_some());
    let first = env_password(&env_file).unwrap();
    let (host, params) = parse_token(&first);
    assert_eq!(host, "mydb.abc123.eu-west-1.rds.amazonaws.com:5432");
    assert_eq!(params["Action"], "connect");
    assert_eq!(params["DBUser"], "app user");
    assert!(first.contains("DBUser=app%20user&"), "{first}");
    assert_eq!(params["X-Amz-Expires"], "900");
    assert_eq!(params["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(params["X-Amz-SignedHeaders"], "host");
    let credential = &params["X-Amz-Credential"];
    assert!(
        credential.starts_with(&format!("{ACCESS_KEY_ID}/"))
            && credential.ends_with("/eu-west-1/rds-db/aws4_request"),
        "{credential}"
    );
    assert!(!params.contains_key("X-Amz-Security-Token"));
    assert_eq!(params["X-Amz-Signature"].len(), 64);

    let env_text = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(
        env_text,
        format!(
            "PGUSER=app user\nPGPASSWORD={first}\nPGHOST=mydb.abc123.eu-west-1.rds.amazonaws.com\nPGPORT=5432\nPGDATABASE=appdb\n"
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("rds.json")).unwrap()).unwrap();
    assert_eq!(json["password"], first.as_str());
    assert_eq!(json["username"], "app user");
    assert_eq!(json["port"], 5432);
    let url = std::fs::read_to_string(d.join("rds.url")).unwrap();
    assert!(
        url.starts_with("postgresql://app%20user:mydb%2Eabc123")
            && url.ends_with("@mydb.abc123.eu-west-1.rds.amazonaws.com:5432/appdb\n"),
        "{url}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !d.join("changes").exists(),
        "on_change fires on rewrites, not on the first write"
    );

    let ready = get(port, "/readyz");
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    assert!(
        ready.contains(r#""path":"rds:app user@mydb.abc123.eu-west-1.rds.amazonaws.com:5432""#),
        "{ready}"
    );
    let body: serde_json::Value =
        serde_json::from_str(ready.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let valid_for = body["credentials"][0]["valid_for_seconds"]
        .as_u64()
        .unwrap();
    assert!((890..=900).contains(&valid_for), "{valid_for}");

    // After the 2-second refresh: a new token, signed later, and on_change ran.
    wait_for("a refreshed token and on_change", || {
        env_password(&env_file).is_some_and(|token| token != first) && d.join("changes").exists()
    });
    let second = env_password(&env_file).unwrap();
    let (host2, params2) = parse_token(&second);
    assert_eq!(host2, host);
    assert_eq!(params2["DBUser"], "app user");
    assert_ne!(params2["X-Amz-Date"], params["X-Amz-Date"]);
    assert_ne!(params2["X-Amz-Signature"], params["X-Amz-Signature"]);
    assert!(params2["X-Amz-Credential"].starts_with(&format!("{ACCESS_KEY_ID}/")));
    assert!(
        std::fs::read_to_string(d.join("rds.url"))
            .unwrap()
            .contains(&params2["X-Amz-Signature"])
    );
    // Still refreshing: at least one more rewrite and on_change.
    wait_for("a second refresh", || {
        std::fs::read_to_string(d.join("changes")).is_ok_and(|text| text.lines().count() >= 2)
    });
    assert!(
        std::fs::read_dir(d).unwrap().all(|entry| !entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temporary files left"
    );

    stop.send(()).unwrap();
    runtime
        .block_on(handle)
        .unwrap()
        .expect("the agent stops cleanly");
}
