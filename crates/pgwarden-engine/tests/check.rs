//! The administrator check names what an administrator lacks, with the SQL that fixes it.

use pgwarden_core::ConnectionDef;
use pgwarden_engine::{Finding, Severity, Target, check_administrator};
use pgwarden_testkit::{APP_ADMIN as ADMIN, APP_ADMIN_PASSWORD as ADMIN_PW, PgCluster};
use secrecy::SecretString;

fn target_as(cluster: &PgCluster, user: &str, password: &str) -> Target {
    Target::new(&ConnectionDef {
        name: "appdb".into(),
        connection_url: cluster.templated_url("appdb"),
        username: user.into(),
        password: SecretString::from(password.to_string()),
        allowed_roles: vec!["*".into()],
        verify_connection: true,
        auth: Default::default(),
    })
    .unwrap()
}

fn lines(findings: &[Finding]) -> Vec<String> {
    findings.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn each_missing_privilege_is_one_line_with_its_fix() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let public = vec!["public".to_string()];

    // The administrator the README asks for lacks nothing.
    let ordinary = target_as(&cluster, ADMIN, ADMIN_PW);
    assert_eq!(
        check_administrator(&ordinary, &public, &[]).await.unwrap(),
        vec![]
    );

    // One that merely has CREATEROLE lacks the rest.
    let su = cluster.connect_superuser("appdb").await.unwrap();
    su.batch_execute(
        "CREATE ROLE weak LOGIN PASSWORD 'weak-password';
         CREATE SCHEMA sales;",
    )
    .await
    .unwrap();
    let weak = target_as(&cluster, "weak", "weak-password");
    let schemas = vec!["public".to_string(), "sales".into(), "nope".into()];
    assert_eq!(
        lines(&check_administrator(&weak, &schemas, &[]).await.unwrap()),
        vec![
            "administrator \"weak\" lacks CREATEROLE: no user can be created; \
             fix: ALTER ROLE \"weak\" CREATEROLE;",
            "administrator \"weak\" is not a member of pg_signal_backend: sessions of revoked \
             users cannot be ended; fix: GRANT pg_signal_backend TO \"weak\";",
            "administrator \"weak\" does not own database \"appdb\": presets cannot grant CONNECT \
             or TEMPORARY on it; fix: ALTER DATABASE \"appdb\" OWNER TO \"weak\";",
            "administrator \"weak\" does not own schema \"public\": presets cannot grant on its \
             tables or set its default privileges; fix: ALTER SCHEMA \"public\" OWNER TO \"weak\";",
            "administrator \"weak\" does not own schema \"sales\": presets cannot grant on its \
             tables or set its default privileges; fix: ALTER SCHEMA \"sales\" OWNER TO \"weak\";",
            "schema \"nope\" does not exist in database \"appdb\"; \
             fix: CREATE SCHEMA \"nope\" AUTHORIZATION \"weak\";",
        ]
    );

    // An adopted group the administrator may not grant: PostgreSQL 16+ refuses the grant.
    su.batch_execute("CREATE ROLE adopted_group NOLOGIN;")
        .await
        .unwrap();
    let version: i32 = su
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let adopted = vec!["adopted_group".to_string()];
    let expected: Vec<String> = if version >= 160000 {
        vec![format!(
            "administrator \"{ADMIN}\" cannot grant the adopted group role \"adopted_group\" \
             (PostgreSQL 16+ needs ADMIN OPTION on it): no user of its roles can be created; \
             fix: GRANT \"adopted_group\" TO \"{ADMIN}\" WITH ADMIN OPTION;"
        )]
    } else {
        vec![]
    };
    assert_eq!(
        lines(
            &check_administrator(&ordinary, &public, &adopted)
                .await
                .unwrap()
        ),
        expected
    );

    // A superuser works but is more than needed.
    let superuser = target_as(&cluster, "postgres", cluster.superuser_password());
    let findings = check_administrator(&superuser, &public, &[]).await.unwrap();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].severity, Severity::Excess);
    assert!(
        findings[0]
            .problem
            .starts_with("administrator \"postgres\" is a superuser; pgwarden needs only"),
        "{}",
        findings[0]
    );
}
