//! `pgwarden rds plan` as the real binary: both policies parsed and checked field by field for
//! each partition, the ServiceAccount parsed and passed through kubernetes-validate's strict
//! schema check, the SQL run by a database administrator against a real PostgreSQL that has
//! RDS's `rds_iam` role and the resulting privileges tried, and every refused input's exact
//! error line and exit code.

use pgwarden_testkit::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const OIDC: &str = "oidc.eks.eu-west-1.amazonaws.com/id/5C0FFEE5C0FFEE5C0FFEE5C0FFEE5C0F";
const ACCOUNT: &str = "210987654321";
const RESOURCE: &str = "cluster-7QWERTYUIOPASDFGHJKLZXCVB4";

/// Runs `pgwarden` with `args`; (exit code, stdout, stderr).
fn pgwarden(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The `rds plan` arguments for `sa` and `user` in `region`, then `extra`.
fn plan_args<'a>(sa: &'a str, user: &'a str, region: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "rds",
        "plan",
        "--service-account",
        sa,
        "--db-user",
        user,
        "--cluster-resource-id",
        RESOURCE,
        "--account",
        ACCOUNT,
        "--region",
        region,
        "--oidc-provider",
        OIDC,
    ];
    args.extend_from_slice(extra);
    args
}

/// `rds plan … --format json`, parsed.
fn plan_json(sa: &str, user: &str, region: &str, extra: &[&str]) -> Value {
    let mut args = plan_args(sa, user, region, extra);
    args.extend(["--format", "json"]);
    let (code, out, err) = pgwarden(&args);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs kubernetes-validate (from the test venv that scripts/test makes) in strict mode on
/// `text`; (passed, its output).
fn kubernetes_validate(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serviceaccount.yaml");
    std::fs::write(&file, text).unwrap();
    let validator =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} ({e}): run scripts/test, which installs it",
                validator.display()
            )
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn policies_and_service_account_for_each_partition() {
    for (region, partition) in [
        ("eu-west-1", "aws"),
        ("ap-southeast-2", "aws"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
    ] {
        let plan = plan_json("shop/orders-api", "orders_app", region, &[]);
        let keys: Vec<&String> = plan.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "permissions_policy",
                "role_arn",
                "service_account_yaml",
                "sql",
                "trust_policy"
            ],
            "{region}"
        );

        let trust = &plan["trust_policy"];
        assert_eq!(trust.as_object().unwrap().len(), 2, "{trust}");
        assert_eq!(trust["Version"], "2012-10-17");
        let statements = trust["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        let statement = statements[0].as_object().unwrap();
        assert_eq!(statement.len(), 4, "{statement:?}");
        assert_eq!(statement["Effect"], "Allow");
        assert_eq!(statement["Action"], "sts:AssumeRoleWithWebIdentity");
        assert_eq!(
            statement["Principal"],
            serde_json::json!({
                "Federated": format!("arn:{partition}:iam::{ACCOUNT}:oidc-provider/{OIDC}")
            })
        );
        let conditions = statement["Condition"].as_object().unwrap();
        assert_eq!(conditions.len(), 1, "{conditions:?}");
        let equals = conditions["StringEquals"].as_object().unwrap();
        assert_eq!(equals.len(), 2, "{equals:?}");
        assert_eq!(equals[&format!("{OIDC}:aud")], "sts.amazonaws.com");
        assert_eq!(
            equals[&format!("{OIDC}:sub")],
            "system:serviceaccount:shop:orders-api"
        );

        let permissions = &plan["permissions_policy"];
        assert_eq!(permissions.as_object().unwrap().len(), 2);
        assert_eq!(permissions["Version"], "2012-10-17");
        let statements = permissions["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        let statement = statements[0].as_object().unwrap();
        assert_eq!(statement.len(), 3, "{statement:?}");
        assert_eq!(statement["Effect"], "Allow");
        assert_eq!(statement["Action"], "rds-db:connect");
        assert_eq!(
            statement["Resource"],
            format!("arn:{partition}:rds-db:{region}:{ACCOUNT}:dbuser:{RESOURCE}/orders_app")
        );

        let role_arn = format!("arn:{partition}:iam::{ACCOUNT}:role/pgwarden-shop-orders-api");
        assert_eq!(plan["role_arn"], role_arn);
        let yaml = plan["service_account_yaml"].as_str().unwrap();
        let account: Value = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            account,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    "name": "orders-api",
                    "namespace": "shop",
                    "annotations": {"eks.amazonaws.com/role-arn": role_arn},
                },
            })
        );
        let (valid, output) = kubernetes_validate(yaml);
        assert!(valid, "kubernetes-validate {region}:\n{output}");
    }
}

#[test]
fn kubernetes_validate_checks_strictly() {
    // The negative control: without it a validator that accepts anything would pass the
    // ServiceAccount checks above.
    let plan = plan_json("shop/orders-api", "orders_app", "eu-west-1", &[]);
    let yaml = plan["service_account_yaml"].as_str().unwrap();
    let broken = yaml.replace("  namespace:", "  namespaec:");
    assert_ne!(broken, yaml);
    let (valid, output) = kubernetes_validate(&broken);
    assert!(!valid, "an unknown field passed:\n{output}");
}

#[test]
fn role_names_long_or_chosen() {
    let long_name = format!("{}.{}", "a".repeat(60), "b".repeat(60));
    let sa = format!("payments-production/{long_name}");
    let plan = plan_json(&sa, "app", "eu-west-1", &[]);
    let arn = plan["role_arn"].as_str().unwrap();
    let role = arn
        .strip_prefix(&format!("arn:aws:iam::{ACCOUNT}:role/"))
        .unwrap();
    assert_eq!(role.len(), 64, "{role}");
    assert!(
        role.starts_with("pgwarden-payments-production-aaaa"),
        "{role}"
    );
    // A name differing only past the cut gets another role.
    let other = format!("payments-production/{}.{}", "a".repeat(60), "c".repeat(60));
    let other_plan = plan_json(&other, "app", "eu-west-1", &[]);
    assert_ne!(other_plan["role_arn"], plan["role_arn"]);
    let account: Value =
        serde_saphyr::from_str(plan["service_account_yaml"].as_str().unwrap()).unwrap();
    assert_eq!(account["metadata"]["name"], long_name.as_str());
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        arn
    );
    let (valid, output) = kubernetes_validate(plan["service_account_yaml"].as_str().unwrap());
    assert!(valid, "{output}");

    let chosen = plan_json(
        "shop/orders-api",
        "app",
        "cn-north-1",
        &["--role-name", "OrdersRds@shop"],
    );
    assert_eq!(
        chosen["role_arn"],
        format!("arn:aws-cn:iam::{ACCOUNT}:role/OrdersRds@shop")
    );
}

#[test]
fn text_output_is_four_sections_holding_the_same_documents() {
    let extra = ["--preset", "user", "--schemas", "public,sales"];
    let json = plan_json("shop/orders-api", "orders_app", "eu-west-1", &extra);
    let (code, text, err) = pgwarden(&plan_args(
        "shop/orders-api",
        "orders_app",
        "eu-west-1",
        &extra,
    ));
    assert_eq!((code, err.as_str()), (0, ""));
    // Split at the section titles: lines starting `# <n>. `.
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        let numbered = line
            .strip_prefix("# ")
            .and_then(|rest| rest.split_once(". "))
            .filter(|(n, _)| n.parse::<u8>().is_ok());
        match numbered {
            Some((_, title)) => sections.push((title.to_string(), Vec::new())),
            None => sections
                .last_mut()
                .expect("text before the first title")
                .1
                .push(line),
        }
    }
    let titles: Vec<&str> = sections.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(titles.len(), 4, "{text}");
    assert!(titles[0].contains("trust policy"), "{titles:?}");
    assert!(titles[1].contains("permissions policy"), "{titles:?}");
    assert!(titles[2].contains("ServiceAccount"), "{titles:?}");
    assert!(titles[3].contains("SQL"), "{titles:?}");
    // Comment lines (`#    aws iam …` hints) are not part of the documents.
    let body = |i: usize| -> String {
        sections[i]
            .1
            .iter()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect()
    };
    let trust: Value = serde_json::from_str(&body(0)).unwrap();
    assert_eq!(trust, json["trust_policy"]);
    let permissions: Value = serde_json::from_str(&body(1)).unwrap();
    assert_eq!(permissions, json["permissions_policy"]);
    assert_eq!(
        body(2).trim_end(),
        json["service_account_yaml"].as_str().unwrap().trim_end()
    );
    assert_eq!(body(3), json["sql"].as_str().unwrap());
    assert!(text.contains("aws iam create-role --role-name pgwarden-shop-orders-api"));
}

/// The privileges `user` has on `object` (`has_table_privilege` and friends), asked as the
/// superuser in appdb.
async fn privileges(
    su: &tokio_postgres::Client,
    query: &str,
    user: &str,
    object: &str,
) -> Vec<bool> {
    let row = su.query_one(query, &[&user, &object]).await.unwrap();
    (0..row.len()).map(|i| row.get(i)).collect()
}

/// Runs `sql` as the superuser with `SET ROLE user`; the SQLSTATE on failure.
async fn as_role(su: &tokio_postgres::Client, user: &str, sql: &str) -> Result<(), String> {
    let quoted = format!("\"{}\"", user.replace('"', "\"\""));
    su.batch_execute(&format!("SET ROLE {quoted}"))
        .await
        .unwrap();
    let result = su.batch_execute(sql).await.map_err(|e| {
        e.code()
            .map(|c| c.code().to_string())
            .unwrap_or(e.to_string())
    });
    su.batch_execute("RESET ROLE").await.unwrap();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_makes_an_rds_iam_user_with_the_presets_privileges() {
    let cluster = PgCluster::start_with_appdb().await.unwrap();
    let su = cluster.connect_superuser("appdb").await.unwrap();
    // What RDS has: a NOLOGIN rds_iam role the master user may grant; PUBLIC's default
    // database privileges taken away so the --database grants are visible.
    su.batch_execute(&format!(
        "CREATE ROLE rds_iam NOLOGIN;
         GRANT rds_iam TO \"{APP_ADMIN}\" WITH ADMIN OPTION;
         REVOKE CONNECT, TEMPORARY ON DATABASE appdb FROM PUBLIC;"
    ))
    .await
    .unwrap();
    let admin = cluster
        .connect_as(APP_ADMIN, APP_ADMIN_PASSWORD, "appdb")
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE SCHEMA sales;
             CREATE TABLE sales.orders (id serial PRIMARY KEY, total int);
             INSERT INTO sales.orders (total) VALUES (10);",
        )
        .await
        .unwrap();

    // A name that needs quoting, for each preset, over two schemas.
    let users = [
        ("readonly", "ro \"app\""),
        ("user", "rw_app"),
        ("admin", "adm-app"),
    ];
    for (preset, user) in users {
        let plan = plan_json(
            "shop/orders-api",
            user,
            "eu-west-1",
            &[
                "--preset",
                preset,
                "--schemas",
                "public,sales",
                "--database",
                "appdb",
            ],
        );
        // Run as the database's administrator, as on RDS (not the superuser).
        admin
            .batch_execute(plan["sql"].as_str().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{preset}: {e}\n{}", plan["sql"]));
    }
    // Created after the grants: covered by the default privileges.
    admin
        .batch_execute(
            "CREATE TABLE sales.refunds (id serial PRIMARY KEY, amount int);
             INSERT INTO sales.refunds (amount) VALUES (5);",
        )
        .await
        .unwrap();

    for (preset, user) in users {
        let row = su
            .query_one(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NULL,
                        pg_has_role($1::text::name, 'rds_iam', 'MEMBER')
                 FROM pg_authid WHERE rolname = $1::text",
                &[&user],
            )
            .await
            .unwrap_or_else(|e| panic!("{preset}: user {user:?} missing: {e}"));
        let flags: Vec<bool> = (0..6).map(|i| row.get(i)).collect();
        assert_eq!(flags, [true, false, false, false, true, true], "{preset}");
        assert_eq!(
            privileges(
                &su,
                "SELECT has_database_privilege($1::text, $2::text, 'CONNECT'),
                        has_database_privilege($1::text, $2::text, 'TEMPORARY')",
                user,
                "appdb"
            )
            .await,
            [true, preset != "readonly"],
            "{preset}"
        );
        for schema in ["public", "sales"] {
            assert_eq!(
                privileges(
                    &su,
                    "SELECT has_schema_privilege($1::text, $2::text, 'USAGE'),
                            has_schema_privilege($1::text, $2::text, 'CREATE')",
                    user,
                    schema
                )
                .await,
                [true, preset == "admin"],
                "{preset} on {schema}"
            );
        }
        for table in ["public.items", "sales.orders", "sales.refunds"] {
            assert_eq!(
                privileges(
                    &su,
                    "SELECT has_table_privilege($1::text, $2::text, 'SELECT'),
                            has_table_privilege($1::text, $2::text, 'INSERT'),
                            has_table_privilege($1::text, $2::text, 'UPDATE'),
                            has_table_privilege($1::text, $2::text, 'DELETE'),
                            has_table_privilege($1::text, $2::text, 'TRUNCATE')",
                    user,
                    table
                )
                .await,
                match preset {
                    "readonly" => [true, false, false, false, false],
                    "user" => [true, true, true, true, false],
                    _ => [true, true, true, true, true],
                },
                "{preset} on {table}"
            );
        }
    }

    // What each user can do, tried.
    let (ro, rw, adm) = (users[0].1, users[1].1, users[2].1);
    let su_reads = su
        .query_one("SELECT count(*) FROM public.items", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    su.batch_execute(&format!("SET ROLE \"{}\"", ro.replace('"', "\"\"")))
        .await
        .unwrap();
    let ro_reads: i64 = su
        .query_one("SELECT count(*) FROM public.items", &[])
        .await
        .unwrap()
        .get(0);
    su.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(ro_reads, su_reads);
    assert_eq!(
        as_role(&su, ro, "SELECT * FROM sales.refunds").await,
        Ok(())
    );
    assert_eq!(
        as_role(&su, ro, "INSERT INTO public.items (name) VALUES ('x')").await,
        Err("42501".into())
    );
    assert_eq!(
        as_role(&su, ro, "UPDATE sales.orders SET total = 0").await,
        Err("42501".into())
    );
    assert_eq!(
        as_role(
            &su,
            rw,
            "INSERT INTO public.items (name) VALUES ('x');
                          INSERT INTO sales.refunds (amount) VALUES (1);
                          DELETE FROM sales.orders;"
        )
        .await,
        Ok(())
    );
    assert_eq!(
        as_role(&su, rw, "CREATE TABLE public.rw_table (id int)").await,
        Err("42501".into())
    );
    assert_eq!(
        as_role(
            &su,
            adm,
            "CREATE TABLE sales.adm_table (id int); DROP TABLE sales.adm_table;"
        )
        .await,
        Ok(())
    );
    assert_eq!(
        as_role(&su, adm, "DROP TABLE public.items").await,
        Err("42501".into()),
        "only owners drop tables"
    );
}

#[test]
fn refused_inputs_name_their_flag() {
    let cases: [(&str, &str, &str); 14] = [
        (
            "--service-account",
            "orders-api",
            "--service-account \"orders-api\": expected <namespace>/<name>",
        ),
        (
            "--service-account",
            "Shop/orders-api",
            "--service-account \"Shop/orders-api\": the namespace must be a DNS-1123 label \
             (lower-case letters, digits and '-', starting and ending with a letter or digit, \
             at most 63 characters)",
        ),
        (
            "--service-account",
            "shop/orders_api",
            "--service-account \"shop/orders_api\": the name must be a DNS-1123 subdomain \
             (lower-case letters, digits, '-' and '.', at most 253 characters)",
        ),
        ("--db-user", "", "--db-user \"\": must not be empty"),
        (
            "--db-user",
            "u234567890123456789012345678901234567890123456789012345678901234",
            "--db-user \"u234567890123456789012345678901234567890123456789012345678901234\": \
             is 64 bytes; PostgreSQL identifiers are at most 63",
        ),
        (
            "--db-user",
            "app*",
            "--db-user \"app*\": '*', '?' and '$' are not allowed: IAM would read them as \
             wildcards or policy variables in the dbuser ARN",
        ),
        (
            "--cluster-resource-id",
            "my-aurora-cluster",
            "--cluster-resource-id \"my-aurora-cluster\": expected the resource id \
             (cluster-XXXX for a cluster, db-XXXX for an instance; `aws rds \
             describe-db-clusters --query 'DBClusters[].DbClusterResourceId'`), not the \
             identifier or endpoint",
        ),
        (
            "--account",
            "21098765432",
            "--account \"21098765432\": expected the 12-digit AWS account id",
        ),
        (
            "--account",
            "21098765432a",
            "--account \"21098765432a\": expected the 12-digit AWS account id",
        ),
        (
            "--region",
            "Eu-West-1",
            "--region \"Eu-West-1\": expected an AWS region such as eu-west-1 or us-gov-west-1",
        ),
        (
            "--oidc-provider",
            "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
            "--oidc-provider \"https://oidc.eks.eu-west-1.amazonaws.com/id/ABC\": drop the \
             scheme: IAM names the provider without https://, e.g. \
             oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
        ),
        (
            "--oidc-provider",
            "oidc.eks.eu-west-1.amazonaws.com/id/ABC/",
            "--oidc-provider \"oidc.eks.eu-west-1.amazonaws.com/id/ABC/\": expected the \
             cluster's OIDC issuer host and path, e.g. \
             oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE (`aws eks describe-cluster --query \
             cluster.identity.oidc.issuer`, without https://)",
        ),
        (
            "--role-name",
            "a".repeat(65).leak(),
            "--role-name \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": \
             an IAM role name is 1 to 64 letters, digits and +=,.@_-",
        ),
        (
            "--schemas",
            "public,,sales",
            "--schemas \"\": must not be empty",
        ),
    ];
    for (flag, value, message) in cases {
        let mut args = plan_args("shop/orders-api", "orders_app", "eu-west-1", &[]);
        match args.iter().position(|arg| *arg == flag) {
            Some(at) => args[at + 1] = value,
            None => args.extend([flag, value]),
        }
        let (code, out, err) = pgwarden(&args);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (1, "", format!("error: {message}\n").as_str()),
            "{flag} {value}"
        );
    }

    // Values clap itself refuses exit 2, as usage errors do.
    let mut args = plan_args("shop/orders-api", "orders_app", "eu-west-1", &[]);
    args.extend(["--preset", "superuser"]);
    let (code, out, err) = pgwarden(&args);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with("error: invalid value 'superuser' for '--preset <PRESET>'"),
        "{err}"
    );
}
