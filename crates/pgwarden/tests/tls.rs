//! The API over TLS (`http.tls`): the CLI, the agent and hvac trust pgwarden's private CA and
//! get working credentials; without it they refuse the certificate; plain HTTP gets no answer; a renewed
//! certificate is served without a restart; files that cannot be used stop the start.

mod common;

use common::*;
use pgwarden_testkit::PgCluster;
use pgwarden_testkit::tls::TestCa;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLES: &str =
    "      appdb-readonly: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }";

/// Writes `ca`'s server certificate and key where the configuration reads them, and its CA
/// certificate to `<name>.pem` in `dir`; returns the CA file.
fn install(dir: &Path, ca: &TestCa, name: &str) -> PathBuf {
    // Each file replaced whole, as kubelet updates a mounted Secret.
    for (file, pem) in [("tls.crt", &ca.cert_pem), ("tls.key", &ca.key_pem)] {
        let partial = dir.join(format!("{file}.new"));
        std::fs::write(&partial, pem).unwrap();
        std::fs::rename(&partial, dir.join(file)).unwrap();
    }
    let file = dir.join(format!("{name}.pem"));
    std::fs::write(&file, &ca.ca_pem).unwrap();
    file
}

/// `pgwarden creds database/appdb-readonly --format json` against `base`, trusting `ca` if
/// given: the exit code, stdout and stderr.
fn creds(base: &str, ca: Option<&Path>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pgwarden"));
    command
        .args(["creds", "database/appdb-readonly", "--format", "json"])
        .env_clear()
        .env("PGWARDEN_ADDR", base)
        .env("PGWARDEN_TOKEN", ROOT)
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        command.env("PGWARDEN_CACERT", ca);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `pgwarden agent --once` against `base` with `ca_file:` if given, writing the credential to
/// `dir/agent.json`: the exit code and stderr.
fn agent_once(dir: &Path, base: &str, ca: Option<&Path>) -> (i32, String) {
    let token = dir.join("agent-token");
    std::fs::write(&token, ROOT).unwrap();
    let ca_file = ca.map_or(String::new(), |ca| format!("ca_file: \"{}\"", ca.display()));
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "address: \"{base}\"\n{ca_file}\nauth: {{ token: {{ token_file: \"{}\" }} }}\n\
             listen: \"127.0.0.1:{}\"\ncredentials:\n  - path: database/creds/appdb-readonly\n    \
             files: [{{ path: \"{}\", format: json }}]\n",
            token.display(),
            free_port(),
            dir.join("agent.json").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["agent", "--once", "--config"])
        .arg(&config)
        .env("PGWARDEN_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// What a client that does not trust pgwarden's CA says when asking `base` for a credential.
fn unknown_issuer(base: &str) -> String {
    unknown_issuer_at(base, "database/creds/appdb-readonly")
}

/// [`unknown_issuer`] for a request to `/v1/<path>`.
fn unknown_issuer_at(base: &str, path: &str) -> String {
    format!(
        "error: cannot reach pgwarden at {base}: error sending request for url \
         ({base}/v1/{path}): client error (Connect): invalid peer \
         certificate: UnknownIssuer (pgwarden's certificate is not signed by a CA this client \
         trusts: give the CA's certificate with --ca-cert, PGWARDEN_CACERT or ca_file)\n"
    )
}

/// Logs in with issued credentials: the user's name as PostgreSQL sees it.
async fn login(cluster: &PgCluster, username: &str, password: &str) -> String {
    let client = cluster
        .connect_as(username, password, "appdb")
        .await
        .expect("the credential issued over TLS logs in");
    client
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_api_over_tls_serves_clients_that_trust_its_ca_and_takes_a_renewed_certificate() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::localhost();
    let first_ca = install(dir.path(), &first, "first-ca");
    let tls = format!(
        "http: {{ tls: {{ cert: \"{}\", key: \"{}\" }}, header_read_timeout: 2s }}",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display()
    );
    let config = write_config(dir.path(), "tls.yaml", &cluster, &tls, ROLES);
    let port = free_port();
    let server = spawn_tls_server(&config, port, &APPDB_ENV, &first.ca_pem).await;
    assert!(server.base.starts_with("https://"));

    // The CLI trusting the CA: a credential that logs in.
    let (code, out, err) = creds(&server.base, Some(&first_ca));
    assert_eq!(code, 0, "{err}");
    let issued: Value = serde_json::from_str(&out).unwrap();
    let username = issued["username"].as_str().unwrap();
    assert_eq!(
        login(&cluster, username, issued["password"].as_str().unwrap()).await,
        username
    );

    // Trusting only the system's roots, it refuses the certificate and says why.
    let (code, out, err) = creds(&server.base, None);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, unknown_issuer(&server.base));
    // The agent with `ca_file:` writes a working credential; without it, one clear line.
    let (code, err) = agent_once(dir.path(), &server.base, Some(&first_ca));
    assert_eq!(code, 0, "{err}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("agent.json")).unwrap())
            .unwrap();
    let username = written["username"].as_str().unwrap();
    assert_eq!(
        login(&cluster, username, written["password"].as_str().unwrap()).await,
        username
    );
    // (It first asks about the lease the run above recorded.)
    let (code, err) = agent_once(dir.path(), &server.base, None);
    assert_eq!(code, 1);
    assert_eq!(err, unknown_issuer_at(&server.base, "sys/leases/lookup"));

    // A CA file that holds no certificate.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = creds(&server.base, Some(&empty));
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: cannot use the CA file {}: no certificate in the file\n",
                empty.display()
            )
        )
    );

    // hvac, the Python Vault client: VAULT_CACERT trusted, then the system's roots refused.
    let hvac = Command::new(python())
        .arg(format!("{}/tests/hvac_tls.py", env!("CARGO_MANIFEST_DIR")))
        .env("VAULT_ADDR", &server.base)
        .env("VAULT_TOKEN", ROOT)
        .env("VAULT_CACERT", &first_ca)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = json_lines(hvac);
    let issued = &output[0];
    let username = issued["username"].as_str().unwrap();
    assert_eq!(
        login(&cluster, username, issued["password"].as_str().unwrap()).await,
        username
    );
    assert_eq!(output[1], serde_json::json!({ "refused": true }));

    // A CA file with a plain address would send the token in clear: refused.
    let plain_base = format!("http://127.0.0.1:{port}");
    let (code, _, err) = creds(&plain_base, Some(&first_ca));
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: cannot use the CA file {}: it is for an https:// address, and \
                 {plain_base} is not one\n",
                first_ca.display()
            )
        )
    );

    // Plain HTTP to the TLS port: the CLI says to use https.
    let (code, _, err) = creds(&plain_base, None);
    assert_eq!(
        (code, err),
        (
            1,
            format!(
                "error: cannot reach pgwarden at {plain_base}: error sending request for url \
                 ({plain_base}/v1/database/creds/appdb-readonly): client error (SendRequest): \
                 invalid HTTP version parsed (the server may speak TLS: use an https:// \
                 address)\n"
            )
        )
    );

    // A client that never starts its handshake is closed after header_read_timeout (2 s).
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        use tokio::io::AsyncReadExt;
        silent.read(&mut [0u8; 64]).await
    })
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent client is closed: {closed:?}"
    );

    // Plain HTTP to the TLS port gets no answer, and the server goes on serving.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/v1/sys/health")).await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(creds(&server.base, Some(&first_ca)).0, 0);

    // A renewed certificate from another CA is served within the reload interval, no restart.
    let second = TestCa::localhost();
    let second_ca = install(dir.path(), &second, "second-ca");
    let deadline = Instant::now() + Duration::from_secs(20);
    while creds(&server.base, Some(&second_ca)).0 != 0 {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _, err) = creds(&server.base, Some(&first_ca));
    assert_eq!(code, 1);
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn tls_files_that_cannot_be_used_stop_the_start_with_the_reason() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::localhost();
    install(dir.path(), &ca, "ca");
    let other = TestCa::localhost();
    let foreign_key = dir.path().join("other.key");
    std::fs::write(&foreign_key, &other.key_pem).unwrap();
    let cert = dir.path().join("tls.crt");
    let missing = dir.path().join("missing.key");
    for (key, reason) in [
        (
            &missing,
            format!(
                "error: config: http.tls.key {}: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
        (
            &foreign_key,
            format!(
                "error: config: http.tls: the key {} does not serve the certificate {} (its \
                 first certificate must be the server's own): keys may not be consistent: \
                 KeyMismatch",
                foreign_key.display(),
                cert.display()
            ),
        ),
    ] {
        let tls = format!(
            "http: {{ tls: {{ cert: \"{}\", key: \"{}\" }} }}",
            cert.display(),
            key.display()
        );
        let config = write_config(dir.path(), "bad-tls.yaml", &cluster, &tls, ROLES);
        let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["server", "--config"])
            .arg(&config)
            .env("PGWARDEN_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("PGWARDEN_DATA_DIR", dir.path().join("data"))
            .envs(APPDB_ENV)
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.lines().any(|line| line.starts_with(&reason)),
            "{reason}\n{err}"
        );
    }
}

/// Waits for `child` to exit successfully; its stdout's lines as JSON.
fn json_lines(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the hvac script failed (see above)");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}
