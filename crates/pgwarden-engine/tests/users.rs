//! Dynamic users against a real PostgreSQL: the password works, presets grant what they say,
//! revocation ends sessions and drops the role, renewal moves VALID UNTIL.

use pgwarden_core::{ConnectionDef, RoleDef, RoleKind, RoleSpec, names};
use pgwarden_engine::{NewPassword, Target};
use pgwarden_testkit::{APP_ADMIN as ADMIN, APP_ADMIN_PASSWORD as ADMIN_PW, PgCluster};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;

struct Setup {
    cluster: PgCluster,
    target: Target,
}

async fn setup() -> Setup {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let target = new_target(&cluster);
    target.verify().await.unwrap();
    Setup { cluster, target }
}

/// A fresh target on `cluster`'s `appdb`, as after a restart.
fn new_target(cluster: &PgCluster) -> Target {
    target_at(cluster.templated_url("appdb"))
}

/// A target reached through `connection_url`.
fn target_at(connection_url: String) -> Target {
    Target::new(&ConnectionDef {
        name: "appdb".into(),
        connection_url,
        username: ADMIN.into(),
        password: SecretString::from(ADMIN_PW),
        allowed_roles: vec!["*".into()],
        verify_connection: true,
        auth: Default::default(),
    })
    .unwrap()
}

fn role(name: &str, yaml_json: &str) -> RoleDef {
    serde_json::from_str::<RoleSpec>(yaml_json)
        .unwrap()
        .into_def(name)
        .unwrap()
}

struct Issued {
    username: String,
    password: SecretString,
}

async fn issue(s: &Setup, role: &RoleDef) -> Issued {
    issue_on(&s.target, role, &[]).await.unwrap()
}

/// Creates a user of `role` through `target`, with the connection's `admin_roles`.
async fn issue_on(
    target: &Target,
    role: &RoleDef,
    admin_roles: &[RoleDef],
) -> Result<Issued, pgwarden_engine::EngineError> {
    let username = names::generate_username("test", &role.name, 1);
    let password = NewPassword::generate();
    let expires = OffsetDateTime::now_utc() + Duration::from_secs(600);
    target
        .create_user(role, &username, &password, expires, admin_roles, "root")
        .await?;
    Ok(Issued {
        username,
        password: password.password().clone(),
    })
}

async fn login(s: &Setup, user: &Issued) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    s.cluster
        .connect_as(&user.username, user.password.expose_secret(), "appdb")
        .await
}

async fn role_exists(s: &Setup, name: &str) -> bool {
    s.cluster.role_exists(name).await.unwrap()
}

fn code(e: &tokio_postgres::Error) -> SqlState {
    e.code()
        .cloned()
        .unwrap_or_else(|| panic!("no SQLSTATE in {e:?}"))
}

#[tokio::test]
async fn presets_grant_what_they_claim_and_revocation_drops_the_user() {
    let s = setup().await;
    let readonly = role(
        "appdb-readonly",
        r#"{"db_name":"appdb","preset":"readonly"}"#,
    );
    let user = role("appdb-user", r#"{"db_name":"appdb","preset":"user"}"#);
    let admin = role("appdb-admin", r#"{"db_name":"appdb","preset":"admin"}"#);

    let ro = issue(&s, &readonly).await;
    let ro_client = login(&s, &ro)
        .await
        .expect("issued password logs in with scram-sha-256");
    let row = ro_client
        .query_one("SELECT session_user::text, current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ro.username);
    assert_eq!(
        row.get::<_, String>(1),
        "appdb-readonly",
        "session runs as the group role"
    );
    let n: i64 = ro_client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    let denied = ro_client
        .execute("INSERT INTO items (name) VALUES ('x')", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&denied), SqlState::INSUFFICIENT_PRIVILEGE);

    // A table the owner creates later is readable too (default privileges).
    let owner = s
        .cluster
        .connect_as(ADMIN, ADMIN_PW, "appdb")
        .await
        .unwrap();
    owner
        .batch_execute("CREATE TABLE later (v int); INSERT INTO later VALUES (7);")
        .await
        .unwrap();
    let v: i32 = ro_client
        .query_one("SELECT v FROM later", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 7);

    let rw = issue(&s, &user).await;
    let rw_client = login(&s, &rw).await.unwrap();
    rw_client
        .execute("INSERT INTO items (name) VALUES ('date')", &[])
        .await
        .expect("user may insert");
    let denied = rw_client
        .batch_execute("CREATE TABLE nope (x int)")
        .await
        .unwrap_err();
    assert_eq!(code(&denied), SqlState::INSUFFICIENT_PRIVILEGE);

    let adm = issue(&s, &admin).await;
    let adm_client = login(&s, &adm).await.unwrap();
    adm_client
        .batch_execute("CREATE TABLE made_by_admin (x int)")
        .await
        .unwrap();
    let table_owner: String = owner
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'made_by_admin'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(table_owner, "appdb-admin");

    // Revocation ends live sessions, the password stops working, the role is gone.
    for (issued, def, client) in [(&ro, &readonly, &ro_client), (&adm, &admin, &adm_client)] {
        s.target.revoke_user(def, &issued.username).await.unwrap();
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "session survived revocation"
        );
        let err = login(&s, issued).await.unwrap_err();
        assert_eq!(code(&err), SqlState::INVALID_PASSWORD);
        assert!(!role_exists(&s, &issued.username).await);
    }
    // The admin's table outlives it, owned by the group.
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    let still: i64 = su
        .query_one("SELECT count(*) FROM made_by_admin", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still, 0);
    // Revoking again is not an error.
    s.target.revoke_user(&readonly, &ro.username).await.unwrap();
}

#[tokio::test]
async fn templates_run_in_one_transaction_and_are_disowned_on_revoke() {
    let s = setup().await;
    let reader = role(
        "custom-reader",
        r#"{"db_name":"appdb","creation_statements":[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";"]}"#,
    );
    let r = issue(&s, &reader).await;
    let client = login(&s, &r).await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // A user that owns a table in another database is still dropped, its table kept.
    let su = s.cluster.connect_superuser("postgres").await.unwrap();
    su.batch_execute(&format!("CREATE DATABASE other OWNER {ADMIN}"))
        .await
        .unwrap();
    let su_other = s.cluster.connect_superuser("other").await.unwrap();
    su_other
        .batch_execute(&format!("ALTER SCHEMA public OWNER TO {ADMIN}"))
        .await
        .unwrap();
    let admin_other = s
        .cluster
        .connect_as(ADMIN, ADMIN_PW, "other")
        .await
        .unwrap();
    admin_other
        .batch_execute(&format!(
            "GRANT CREATE ON SCHEMA public TO \"{}\"",
            r.username
        ))
        .await
        .unwrap();
    let in_other = s
        .cluster
        .connect_as(&r.username, r.password.expose_secret(), "other")
        .await
        .unwrap();
    in_other
        .batch_execute("CREATE TABLE leftover (x int)")
        .await
        .unwrap();

    s.target.revoke_user(&reader, &r.username).await.unwrap();
    assert!(!role_exists(&s, &r.username).await);
    let owner: String = su_other
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'leftover'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, ADMIN);

    // A failing statement leaves nothing behind.
    let broken = role(
        "broken",
        r#"{"db_name":"appdb","creation_statements":[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';",
            "GRANT SELECT ON no_such_table TO \"{{name}}\";"]}"#,
    );
    let username = names::generate_username("test", "broken", 1);
    let err = s
        .target
        .create_user(
            &broken,
            &username,
            &NewPassword::generate(),
            OffsetDateTime::now_utc(),
            &[],
            "root",
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "creating user {username:?} for role \"broken\": relation \"no_such_table\" does not exist (SQLSTATE 42P01)"
        )
    );
    // The driver's error travels with it: callers can read the SQLSTATE.
    assert_eq!(err.sqlstate(), Some(&SqlState::UNDEFINED_TABLE));
    assert!(!err.is_retryable());
    assert!(!role_exists(&s, &username).await);
}

#[tokio::test]
async fn renewal_moves_valid_until() {
    let s = setup().await;
    let readonly = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let r = issue(&s, &readonly).await;
    let later =
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + Duration::from_secs(7200);
    s.target
        .renew_user(&readonly, &r.username, later)
        .await
        .unwrap();
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    let until: String = su
        .query_one("SELECT to_char(rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM pg_roles WHERE rolname = $1", &[&r.username])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        format!("{until}+00"),
        pgwarden_core::lease::valid_until(later)
    );
    s.target.revoke_user(&readonly, &r.username).await.unwrap();
    let err = s
        .target
        .renew_user(&readonly, &r.username, later)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("user {:?} no longer exists in the database", r.username)
    );
}

#[tokio::test]
async fn hostile_role_names_stay_inside_their_quotes() {
    let s = setup().await;
    let hostile = role(
        "a\"; DROP TABLE items; --",
        r#"{"db_name":"appdb","preset":"user"}"#,
    );
    let r = issue(&s, &hostile).await;
    let client = login(&s, &r).await.unwrap();
    let current: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, "a\"; DROP TABLE items; --");
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "the sample table is still there");
    s.target.revoke_user(&hostile, &r.username).await.unwrap();
    assert!(!role_exists(&s, &r.username).await);
}

#[tokio::test]
async fn unreachable_database_is_reported_as_such() {
    let def = ConnectionDef {
        name: "gone".into(),
        connection_url: "postgresql://{{username}}:{{password}}@127.0.0.1:1/appdb?sslmode=disable"
            .into(),
        username: ADMIN.into(),
        password: SecretString::from("x"),
        allowed_roles: vec![],
        verify_connection: true,
        auth: Default::default(),
    };
    let err = Target::new(&def).unwrap().verify().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("database of connection \"gone\" is unreachable: "),
        "{err}"
    );
}

#[tokio::test]
async fn sslmode_require_is_never_downgraded_to_plaintext() {
    let s = setup().await;
    let def = ConnectionDef {
        name: "tls".into(),
        connection_url: format!(
            "postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/appdb?sslmode=require",
            s.cluster.port()
        ),
        username: ADMIN.into(),
        password: SecretString::from(ADMIN_PW),
        allowed_roles: vec![],
        verify_connection: true,
        auth: Default::default(),
    };
    let err = Target::new(&def).unwrap().verify().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "database of connection \"tls\" is unreachable: error performing TLS handshake: server does not support TLS"
    );
}

#[tokio::test]
async fn tls_targets_are_verified_against_sslrootcert() {
    use pgwarden_testkit::tls::TestCa;
    let ca = std::sync::Arc::new(TestCa::localhost());
    let server_ca = ca.clone();
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start_with_tls(&server_ca))
        .await
        .unwrap()
        .unwrap();
    cluster
        .create_app_database("appdb", ADMIN, ADMIN_PW)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (good, wrong) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&good, &ca.ca_pem).unwrap();
    std::fs::write(&wrong, TestCa::localhost().ca_pem).unwrap();
    let target = |root: &std::path::Path| {
        let url = cluster.templated_url("appdb").replace(
            "sslmode=disable",
            &format!("sslmode=verify-full&sslrootcert={}", root.display()),
        );
        Target::new(&ConnectionDef {
            name: "tls".into(),
            connection_url: url,
            username: ADMIN.into(),
            password: SecretString::from(ADMIN_PW),
            allowed_roles: vec![],
            verify_connection: true,
            auth: Default::default(),
        })
        .unwrap()
    };

    let verified = target(&good);
    verified.verify().await.expect("TLS with the right CA");
    let su = cluster.connect_superuser("appdb").await.unwrap();
    let encrypted: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = $1 AND s.ssl",
            &[&ADMIN],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "the administrative connection is encrypted");
    let role = role("ro", r#"{"db_name":"tls","preset":"readonly"}"#);
    let username = names::generate_username("test", "ro", 1);
    let expires = OffsetDateTime::now_utc() + Duration::from_secs(60);
    verified
        .create_user(
            &role,
            &username,
            &NewPassword::generate(),
            expires,
            &[],
            "root",
        )
        .await
        .unwrap();
    verified.revoke_user(&role, &username).await.unwrap();

    let err = target(&wrong).verify().await.unwrap_err().to_string();
    assert!(
        err.starts_with("database of connection \"tls\" is unreachable: ")
            && err.contains("invalid peer certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn what_admin_users_create_stays_usable_by_every_preset() {
    let s = setup().await;
    let readonly = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let user = role("rw", r#"{"db_name":"appdb","preset":"user"}"#);
    let admin = role("adm", r#"{"db_name":"appdb","preset":"admin"}"#);
    let admins = std::slice::from_ref(&admin);
    let early_reader = issue_on(&s.target, &readonly, admins).await.unwrap();
    let dba = issue_on(&s.target, &admin, admins).await.unwrap();
    login(&s, &dba)
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE made_by_admin (id serial PRIMARY KEY, note text);
             INSERT INTO made_by_admin (note) VALUES ('kept');",
        )
        .await
        .unwrap();
    // A reader issued before the table existed sees it (default privileges for the admin group).
    let rows = login(&s, &early_reader)
        .await
        .unwrap()
        .query("SELECT note FROM made_by_admin", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);

    // After a restart (fresh target, nothing cached) every preset still issues and works.
    let restarted = new_target(&s.cluster);
    for preset in [&readonly, &user, &admin] {
        issue_on(&restarted, preset, admins).await.unwrap();
    }
    let writer = issue_on(&restarted, &user, admins).await.unwrap();
    login(&s, &writer)
        .await
        .unwrap()
        .batch_execute("INSERT INTO made_by_admin (note) VALUES ('by user')")
        .await
        .unwrap();
    let custom = role(
        "custom",
        r#"{"db_name":"appdb","creation_statements":[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}';",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";"]}"#,
    );
    issue_on(&restarted, &custom, admins).await.unwrap();

    // Revoking the admin user loses nothing it made.
    restarted.revoke_user(&admin, &dba.username).await.unwrap();
    let reader = issue_on(&restarted, &readonly, admins).await.unwrap();
    let count: i64 = login(&s, &reader)
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM made_by_admin", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
}

#[tokio::test]
async fn group_roles_must_be_safe_and_made_by_pgwarden_unless_adopted() {
    let s = setup().await;
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    // A DBA handing an existing group to pgwarden gives its administrator ADMIN OPTION on it
    // (PostgreSQL 16+ requires that to grant a role; older majors accept it).
    su.batch_execute(&format!(
        "CREATE ROLE legacy_group NOLOGIN;
         GRANT legacy_group TO {ADMIN} WITH ADMIN OPTION;
         CREATE ROLE foreign_group NOLOGIN;
         CREATE ROLE powerful_group NOLOGIN CREATEROLE;
         CREATE ROLE rls_group NOLOGIN BYPASSRLS;
         CREATE ROLE file_group NOLOGIN IN ROLE pg_write_server_files;"
    ))
    .await
    .unwrap();
    let refused = |group: &str, reason: &str| format!("group role {group:?} {reason}");
    let attribute = |a: &str| {
        format!(
            "has {a}; a preset's group role must be a NOLOGIN role without SUPERUSER, CREATEROLE \
             or BYPASSRLS, since every dynamic user acts as it"
        )
    };
    for (group, adopt, expected) in [
        (ADMIN, true, refused(ADMIN, &attribute("LOGIN"))),
        (
            "powerful_group",
            true,
            refused("powerful_group", &attribute("CREATEROLE")),
        ),
        (
            "rls_group",
            true,
            refused("rls_group", &attribute("BYPASSRLS")),
        ),
        (
            "file_group",
            true,
            refused(
                "file_group",
                "is a member of \"pg_write_server_files\", which dynamic users could switch to \
                 with SET ROLE; revoke that membership first",
            ),
        ),
        (
            "legacy_group",
            false,
            refused(
                "legacy_group",
                "exists but was not created by pgwarden; set adopt_group_role: true on the role to use it",
            ),
        ),
    ] {
        let r = role(
            "r",
            &format!(
                r#"{{"db_name":"appdb","preset":"readonly","group_role":"{group}","adopt_group_role":{adopt}}}"#
            ),
        );
        let err = issue_on(&s.target, &r, &[]).await.err().expect(group);
        assert_eq!(err.to_string(), expected);
    }
    let adopted = role(
        "r",
        r#"{"db_name":"appdb","preset":"readonly","group_role":"legacy_group","adopt_group_role":true}"#,
    );
    // A predefined role is refused even where a role definition skipped the check at writing
    // (one stored before it existed): its users could run programs on the server.
    let mut predefined = adopted.clone();
    if let RoleKind::Preset { group_role, .. } = &mut predefined.kind {
        *group_role = "pg_execute_server_program".into();
    }
    let err = issue_on(&s.target, &predefined, &[]).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "group role \"pg_execute_server_program\" is a name PostgreSQL reserves for its \
         predefined roles (pg_*), whose powers (such as reading server files or running \
         programs) every dynamic user would get; use a NOLOGIN role of your own and grant it \
         what the users need"
    );
    let user = issue_on(&s.target, &adopted, &[]).await.unwrap();
    login(&s, &user).await.unwrap();
    // Without ADMIN OPTION, PostgreSQL 16+ refuses the grant: the error says how to fix it.
    let version: i32 = su
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let foreign = role(
        "f",
        r#"{"db_name":"appdb","preset":"readonly","group_role":"foreign_group","adopt_group_role":true}"#,
    );
    let outcome = issue_on(&s.target, &foreign, &[]).await;
    if version >= 160000 {
        assert_eq!(
            outcome.err().unwrap().to_string(),
            format!(
                "group role \"foreign_group\" cannot be granted by the administrator \"{ADMIN}\": \
                 as a superuser, run GRANT \"foreign_group\" TO \"{ADMIN}\" WITH ADMIN OPTION"
            )
        );
    } else {
        outcome.unwrap();
    }
    // A group pgwarden creates carries its mark, so it is used without adoption next time.
    let made = role("made", r#"{"db_name":"appdb","preset":"readonly"}"#);
    issue_on(&s.target, &made, &[]).await.unwrap();
    issue_on(&new_target(&s.cluster), &made, &[]).await.unwrap();
}

#[tokio::test]
async fn concurrent_template_grants_and_revocations_are_retried_not_failed() {
    let s = std::sync::Arc::new(setup().await);
    let reader = role(
        "reader",
        r#"{"db_name":"appdb","creation_statements":[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";"]}"#,
    );
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (s, reader) = (s.clone(), reader.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut issued = Vec::new();
            for _ in 0..5 {
                match issue_on(&s.target, &reader, &[]).await {
                    Ok(user) => issued.push(user),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            // Revoked while the other tasks issue and revoke: each drop takes the user's
            // privileges off the same tables.
            for user in issued {
                if let Err(e) = s.target.revoke_user(&reader, &user.username).await {
                    failures.push(e.to_string());
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert_eq!(failures, Vec::<String>::new());
}

/// A revocation retried after its user was dropped (an earlier attempt dropped it, then failed
/// to end its sessions) still ends the sessions that outlived the drop.
#[tokio::test]
async fn a_retried_revocation_ends_sessions_that_outlived_the_drop() {
    let s = setup().await;
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let user = issue(&s, &ro).await;
    let session = login(&s, &user).await.unwrap();
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!("DROP ROLE \"{}\";", user.username))
        .await
        .unwrap();
    session
        .query_one("SELECT 1", &[])
        .await
        .expect("PostgreSQL leaves the sessions of a dropped role running");
    s.target.revoke_user(&ro, &user.username).await.unwrap();
    assert!(
        session.query_one("SELECT 1", &[]).await.is_err(),
        "the session of the dropped user was ended"
    );
}

/// Returns once a `DROP ROLE` waits for a lock (seen through `su`).
async fn until_a_drop_waits(su: &tokio_postgres::Client) {
    for attempt in 0.. {
        assert!(attempt < 1500, "the drop never waited for the lock");
        let waiting: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE '%DROP ROLE%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A revocation dropped (its caller gone) while its drop waits, whose drop then fails, leaves
/// no connection in the pool inside the failed transaction: what the target does next works,
/// and the revocation run again drops the user.
#[tokio::test]
async fn a_revocation_cancelled_inside_its_transaction_leaves_the_pool_usable() {
    let s = setup().await;
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let user = issue(&s, &ro).await;
    let u = &user.username;
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    let blocker = s.cluster.connect_superuser("appdb").await.unwrap();
    blocker
        .batch_execute(&format!("BEGIN; COMMENT ON ROLE \"{u}\" IS 'held';"))
        .await
        .unwrap();
    tokio::select! {
        _ = s.target.revoke_user(&ro, u) => panic!("the drop did not wait for the lock"),
        () = until_a_drop_waits(&su) => {}
    }
    // The drop goes on once the lock is free, and fails: by then the user owns a table.
    blocker
        .batch_execute(&format!(
            "CREATE TABLE owned_by_user (); ALTER TABLE owned_by_user OWNER TO \"{u}\"; COMMIT;"
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        issue_on(&s.target, &ro, &[])
            .await
            .expect("no connection of the pool is left in the failed drop's transaction");
    }
    s.target.revoke_user(&ro, u).await.unwrap();
    assert!(!role_exists(&s, u).await);
}

/// A session that logs in while the revocation's drop waits (here for a lock another
/// transaction holds on the role) is ended once the drop has committed, with the sessions from
/// before: PostgreSQL would leave both running.
#[tokio::test]
async fn a_session_that_logs_in_while_the_drop_waits_is_ended_after_the_commit() {
    let s = setup().await;
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let user = issue(&s, &ro).await;
    let before = login(&s, &user).await.unwrap();
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    let blocker = s.cluster.connect_superuser("appdb").await.unwrap();
    blocker
        .batch_execute(&format!(
            "BEGIN; COMMENT ON ROLE \"{}\" IS 'held';",
            user.username
        ))
        .await
        .unwrap();
    let meanwhile = async {
        until_a_drop_waits(&su).await;
        let during = login(&s, &user)
            .await
            .expect("the user can still log in until its drop commits");
        blocker.batch_execute("COMMIT;").await.unwrap();
        during
    };
    let (revoked, during) = tokio::join!(s.target.revoke_user(&ro, &user.username), meanwhile);
    revoked.unwrap();
    assert!(!role_exists(&s, &user.username).await);
    assert!(
        before.query_one("SELECT 1", &[]).await.is_err(),
        "the session from before the revocation was ended"
    );
    assert!(
        during.query_one("SELECT 1", &[]).await.is_err(),
        "the session that logged in while the drop waited was ended after its commit"
    );
}

/// Only a session whose role is gone counts as left without one: the session of a role named
/// exactly like its own OID (its name reads like the bare OID a dropped role's leaves) is not
/// ended.
#[tokio::test]
async fn a_role_named_like_its_oid_keeps_its_sessions() {
    let s = setup().await;
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute("CREATE ROLE oidlike LOGIN;")
        .await
        .unwrap();
    let oid: u32 = su
        .query_one("SELECT oid FROM pg_roles WHERE rolname = 'oidlike'", &[])
        .await
        .unwrap()
        .get(0);
    su.batch_execute(&format!(
        "ALTER ROLE oidlike RENAME TO \"{oid}\"; ALTER ROLE \"{oid}\" PASSWORD 'pw-{oid}';"
    ))
    .await
    .unwrap();
    let session = s
        .cluster
        .connect_as(&oid.to_string(), &format!("pw-{oid}"), "appdb")
        .await
        .unwrap();
    assert_eq!(s.target.end_sessions_of_dropped_users().await.unwrap(), 0);
    session
        .query_one("SELECT 1", &[])
        .await
        .expect("the session of an existing role is left alone");
}

/// An administrator without `pg_signal_backend` (which `pgwarden check` reports) cannot end a
/// revoked user's sessions: the revocation fails, saying so, and keeps the user until they are
/// gone (it is retried); it never reports success while they live. A session of another role
/// dropped by hand does not hold up revocations.
#[tokio::test]
async fn without_pg_signal_backend_a_user_is_kept_until_its_sessions_are_gone() {
    let s = setup().await;
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!("REVOKE pg_signal_backend FROM \"{ADMIN}\";"))
        .await
        .unwrap();
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let foreign = issue(&s, &ro).await;
    let _dangling = login(&s, &foreign).await.unwrap();
    su.batch_execute(&format!("DROP ROLE \"{}\";", foreign.username))
        .await
        .unwrap();
    let quiet = issue(&s, &ro).await;
    s.target.revoke_user(&ro, &quiet.username).await.unwrap();
    assert!(!role_exists(&s, &quiet.username).await);

    let user = issue(&s, &ro).await;
    let session = login(&s, &user).await.unwrap();
    let expected = format!(
        "user {:?} has sessions the administrator cannot end without pg_signal_backend; it is \
         kept until they end: ",
        user.username
    );
    let error = s
        .target
        .revoke_user(&ro, &user.username)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&expected) && error.ends_with("(SQLSTATE 42501)"),
        "{error}"
    );
    assert!(role_exists(&s, &user.username).await);
    drop(session);
    // The retry succeeds once the session is gone (its backend exits a moment after).
    for attempt in 0.. {
        match s.target.revoke_user(&ro, &user.username).await {
            Ok(()) => break,
            Err(error) if attempt < 100 => {
                assert!(error.to_string().starts_with(&expected), "{error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the retry still fails: {error}"),
        }
    }
    assert!(!role_exists(&s, &user.username).await);
}

/// The revocation's check before the drop is a statement prepared on each connection, which
/// PostgreSQL may run with a generic plan after a few runs: with that plan too, an
/// administrator without `pg_signal_backend` keeps a user whose session lives, and says why.
#[tokio::test]
async fn without_pg_signal_backend_the_check_holds_with_its_generic_plan() {
    let s = setup().await;
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(&format!(
        "REVOKE pg_signal_backend FROM \"{ADMIN}\";\
         ALTER ROLE \"{ADMIN}\" SET plan_cache_mode = force_generic_plan;"
    ))
    .await
    .unwrap();
    // Connections opened from now on plan generically.
    let target = new_target(&s.cluster);
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let user = issue_on(&target, &ro, &[]).await.unwrap();
    let session = login(&s, &user).await.unwrap();
    let error = target
        .revoke_user(&ro, &user.username)
        .await
        .unwrap_err()
        .to_string();
    let expected = format!(
        "user {:?} has sessions the administrator cannot end without pg_signal_backend; it is \
         kept until they end: ",
        user.username
    );
    assert!(
        error.starts_with(&expected) && error.ends_with("(SQLSTATE 42501)"),
        "{error}"
    );
    assert!(role_exists(&s, &user.username).await);
    session.simple_query("SELECT 1").await.unwrap();
}

/// A template that deallocates the connection's prepared statements (here a renewal's
/// `DEALLOCATE ALL`) takes the revocation's with them: the next revocation on that connection
/// fails before its drop, keeping the user, and the retry, on a fresh connection, drops it and
/// ends its session.
#[tokio::test]
async fn a_revocation_whose_prepared_statements_are_gone_fails_before_dropping() {
    let s = setup().await;
    let dealloc = role(
        "dealloc",
        r#"{"db_name":"appdb","creation_statements":["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'"],"renew_statements":["DEALLOCATE ALL"]}"#,
    );
    // One connection: every call below runs on it until it is closed.
    let target = new_target(&s.cluster);
    let user = issue_on(&target, &dealloc, &[]).await.unwrap();
    let session = login(&s, &user).await.unwrap();
    let later = OffsetDateTime::now_utc() + Duration::from_secs(1200);
    target
        .renew_user(&dealloc, &user.username, later)
        .await
        .unwrap();
    let error = target
        .revoke_user(&dealloc, &user.username)
        .await
        .unwrap_err()
        .to_string();
    let expected = format!("dropping user {:?}: ", user.username);
    assert!(
        error.starts_with(&expected) && error.ends_with("(SQLSTATE 26000)"),
        "{error}"
    );
    assert!(role_exists(&s, &user.username).await);
    session.simple_query("SELECT 1").await.unwrap();
    target.revoke_user(&dealloc, &user.username).await.unwrap();
    assert!(!role_exists(&s, &user.username).await);
    let ended = session.simple_query("SELECT 1").await.unwrap_err();
    assert!(ended.is_closed() || ended.code().is_some(), "{ended}");
}

/// A user the administrator may not drop (here a superuser, refused on every major; from
/// PostgreSQL 16 also any role it has no `ADMIN OPTION` on) is reported as such, not as
/// sessions it cannot end, and kept.
#[tokio::test]
async fn a_role_the_administrator_may_not_drop_is_reported_as_a_refused_drop() {
    let s = setup().await;
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    let name = names::generate_username("test", "super", 1);
    su.batch_execute(&format!("CREATE ROLE \"{name}\" SUPERUSER;"))
        .await
        .unwrap();
    let error = s.target.drop_orphan(&name).await.unwrap_err().to_string();
    let expected = format!("dropping user {name:?}: ");
    assert!(
        error.starts_with(&expected) && error.ends_with("(SQLSTATE 42501)"),
        "{error}"
    );
    assert!(!error.contains("pg_signal_backend"), "{error}");
    assert!(role_exists(&s, &name).await);
    // The connection that failed is not handed on: the next revocation works.
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let user = issue(&s, &ro).await;
    s.target.revoke_user(&ro, &user.username).await.unwrap();
    assert!(!role_exists(&s, &user.username).await);
}

#[tokio::test]
async fn an_uncommitted_user_cannot_log_in_and_is_gone_unless_committed() {
    let s = setup().await;
    let ro = role("ro", r#"{"db_name":"appdb","preset":"readonly"}"#);
    let expires = OffsetDateTime::now_utc() + Duration::from_secs(600);
    let begin = |username: String, password: NewPassword| {
        let (target, ro) = (&s.target, &ro);
        async move {
            let user = target
                .begin_user(ro, &username, &password, expires, &[], "root")
                .await
                .unwrap();
            (user, username, password)
        }
    };

    // Rolled back, and dropped (as when the process gives up between the two steps).
    for give_up in ["rollback", "drop"] {
        let name = names::generate_username("test", give_up, 1);
        let (user, username, password) = begin(name, NewPassword::generate()).await;
        let refused = s
            .cluster
            .connect_as(&username, password.password().expose_secret(), "appdb")
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{refused}"
        );
        match give_up {
            "rollback" => user.rollback().await,
            _ => drop(user),
        }
        assert!(!role_exists(&s, &username).await, "{give_up}");
    }

    // Committed: it logs in, and the pool's connections are all still usable.
    let name = names::generate_username("test", "commit", 1);
    let (user, username, password) = begin(name, NewPassword::generate()).await;
    user.commit().await.unwrap();
    s.cluster
        .connect_as(&username, password.password().expose_secret(), "appdb")
        .await
        .unwrap();
    let more = issue(&s, &ro).await;
    login(&s, &more).await.unwrap();
}

#[tokio::test]
async fn a_template_that_commits_by_itself_is_caught_before_its_user_counts_as_pending() {
    let s = setup().await;
    let sneaky = role(
        "sneaky",
        r#"{"db_name":"appdb","creation_statements":[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            "COMMIT;"]}"#,
    );
    let username = names::generate_username("test", "sneaky", 1);
    let expires = OffsetDateTime::now_utc() + Duration::from_secs(600);
    let Err(error) = s
        .target
        .begin_user(
            &sneaky,
            &username,
            &NewPassword::generate(),
            expires,
            &[],
            "root",
        )
        .await
    else {
        panic!("a self-committing template was taken as uncommitted");
    };
    assert_eq!(
        error.to_string(),
        format!(
            "creating user {username:?} for role \"sneaky\": the creation statements end the \
             transaction (COMMIT, END or ROLLBACK); remove that statement: pgwarden commits the \
             user itself once its lease is recorded"
        )
    );
    assert!(
        !error.created_nothing(),
        "its user may exist: the caller must roll back"
    );
    assert!(
        role_exists(&s, &username).await,
        "the template committed it"
    );
    s.target.rollback_user(&sneaky, &username).await.unwrap();
    assert!(!role_exists(&s, &username).await);
}

// The connection is cut while the creation waits for a lock; the server goes on with it once
// the lock is free. Had `COMMIT` been sent behind the creation without waiting for its answer
// (one round trip less), the server would find it and commit a user that pgwarden, told the
// connection failed, has already rolled back: a user no lease names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_cut_off_while_it_waits_never_commits_later() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let link = pgwarden_testkit::partition::Partition::start(cluster.port())
        .await
        .unwrap();
    let target = target_at(cluster.templated_url("appdb").replace(
        &format!(":{}/", cluster.port()),
        &format!(":{}/", link.port),
    ));
    let s = Setup { cluster, target };
    let migration = s
        .cluster
        .connect_as(ADMIN, ADMIN_PW, "appdb")
        .await
        .unwrap();
    // Made first, on its own: in one query string it would be part of the migration.
    migration
        .batch_execute("CREATE TABLE guarded (id int)")
        .await
        .unwrap();
    migration
        .batch_execute("BEGIN; ALTER TABLE guarded ADD COLUMN z int;")
        .await
        .unwrap();
    let granting = role(
        "granting",
        r#"{"db_name":"appdb","creation_statements":[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            "GRANT SELECT ON guarded TO \"{{name}}\";"]}"#,
    );
    let username = names::generate_username("test", "granting", 1);
    let expires = OffsetDateTime::now_utc() + Duration::from_secs(600);
    let password = NewPassword::generate();
    let creation = s
        .target
        .create_user(&granting, &username, &password, expires, &[], "root");
    let su = s.cluster.connect_superuser("appdb").await.unwrap();
    let cut_while_waiting = async {
        for _ in 0..100 {
            let row = su
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE usename = $1 AND wait_event_type = 'Lock'",
                    &[&ADMIN],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                link.sever();
                return row.get::<_, i32>(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the creation never waited for the migration's lock");
    };
    let mut creation = std::pin::pin!(creation);
    let creator = tokio::select! {
        pid = cut_while_waiting => pid,
        early = &mut creation => panic!("the creation ended before waiting: {early:?}"),
    };
    let outcome = creation.await;
    assert!(
        outcome.is_err(),
        "the creation reported success over a cut connection"
    );
    migration.batch_execute("ROLLBACK").await.unwrap();
    // The creating session finishes its statements, then finds its client gone.
    for _ in 0..100 {
        let alive = su
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&creator])
            .await
            .unwrap();
        if alive.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !role_exists(&s, &username).await,
        "a user was committed after its creation was cut off"
    );
}
