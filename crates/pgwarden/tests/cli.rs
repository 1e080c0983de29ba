//! The offline policy commands, run as the real binary.

use std::process::Command;

fn pgwarden(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const POLICY: &str = r#"grants:
  - subjects: ["system:serviceaccount:team-a:*", "group:team-a"]
    roles: ["database/appdb-user", "database/appdb-readonly"]
    max_ttl: 8h
  - subjects: ["group:dba"]
    roles: ["database/*"]
"#;

#[test]
fn policy_check_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, POLICY).unwrap();
    let good = good.to_str().unwrap();
    assert_eq!(
        pgwarden(&["policy", "check", good]),
        (0, format!("{good}: valid, 2 grant(s)\n"), String::new())
    );

    let (code, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--policy",
        good,
        "--subject",
        "system:serviceaccount:team-a:app",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "database/appdb-user\tgrant 1 (system:serviceaccount:team-a:app, max_ttl 28800s)\n\
         database/appdb-readonly\tgrant 1 (system:serviceaccount:team-a:app, max_ttl 28800s)\n"
    );
    let (_, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--policy",
        good,
        "--subject",
        "user:kari",
        "--subject",
        "group:dba",
    ]);
    assert_eq!(out, "database/*\tgrant 2 (group:dba, role's own max TTL)\n");
    let (_, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--policy",
        good,
        "--subject",
        "system:serviceaccount:team-b:app",
    ]);
    assert_eq!(
        out,
        "nothing: no grant names system:serviceaccount:team-b:app\n"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "grants:\n  - subjects: [\"group:dba\"]\n    roles: [\"database/*\"]\n    max_tll: 8h\n",
    )
    .unwrap();
    let (code, out, err) = pgwarden(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!("error: policy file {}: ", bad.display())),
        "{err}"
    );
    assert!(err.contains("max_tll") && err.contains("line 4"), "{err}");

    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(&config, format!("policy_file: \"{good}\"\n")).unwrap();
    let (code, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--subject",
        "group:dba",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "database/*\tgrant 2 (group:dba, role's own max TTL)\n")
    );
    let (code, _, err) = pgwarden(&["policy", "explain", "--subject", "group:dba"]);
    assert_eq!(code, 2);
    assert!(err.contains("--policy <POLICY>"), "{err}");
}

/// A server whose address is taken ends with one line naming `--listen`; on its way it has made
/// the state store private and warned about a data_dir others can read and a jwt mount that
/// takes tokens for any audience; piped logs carry no terminal colour codes.
#[test]
fn server_start_failure_is_one_clear_line_and_state_stays_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = dir.path().join("root-token");
    std::fs::write(&token, "a-root-token-of-enough-length\n").unwrap();
    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: \"{}\"\nroot_token_file: \"{}\"\nauth:\n  people:\n    type: jwt\n    keys: {{ jwks_file: /nonexistent/jwks.json }}\n    roles: {{ staff: {{ user_claim: email }} }}\n",
            data.display(),
            token.display()
        ),
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let (code, out, err) = pgwarden(&[
        "server",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err.lines().last().unwrap(),
        format!(
            "error: listening on {addr}: Address already in use (os error 98); \
             pick another address with --listen"
        )
    );
    assert!(
        err.contains("data_dir is readable by other users; chmod 700 it"),
        "{err}"
    );
    assert!(
        err.contains("this jwt auth mount takes tokens made for any client of its identity provider (no audiences): set audiences to the client id pgwarden's tokens are made for mount=people"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "colour codes in piped logs: {err:?}");
    let mode = std::fs::metadata(data.join("state.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[cfg(not(feature = "dev"))]
#[test]
fn dev_without_the_feature_says_how_to_get_it() {
    let (code, out, err) = pgwarden(&["dev"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            1,
            "",
            "error: this pgwarden was built without the dev demo (it links test code); \
             build it with `cargo build --release --features dev`\n"
        )
    );
}

/// `pgwarden check` prints one line per connection or missing privilege, with the fix. It
/// reads neither the root token nor the seal key (their files here do not exist).
#[tokio::test]
async fn check_names_what_each_administrator_lacks() {
    use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute("CREATE ROLE weak LOGIN CREATEROLE PASSWORD 'weak-password';")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pgwarden.yaml");
    let url = cluster.templated_url("appdb");
    std::fs::write(
        &config,
        format!(
            r#"root_token_file: /nonexistent/root-token
seal_key_file: /nonexistent/seal-key
mounts:
  database:
    connections:
      good: {{ connection_url: "{url}", username: {APP_ADMIN}, password_env: GOOD_PW, allowed_roles: ["good-*"] }}
      weak: {{ connection_url: "{url}", username: weak, password_env: WEAK_PW, allowed_roles: ["*"] }}
    roles:
      ro: {{ db_name: weak, preset: readonly }}
      stray: {{ db_name: good, preset: readonly }}
"#
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("GOOD_PW", APP_ADMIN_PASSWORD)
        .env("WEAK_PW", "weak-password")
        .env("PGWARDEN_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "database/good: ok\n\
         database/weak: administrator \"weak\" is not a member of pg_signal_backend: sessions of \
         revoked users cannot be ended; fix: GRANT pg_signal_backend TO \"weak\";\n\
         database/weak: administrator \"weak\" does not own database \"appdb\": presets cannot \
         grant CONNECT or TEMPORARY on it; fix: ALTER DATABASE \"appdb\" OWNER TO \"weak\";\n\
         database/weak: administrator \"weak\" does not own schema \"public\": presets cannot \
         grant on its tables or set its default privileges; fix: ALTER SCHEMA \"public\" OWNER \
         TO \"weak\";\n\
         database/stray: role not in the allowed_roles of connection \"good\" ([\"good-*\"]): \
         it can never be issued; fix: add it to allowed_roles\n"
    );
    assert_eq!(
        (out.status.code(), String::from_utf8(out.stderr).unwrap()),
        (Some(1), "error: 4 problem(s) found\n".to_string())
    );
}

/// The operator's subject prefixes are checked as the broker checks a mount's.
#[test]
fn operator_subject_prefixes_are_checked() {
    let (code, _, err) = pgwarden(&["operator", "run", "--people-prefix", "EU/x"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "invalid value 'EU/x' for '--people-prefix <PEOPLE_PREFIX>': must be 1 to 32 \
             lowercase letters, digits or '-', as the mount's subject_prefix"
        ),
        "{err}"
    );
}

/// `proxy --check` reads the files the configuration names, as a start would.
#[test]
fn proxy_check_reads_the_files_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    let write = |tls: &str| {
        std::fs::write(
            &config,
            format!(
                "address: http://127.0.0.1:8200\nlisten: 127.0.0.1:6432\n\
                 auth: {{ identity: {{ logins: [{{ mount: kubernetes, role: apps }}] }} }}\n{tls}"
            ),
        )
        .unwrap();
    };
    let path = config.to_str().unwrap();
    write("");
    assert_eq!(
        pgwarden(&["proxy", "--check", "--config", path]),
        (0, format!("{path}: valid\n"), String::new())
    );
    write("tls: { cert: /nonexistent/tls.crt, key: /nonexistent/tls.key }\n");
    assert_eq!(
        pgwarden(&["proxy", "--check", "--config", path]),
        (
            1,
            String::new(),
            "error: tls.cert /nonexistent/tls.crt: No such file or directory (os error 2)\n"
                .to_string()
        )
    );
}
