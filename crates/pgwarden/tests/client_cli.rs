//! The commands for people (`login`, `creds`, `lease`, `request`, `audit`) as the real binary
//! against a real broker and a real PostgreSQL: tokens land in a private file and are used by
//! later commands, credentials really log in and stop working once revoked, errors are one
//! line, and an access request goes from creation through approval to a working credential.

use pgwarden_testkit::PgCluster;
use pgwarden_testkit::broker::{ROOT_TOKEN, TestBroker};
use pgwarden_testkit::issuer::{TestIssuer, TestKey, sign, unix_now};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

const AUD: &str = "pgwarden";

const ROLES: &str =
    "      appdb-readonly: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 2h }
      appdb-admin: { db_name: appdb, preset: admin, default_ttl: 15m, max_ttl: 4h }";

const POLICY: &str = r#"grants:
  - subjects: ["system:serviceaccount:team-a:app"]
    roles: ["database/appdb-readonly"]
  - subjects: ["user:ola@example.com"]
    roles: ["database/appdb-admin"]
    requires_approval: true
    approvers: ["user:kari@example.com"]
"#;

/// A broker with a Kubernetes auth mount (login role `team-a`) and a JWT mount for people
/// (login role `people`, the user from `email`), on a fresh PostgreSQL.
struct Setup {
    cluster: PgCluster,
    issuer: TestIssuer,
    broker: TestBroker,
    _policy_dir: TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let cluster = PgCluster::start_with_appdb().await.unwrap();
        let issuer = TestIssuer::start(&[TestKey::Rsa1]).await;
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, POLICY).unwrap();
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
      team-a: {{ bound_service_account_names: [app], bound_service_account_namespaces: [team-a], token_ttl: 1h }}
  jwt:
    type: jwt
    issuer: "{iss}"
    keys: {{ jwks_url: "{jwks}" }}
    audiences: [{AUD}]
    roles:
      people: {{ user_claim: email, token_ttl: 30m }}
"#,
            policy = policy.display(),
            iss = issuer.issuer(),
            jwks = issuer.jwks_url(),
        );
        let broker = TestBroker::start(&cluster, ROLES, &extra).await;
        Setup {
            cluster,
            issuer,
            broker,
            _policy_dir: dir,
        }
    }

    /// A person's OIDC token.
    fn person_jwt(&self, email: &str) -> String {
        let claims = json!({"iss": self.issuer.issuer(), "aud": AUD, "exp": unix_now() + 600,
            "sub": email, "email": email});
        sign(TestKey::Rsa1, &claims)
    }

    /// Someone at a terminal with their own home directory (and so their own token file).
    fn user(&self) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            addr: self.broker.base.clone(),
            path: format!(
                "{}:{}",
                self.cluster.bin_dir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        }
    }
}

/// One person running `pgwarden` with `HOME` of their own and `PGWARDEN_ADDR` set.
struct User {
    home: TempDir,
    addr: String,
    path: String,
}

/// What a run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl Run {
    /// Panics unless the command succeeded; returns its standard output.
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "stderr: {}", self.err);
        self.out
    }

    /// Standard output parsed as JSON, after checking the command succeeded.
    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

impl User {
    fn token_file(&self) -> std::path::PathBuf {
        self.home.path().join(".pgwarden-token")
    }

    /// Runs `pgwarden args…` with only the variables in `env` beyond HOME, PATH and
    /// PGWARDEN_ADDR (an empty value unsets one), feeding `stdin`.
    async fn run_with(&self, env: &[(&str, &str)], stdin: &str, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"));
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", &self.path)
            .env("PGWARDEN_ADDR", &self.addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            if value.is_empty() {
                cmd.env_remove(name);
            } else {
                cmd.env(name, value);
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.unwrap();
        Run {
            code: out.status.code().unwrap(),
            out: String::from_utf8(out.stdout).unwrap(),
            err: String::from_utf8(out.stderr).unwrap(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(&[], "", args).await
    }

    /// As root (PGWARDEN_TOKEN is the root token).
    async fn root(&self, args: &[&str]) -> Run {
        self.run_with(&[("PGWARDEN_TOKEN", ROOT_TOKEN)], "", args)
            .await
    }

    /// Logs in as a person through the JWT mount, the token on standard input.
    async fn login_person(&self, setup: &Setup, email: &str) {
        let jwt = setup.person_jwt(email);
        let out = self
            .run_with(
                &[],
                &format!("{jwt}\n"),
                &["login", "--mount", "jwt", "--role", "people", "--jwt-stdin"],
            )
            .await
            .ok();
        assert!(
            out.starts_with(&format!("logged in as user:{email} ")),
            "{out}"
        );
    }
}

/// Logs into PostgreSQL with a credential printed as JSON and returns `session_user` (the
/// presets switch `current_user` to their group role).
async fn connect(cluster: &PgCluster, creds: &Value) -> Result<String, tokio_postgres::Error> {
    let client = cluster
        .connect_as(
            creds["username"].as_str().unwrap(),
            creds["password"].as_str().unwrap(),
            creds["database"].as_str().unwrap(),
        )
        .await?;
    let row = client.query_one("SELECT session_user::text", &[]).await?;
    Ok(row.get(0))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn login_creds_leases_and_errors() {
    let setup = Setup::start().await;
    let user = setup.user();
    let sa_file = user.home.path().join("sa-token");
    let sa = setup
        .issuer
        .service_account_token(TestKey::Rsa1, AUD, "team-a", "app");
    std::fs::write(&sa_file, &sa).unwrap();

    // Before logging in: one line saying how to get a token.
    let run = user.run(&["creds", "database/appdb-readonly"]).await;
    assert_eq!(
        (run.code, run.out.as_str(), run.err),
        (
            1,
            "",
            format!(
                "error: no token: log in with `pgwarden login`, or set PGWARDEN_TOKEN (no token \
                 file at {})\n",
                user.token_file().display()
            )
        )
    );

    // login: the token lands in a 0600 file and is not printed.
    let out = user
        .run(&[
            "login",
            "--role",
            "team-a",
            "--jwt-file",
            sa_file.to_str().unwrap(),
        ])
        .await
        .ok();
    let token = std::fs::read_to_string(user.token_file()).unwrap();
    let token = token.trim();
    assert!(!token.is_empty());
    assert_eq!(mode(&user.token_file()), 0o600);
    assert!(!out.contains(token), "the token was printed: {out}");
    assert!(
        out.starts_with(
            "logged in as system:serviceaccount:team-a:app (auth/kubernetes role team-a); \
             the token expires "
        ) && out.ends_with(&format!(
            " (in 1h) and is saved in {}\n",
            user.token_file().display()
        )),
        "{out}"
    );
    // --print puts the token alone on stdout, the summary on stderr.
    let run = user
        .run(&[
            "login",
            "--role",
            "team-a",
            "--jwt-file",
            sa_file.to_str().unwrap(),
            "--print",
        ])
        .await;
    let saved = std::fs::read_to_string(user.token_file()).unwrap();
    assert_eq!(run.out, saved, "stderr: {}", run.err);
    assert!(run.err.starts_with("logged in as "), "{}", run.err);
    let token = saved.trim().to_string();

    // creds --format json, with the saved token: the password logs in.
    let creds = user
        .run(&["creds", "database/appdb-readonly", "--format", "json"])
        .await
        .json();
    assert_eq!(creds["lease_duration"], 3600);
    assert_eq!(creds["renewable"], true);
    assert_eq!(creds["database"], "appdb");
    let username = creds["username"].as_str().unwrap().to_string();
    assert_eq!(connect(&setup.cluster, &creds).await.unwrap(), username);
    let lease = creds["lease_id"].as_str().unwrap().to_string();
    assert!(
        lease.starts_with("database/creds/appdb-readonly/"),
        "{lease}"
    );

    // The table shows the same fields, aligned.
    let table = user.run(&["creds", "database/appdb-readonly"]).await.ok();
    let keys: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "lease_id",
            "lease_duration",
            "renewable",
            "username",
            "password",
            "host",
            "port",
            "database"
        ]
    );
    assert!(table.contains("\nlease_duration  1h\n"), "{table}");

    // creds --env: shell lines that a shell evaluates into a working psql session.
    let env = user
        .run(&["creds", "database/appdb-readonly", "--env"])
        .await
        .ok();
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(lines.len(), 6, "{env}");
    assert!(lines[0].starts_with("# lease database/creds/appdb-readonly/"));
    assert!(lines[0].ends_with(" for 1h"), "{env}");
    assert_eq!(lines[1], "export PGHOST=127.0.0.1");
    assert_eq!(lines[2], format!("export PGPORT={}", setup.cluster.port()));
    assert_eq!(lines[3], "export PGDATABASE=appdb");
    assert!(lines[4].starts_with("export PGUSER=v-"), "{env}");
    assert!(lines[5].starts_with("export PGPASSWORD="), "{env}");
    let shell = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{env}\npsql -XtAc 'SELECT session_user'"))
        .env_clear()
        .env("PATH", &user.path)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(shell.stdout).unwrap(),
        format!("{}\n", lines[4].trim_start_matches("export PGUSER=")),
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );

    // creds --psql: psql runs with the credential, the arguments after `--` passed on.
    let psql = user
        .run(&[
            "creds",
            "database/appdb-readonly",
            "--psql",
            "--",
            "-XtAc",
            "SELECT session_user LIKE 'v-%'",
        ])
        .await
        .ok();
    assert_eq!(psql, "t\n");

    // lease lookup and renew.
    let lookup = user
        .run(&["lease", "lookup", &lease, "--format", "json"])
        .await
        .json();
    assert_eq!(
        (lookup["id"].as_str(), lookup["state"].as_str()),
        (Some(lease.as_str()), Some("active"))
    );
    let renewed = user
        .run(&["lease", "renew", &lease, "--increment", "30m"])
        .await
        .ok();
    assert_eq!(renewed, format!("renewed {lease}: 30m left\n"));
    let renewed = user
        .run(&["lease", "renew", &lease, "--increment", "5h"])
        .await;
    assert_eq!(renewed.code, 0, "{}", renewed.err);
    assert!(renewed.err.starts_with("warning: "), "{}", renewed.err);

    // lease list needs root; lists every lease id.
    let run = user.run(&["lease", "list"]).await;
    assert_eq!(
        (run.code, run.err.as_str()),
        (1, "error: permission denied\n")
    );
    let list = user.root(&["lease", "list", "database/creds"]).await.ok();
    assert!(list.lines().any(|l| l == lease), "{list}");
    assert_eq!(list.lines().count(), 4, "{list}");
    assert_eq!(user.root(&["lease", "list"]).await.ok(), list, "all leases");
    let list = user
        .root(&[
            "lease",
            "list",
            "database/creds/appdb-admin",
            "--format",
            "json",
        ])
        .await
        .json();
    assert_eq!(list, json!({"keys": []}));

    // lease revoke: the password stops working.
    let out = user.run(&["lease", "revoke", &lease]).await.ok();
    assert_eq!(out, format!("revoked {lease}\n"));
    let refused = connect(&setup.cluster, &creds).await.unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{refused}"
    );

    // A bad token: the server's message on one line, exit 1.
    for env in [
        ("PGWARDEN_TOKEN", "not-a-token"),
        ("VAULT_TOKEN", "not-a-token"),
    ] {
        let run = user
            .run_with(&[env], "", &["creds", "database/appdb-readonly"])
            .await;
        assert_eq!(
            (run.code, run.out.as_str(), run.err.as_str()),
            (1, "", "error: permission denied\n")
        );
    }
    // A role the policy does not grant.
    let run = user.run(&["creds", "database/appdb-admin"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.err.lines().count(), 1, "{}", run.err);
    assert!(run.err.starts_with("error: "), "{}", run.err);

    // The address: --addr beats PGWARDEN_ADDR, which beats VAULT_ADDR.
    let dead = "http://127.0.0.1:9";
    let run = user
        .run_with(&[("PGWARDEN_ADDR", dead)], "", &["lease", "lookup", "x"])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err
            .starts_with(&format!("error: cannot reach pgwarden at {dead}: ")),
        "{}",
        run.err
    );
    let run = user
        .run_with(
            &[("PGWARDEN_ADDR", dead)],
            "",
            &["lease", "lookup", &lease, "--addr", &user.addr],
        )
        .await;
    assert_eq!(
        run.err,
        format!("error: lease \"{lease}\" not found (it may have expired or been revoked)\n")
    );
    let run = user
        .run_with(
            &[("PGWARDEN_ADDR", ""), ("VAULT_ADDR", &user.addr)],
            "",
            &[
                "creds",
                "database/appdb-readonly",
                "--token",
                &token,
                "--format",
                "json",
            ],
        )
        .await
        .json();
    assert_eq!(
        connect(&setup.cluster, &run).await.unwrap(),
        run["username"]
    );

    // Usage errors are clap's: exit 2.
    let run = user.run(&["creds", "appdb-readonly"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.err
            .contains("expected <mount>/<role>, e.g. database/appdb-readonly"),
        "{}",
        run.err
    );
    let run = user.run(&["login", "--role", "team-a"]).await;
    assert_eq!(run.code, 2, "{}", run.err);
    let run = user.run(&["request", "list", "--state", "sleeping"]).await;
    assert_eq!(run.code, 2, "{}", run.err);
    let run = user.run(&["audit", "tail", "--since", "yesterday"]).await;
    assert_eq!(run.code, 2, "{}", run.err);

    // A token file others can read still works, with a warning.
    std::fs::set_permissions(user.token_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = user.run(&["lease", "lookup", "x"]).await;
    assert_eq!(
        run.err.lines().next().unwrap(),
        format!(
            "warning: the token file {} is readable by other users; chmod 600 it",
            user.token_file().display()
        )
    );

    // PGWARDEN_TOKEN_FILE moves the token file.
    let elsewhere = user.home.path().join("elsewhere").join("tok");
    std::fs::create_dir(elsewhere.parent().unwrap()).unwrap();
    user.run_with(
        &[("PGWARDEN_TOKEN_FILE", elsewhere.to_str().unwrap())],
        "",
        &[
            "login",
            "--role",
            "team-a",
            "--jwt-file",
            sa_file.to_str().unwrap(),
        ],
    )
    .await
    .ok();
    assert_eq!(mode(&elsewhere), 0o600);
}

/// Every command and flag explains itself.
#[tokio::test]
async fn help_explains_every_command() {
    let home = tempfile::tempdir().unwrap();
    let user = User {
        home,
        addr: "http://127.0.0.1:9".into(),
        path: std::env::var("PATH").unwrap_or_default(),
    };
    for command in [
        &["login", "--help"][..],
        &["creds", "--help"],
        &["lease", "renew", "--help"],
        &["request", "create", "--help"],
        &["request", "creds", "--help"],
        &["audit", "tail", "--help"],
    ] {
        let help = user.run(command).await.ok();
        for flag in ["--addr <URL>", "--token <TOKEN>", "--format <FORMAT>"] {
            assert!(help.contains(flag), "{command:?}: {help}");
        }
        // Every option is followed by its explanation on the next line.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_start();
            if line.starts_with("--") || line.starts_with("-h") {
                let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
                assert!(!next.is_empty(), "{command:?}: {line} has no help");
            }
        }
    }
}

/// Standard output's JSON lines.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Ola asks for appdb-admin for Per, Kari approves, Per logs into PostgreSQL with it, Ola
/// withdraws and the password stops working; the audit log shows it all.
#[tokio::test]
async fn an_access_request_from_creation_to_withdrawal() {
    let setup = Setup::start().await;
    let (ola, kari, per) = (setup.user(), setup.user(), setup.user());
    ola.login_person(&setup, "ola@example.com").await;
    kari.login_person(&setup, "kari@example.com").await;
    per.login_person(&setup, "per@example.com").await;

    // Without a request, the role is refused, and the message names the command to use.
    let run = ola.run(&["creds", "database/appdb-admin"]).await;
    assert_eq!(
        (run.code, run.err.as_str()),
        (
            1,
            "error: database/appdb-admin is granted only through an approved access request: \
             pgwarden request create database/appdb-admin --reason \"…\" \
             (POST /v1/pgwarden/requests)\n"
        )
    );
    // A role no approval grant names cannot be requested.
    let run = per
        .run(&["request", "create", "database/appdb-admin", "--reason", "x"])
        .await;
    assert_eq!(
        (run.code, run.err.as_str()),
        (
            1,
            "error: no policy grant lets user:per@example.com request database/appdb-admin: ask \
             for a role a grant with requires_approval: true names for you\n"
        )
    );

    let created = ola
        .run(&[
            "request",
            "create",
            "database/appdb-admin",
            "--reason",
            "fix invoice 42",
            "--ttl",
            "30m",
            "--subject",
            "user:per@example.com",
            "--format",
            "json",
        ])
        .await
        .json();
    assert_eq!(created["state"], "pending");
    assert_eq!(created["requester"], "user:ola@example.com");
    assert_eq!(created["subjects"], json!(["user:per@example.com"]));
    assert_eq!(created["ttl"], 1800);
    let id = created["id"].as_str().unwrap().to_string();

    // Nobody gets the credential while it is pending.
    let run = per.run(&["request", "creds", &id]).await;
    assert_eq!(
        (run.code, run.out.as_str(), run.err),
        (
            1,
            "",
            format!("error: request {id} is pending: it needs 1 more approval(s)\n")
        )
    );

    // The requester and a non-approver may not decide; the server's words, one line.
    let run = ola
        .run(&["request", "approve", &id, "--reason", "me"])
        .await;
    assert_eq!(
        (run.code, run.err),
        (
            1,
            format!(
                "error: user:ola@example.com made request {id} and may not decide it; another \
                 approver must\n"
            )
        )
    );
    let run = per
        .run(&["request", "approve", &id, "--reason", "me"])
        .await;
    assert_eq!(
        (run.code, run.err),
        (
            1,
            format!("error: user:per@example.com is not an approver of request {id}\n")
        )
    );

    // The approver sees it pending, in a table.
    let list = kari
        .run(&["request", "list", "--state", "pending"])
        .await
        .ok();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "STATE",
            "ROLE",
            "REQUESTER",
            "TTL",
            "CREATED",
            "REASON"
        ]
    );
    // Columns are aligned: each header starts where its values start.
    assert_eq!(lines[0].find("STATE"), lines[1].find("pending"), "{list}");
    assert!(lines[1].starts_with(&format!(
        "{id}  pending  database/appdb-admin  user:ola@example.com  30m  "
    )));
    assert!(lines[1].ends_with("  fix invoice 42"), "{list}");

    let approved = kari
        .run(&[
            "request",
            "approve",
            &id,
            "--reason",
            "ok, ticket 42",
            "--format",
            "json",
        ])
        .await
        .json();
    assert_eq!(approved["state"], "approved");
    assert_eq!(
        approved["approvals"][0]["approver"],
        "user:kari@example.com"
    );
    let run = kari
        .run(&["request", "deny", &id, "--reason", "late"])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.err.starts_with(&format!(
            "error: request {id} is already approved (by user:kari@example.com at "
        )) && run.err.ends_with(")\n"),
        "{}",
        run.err
    );

    // The subject fetches the credential; it logs in. The requester, not a subject, may not.
    let creds = per
        .run(&["request", "creds", &id, "--format", "json"])
        .await
        .json();
    let username = connect(&setup.cluster, &creds).await.unwrap();
    assert_eq!(username, creds["username"].as_str().unwrap());
    // Issued at the approval: what is left of the 30 minutes.
    let left = creds["lease_duration"].as_u64().unwrap();
    assert!((1790..=1800).contains(&left), "{left}");
    let run = ola.run(&["request", "creds", &id]).await;
    assert_eq!(
        (run.code, run.err),
        (
            1,
            format!(
                "error: user:ola@example.com is not a subject of request {id}: only \
                 user:per@example.com may read its credential\n"
            )
        )
    );
    let env = per.run(&["request", "creds", &id, "--env"]).await.ok();
    assert!(
        env.contains(&format!("\nexport PGUSER={username}\n")),
        "{env}"
    );

    let shown = ola.run(&["request", "show", &id]).await.ok();
    assert!(shown.contains("\nstate        approved\n"), "{shown}");
    assert!(
        shown.contains("\napproved by  user:kari@example.com at "),
        "{shown}"
    );
    assert!(shown.contains(": ok, ticket 42\n"), "{shown}");

    // Only the requester (or root) withdraws; withdrawing revokes the credential at once.
    let run = kari.run(&["request", "withdraw", &id]).await;
    assert_eq!(
        (run.code, run.err),
        (
            1,
            format!(
                "error: only the requester (user:ola@example.com) or root may withdraw request \
                 {id}\n"
            )
        )
    );
    let withdrawn = ola
        .run(&["request", "withdraw", &id, "--format", "json"])
        .await
        .json();
    assert_eq!(withdrawn["state"], "withdrawn");
    let refused = connect(&setup.cluster, &creds).await.unwrap_err();
    assert_eq!(
        refused.as_db_error().map(|e| e.code().code()),
        Some("28P01"),
        "{refused}"
    );
    let run = per.run(&["request", "creds", &id]).await;
    assert_eq!(
        (run.code, run.err),
        (
            1,
            format!("error: request {id} is withdrawn: it has no credential\n")
        )
    );
    let missing = per.run(&["request", "show", "req-nosuchrequest"]).await;
    assert_eq!(
        (missing.code, missing.err.as_str()),
        (1, "error: no access request \"req-nosuchrequest\"\n")
    );

    // A second request, denied.
    let second = ola
        .run(&[
            "request",
            "create",
            "database/appdb-admin",
            "--reason",
            "again",
            "--format",
            "json",
        ])
        .await
        .json();
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(second["subjects"], json!(["user:ola@example.com"]));
    let denied = kari
        .run(&[
            "request",
            "deny",
            second_id,
            "--reason",
            "not today",
            "--format",
            "json",
        ])
        .await
        .json();
    assert_eq!(denied["state"], "denied");
    assert_eq!(denied["denial"]["approver"], "user:kari@example.com");
    assert_eq!(denied["denial"]["reason"], "not today");
    let all = ola
        .run(&["request", "list", "--format", "json"])
        .await
        .json();
    let ids: Vec<&str> = all["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second_id, id.as_str()], "newest first");
    let only = ola
        .run(&["request", "list", "--state", "denied", "--format", "json"])
        .await
        .json();
    assert_eq!(only["requests"].as_array().unwrap().len(), 1, "{only}");
    let none = per.run(&["request", "list", "--state", "pending"]).await;
    assert_eq!(
        (none.code, none.out.as_str(), none.err.as_str()),
        (0, "", "no requests\n")
    );

    // The audit log, as root: JSON lines, oldest first, with the request's story.
    let run = ola.run(&["audit", "tail", "--format", "json"]).await;
    assert_eq!(
        (run.code, run.err.as_str()),
        (1, "error: permission denied\n")
    );
    let records = json_lines(&ola.root(&["audit", "tail", "--format", "json"]).await.ok());
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let story: Vec<(&str, &str, &str)> = records
        .iter()
        // The object names the request (its id, or its API path).
        .filter(|r| r["object"].as_str().unwrap().contains(id.as_str()))
        .map(|r| {
            (
                r["actor"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for step in [
        ("user:kari@example.com", "request.approve", "success"),
        ("user:ola@example.com", "request.approve", "denied"),
        ("user:per@example.com", "request.creds", "success"),
        ("user:ola@example.com", "request.withdraw", "success"),
    ] {
        assert!(story.contains(&step), "{step:?} missing from {story:?}");
    }
    // Filters, and the table form: one line per record.
    let kari_lines = ola
        .root(&[
            "audit",
            "tail",
            "--actor",
            "user:kari@example.com",
            "--action",
            "request.approve",
        ])
        .await
        .ok();
    let lines: Vec<&str> = kari_lines.lines().collect();
    assert_eq!(lines.len(), 1, "{kari_lines}");
    let fields: Vec<&str> = lines[0].split("  ").collect();
    assert_eq!(
        (fields[1], fields[2], fields[4]),
        ("user:kari@example.com", "request.approve", "success"),
        "{kari_lines}"
    );
    assert!(fields[3].contains(id.as_str()), "{kari_lines}");
    assert!(
        fields[0].ends_with('Z') && fields[0].len() == 20,
        "{kari_lines}"
    );
    let later = ola
        .root(&["audit", "tail", "--since", "2999-01-01T00:00:00Z"])
        .await
        .ok();
    assert_eq!(later, "");

    // --follow prints new records as they are written.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args([
            "audit",
            "tail",
            "--follow",
            "--format",
            "json",
            "--actor",
            "user:per@example.com",
        ])
        .env_clear()
        .env("PGWARDEN_ADDR", &ola.addr)
        .env("PGWARDEN_TOKEN", ROOT_TOKEN)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    let read_until =
        async |lines: &mut tokio::io::BufReader<_>, seen: &mut Vec<Value>, action: &str| {
            use tokio::io::AsyncBufReadExt;
            loop {
                let mut line = String::new();
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    lines.read_line(&mut line),
                )
                .await
                .expect("a record within 10 s")
                .unwrap();
                assert!(n > 0, "audit tail --follow ended");
                let record: Value = serde_json::from_str(&line).unwrap();
                let found = record["action"] == action;
                seen.push(record);
                if found {
                    return;
                }
            }
        };
    read_until(&mut lines, &mut seen, "request.creds").await;
    per.run(&["request", "show", &id]).await.ok();
    read_until(&mut lines, &mut seen, "request.read").await;
    assert!(seen.iter().all(|r| r["actor"] == "user:per@example.com"));
    follow.kill().await.unwrap();
}
