//! The IRSA + RDS IAM setup teams otherwise write by hand, generated from one description: the
//! IAM role's trust policy (the service account's web identity may assume it), its permissions
//! policy (`rds-db:connect` as one database user), the annotated ServiceAccount, and the SQL
//! that makes the database user and gives it `rds_iam` and a preset's privileges.
//!
//! Pure text generation: nothing here talks to AWS, Kubernetes or PostgreSQL. Every input is
//! checked first ([`PlanError`] names the `pgwarden rds plan` flag it came from), every SQL
//! identifier is quoted, and the documents are built as typed values and serialised, never
//! pasted together, so a value cannot change their structure.

use pgwarden_core::Preset;
use postgres_protocol::escape::escape_identifier;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The audience EKS projects into service-account tokens for STS.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// The longest IAM role name AWS accepts.
pub const MAX_ROLE_NAME: usize = 64;

/// PostgreSQL silently truncates identifiers past this many bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// What to plan for: one Kubernetes service account connecting as one database user.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The service account as `<namespace>/<name>`.
    pub service_account: String,
    /// The PostgreSQL user the service account logs in as.
    pub db_user: String,
    /// The RDS resource id of the cluster (`cluster-…`) or instance (`db-…`), not its name.
    pub resource_id: String,
    /// The 12-digit AWS account id.
    pub account: String,
    /// The database's AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// The cluster's OIDC issuer without `https://`, e.g. `oidc.eks.eu-west-1.amazonaws.com/id/ABC`.
    pub oidc_provider: String,
    /// The privileges the user gets.
    pub preset: Preset,
    /// The schemas the preset's grants cover.
    pub schemas: Vec<String>,
    /// The IAM role's name; `None` derives one from the service account.
    pub role_name: Option<String>,
    /// When set, also grant the preset's database privileges (CONNECT, …) on this database.
    pub database: Option<String>,
}

/// The generated setup.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The IAM role's trust policy (`aws iam create-role --assume-role-policy-document`).
    pub trust_policy: PolicyDocument,
    /// The IAM role's permissions policy (`aws iam put-role-policy --policy-document`).
    pub permissions_policy: PolicyDocument,
    /// The ServiceAccount manifest with the `eks.amazonaws.com/role-arn` annotation.
    pub service_account_yaml: String,
    /// The SQL an administrator runs in the database.
    pub sql: String,
    /// The IAM role's name.
    pub role_name: String,
    /// The IAM role's ARN.
    pub role_arn: String,
}

/// An IAM policy document, serialised with AWS's field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyDocument {
    /// The policy language version, always `2012-10-17`.
    pub version: &'static str,
    /// The statements.
    pub statement: Vec<PolicyStatement>,
}

/// One statement of a [`PolicyDocument`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PolicyStatement {
    /// `Allow`.
    pub effect: &'static str,
    /// Who may act (trust policies only), e.g. `{"Federated": "<oidc provider ARN>"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<BTreeMap<&'static str, String>>,
    /// The action allowed.
    pub action: &'static str,
    /// What the action applies to (permissions policies only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Condition operator → key → value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<BTreeMap<&'static str, BTreeMap<String, String>>>,
}

/// An input `pgwarden rds plan` refuses; the message is one line that names the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {value:?}: {problem}")]
pub struct PlanError {
    /// The flag, without its dashes (e.g. `account`).
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

/// The AWS partition of `region`: `aws-cn` for `cn-*`, `aws-us-gov` for `us-gov-*`, the
/// isolated partitions for their regions, `aws` otherwise (as botocore's endpoint data says).
pub fn partition(region: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 6] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-iso-", "aws-iso"),
        ("us-isob-", "aws-iso-b"),
        ("us-isof-", "aws-iso-f"),
        ("eu-isoe-", "aws-iso-e"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

/// Checks every input and generates the plan.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let (namespace, name) = service_account(&input.service_account)?;
    check_db_user(&input.db_user)?;
    check_resource_id(&input.resource_id)?;
    check_account(&input.account)?;
    check_region(&input.region)?;
    check_oidc_provider(&input.oidc_provider)?;
    if input.schemas.is_empty() {
        return Err(error("schemas", "", "name at least one schema"));
    }
    for schema in &input.schemas {
        check_identifier("schemas", schema)?;
    }
    if let Some(database) = &input.database {
        check_identifier("database", database)?;
    }
    let role_name = match &input.role_name {
        Some(role_name) => {
            check_role_name(role_name)?;
            role_name.clone()
        }
        None => default_role_name(namespace, name),
    };

    let partition = partition(&input.region);
    let role_arn = format!("arn:{partition}:iam::{}:role/{role_name}", input.account);
    let provider = &input.oidc_provider;
    let trust_policy = PolicyDocument {
        version: "2012-10-17",
        statement: vec![PolicyStatement {
            effect: "Allow",
            principal: Some(BTreeMap::from([(
                "Federated",
                format!(
                    "arn:{partition}:iam::{}:oidc-provider/{provider}",
                    input.account
                ),
            )])),
            action: "sts:AssumeRoleWithWebIdentity",
            resource: None,
            condition: Some(BTreeMap::from([(
                "StringEquals",
                BTreeMap::from([
                    (format!("{provider}:aud"), STS_AUDIENCE.to_string()),
                    (
                        format!("{provider}:sub"),
                        format!("system:serviceaccount:{namespace}:{name}"),
                    ),
                ]),
            )])),
        }],
    };
    let permissions_policy = PolicyDocument {
        version: "2012-10-17",
        statement: vec![PolicyStatement {
            effect: "Allow",
            principal: None,
            action: "rds-db:connect",
            resource: Some(format!(
                "arn:{partition}:rds-db:{}:{}:dbuser:{}/{}",
                input.region, input.account, input.resource_id, input.db_user
            )),
            condition: None,
        }],
    };
    Ok(Plan {
        trust_policy,
        permissions_policy,
        service_account_yaml: service_account_yaml(namespace, name, &role_arn),
        sql: sql(input),
        role_name,
        role_arn,
    })
}

/// The ServiceAccount manifest. Namespace and name are DNS names and the ARN is built from
/// checked parts, so none needs YAML quoting; the ARN is quoted anyway (it holds `:`).
fn service_account_yaml(namespace: &str, name: &str, role_arn: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: ServiceAccount\n\
         metadata:\n  \
           name: {name}\n  \
           namespace: {namespace}\n  \
           annotations:\n    \
             eks.amazonaws.com/role-arn: \"{role_arn}\"\n"
    )
}

/// The user, its `rds_iam` membership and the preset's grants, run by the database's
/// administrator. Default privileges cover objects that administrator creates later.
fn sql(input: &PlanInput) -> String {
    let user = escape_identifier(&input.db_user);
    let (database, schema, tables, sequences, routines) = match input.preset {
        Preset::Readonly => ("CONNECT", "USAGE", "SELECT", "SELECT", None),
        Preset::User => (
            "CONNECT, TEMPORARY",
            "USAGE",
            "SELECT, INSERT, UPDATE, DELETE",
            "USAGE, SELECT, UPDATE",
            Some("EXECUTE"),
        ),
        Preset::Admin => (
            "CONNECT, TEMPORARY",
            "USAGE, CREATE",
            "ALL PRIVILEGES",
            "ALL PRIVILEGES",
            Some("EXECUTE"),
        ),
    };
    let mut sql = format!("CREATE ROLE {user} LOGIN;\nGRANT rds_iam TO {user};\n");
    if let Some(db) = &input.database {
        sql.push_str(&format!(
            "GRANT {database} ON DATABASE {} TO {user};\n",
            escape_identifier(db)
        ));
    }
    for schema_name in &input.schemas {
        let s = escape_identifier(schema_name);
        sql.push_str(&format!(
            "GRANT {schema} ON SCHEMA {s} TO {user};\n\
             GRANT {tables} ON ALL TABLES IN SCHEMA {s} TO {user};\n\
             GRANT {sequences} ON ALL SEQUENCES IN SCHEMA {s} TO {user};\n"
        ));
        if let Some(routines) = routines {
            sql.push_str(&format!(
                "GRANT {routines} ON ALL ROUTINES IN SCHEMA {s} TO {user};\n"
            ));
        }
        sql.push_str(&format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {tables} ON TABLES TO {user};\n\
             ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {sequences} ON SEQUENCES TO {user};\n"
        ));
        if let Some(routines) = routines {
            sql.push_str(&format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {routines} ON ROUTINES TO {user};\n"
            ));
        }
    }
    sql
}

/// `pgwarden-<namespace>-<name>`; past 64 characters, its first 55 and `-` and 8 hex digits of
/// its SHA-256, so two long service accounts never share a role.
fn default_role_name(namespace: &str, name: &str) -> String {
    let full = format!("pgwarden-{namespace}-{name}");
    if full.len() <= MAX_ROLE_NAME {
        return full;
    }
    let digest = Sha256::digest(full.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Every character is ASCII (checked DNS names), so byte slicing is safe.
    format!("{}-{hash}", &full[..MAX_ROLE_NAME - 9])
}

fn error(flag: &'static str, value: &str, problem: &str) -> PlanError {
    PlanError {
        flag,
        value: value.to_string(),
        problem: problem.to_string(),
    }
}

/// `<namespace>/<name>`, each checked as Kubernetes checks them.
fn service_account(value: &str) -> Result<(&str, &str), PlanError> {
    let flag = "service-account";
    let Some((namespace, name)) = value.split_once('/') else {
        return Err(error(flag, value, "expected <namespace>/<name>"));
    };
    if !is_dns_label(namespace) {
        return Err(error(
            flag,
            value,
            "the namespace must be a DNS-1123 label (lower-case letters, digits and '-', \
             starting and ending with a letter or digit, at most 63 characters)",
        ));
    }
    if name.len() > 253 || name.split('.').any(|label| !is_dns_label(label)) {
        return Err(error(
            flag,
            value,
            "the name must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', \
             at most 253 characters)",
        ));
    }
    Ok((namespace, name))
}

/// A DNS-1123 label: 1 to 63 of `a-z0-9-`, not starting or ending with `-`.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// The database user: a PostgreSQL identifier that IAM reads literally in the resource ARN.
fn check_db_user(value: &str) -> Result<(), PlanError> {
    check_identifier("db-user", value)?;
    if value.contains(['*', '?', '$']) {
        return Err(error(
            "db-user",
            value,
            "'*', '?' and '$' are not allowed: IAM would read them as wildcards or policy \
             variables in the dbuser ARN",
        ));
    }
    Ok(())
}

/// A PostgreSQL identifier: 1 to 63 bytes, no control characters.
fn check_identifier(flag: &'static str, value: &str) -> Result<(), PlanError> {
    if value.is_empty() {
        return Err(error(flag, value, "must not be empty"));
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(error(
            flag,
            value,
            &format!(
                "is {} bytes; PostgreSQL identifiers are at most 63",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(error(flag, value, "must not contain control characters"));
    }
    Ok(())
}

/// An RDS resource id: `cluster-` (Aurora) or `db-` (instance) and upper-case letters and digits.
fn check_resource_id(value: &str) -> Result<(), PlanError> {
    let rest = value
        .strip_prefix("cluster-")
        .or_else(|| value.strip_prefix("db-"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
        {
            Ok(())
        }
        _ => Err(error(
            "cluster-resource-id",
            value,
            "expected the resource id (cluster-XXXX for a cluster, db-XXXX for an instance; \
             `aws rds describe-db-clusters --query 'DBClusters[].DbClusterResourceId'`), not \
             the identifier or endpoint",
        )),
    }
}

/// A 12-digit account id.
fn check_account(value: &str) -> Result<(), PlanError> {
    if value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(error(
            "account",
            value,
            "expected the 12-digit AWS account id",
        ))
    }
}

/// A region's shape: lower-case parts joined by `-`, the last a number (`eu-west-1`, `us-gov-west-1`).
fn check_region(value: &str) -> Result<(), PlanError> {
    let parts: Vec<&str> = value.split('-').collect();
    let ok = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if ok {
        Ok(())
    } else {
        Err(error(
            "region",
            value,
            "expected an AWS region such as eu-west-1 or us-gov-west-1",
        ))
    }
}

/// The OIDC issuer as IAM names it: host and path, no scheme, no trailing `/`.
fn check_oidc_provider(value: &str) -> Result<(), PlanError> {
    let flag = "oidc-provider";
    if value.contains("://") {
        return Err(error(
            flag,
            value,
            "drop the scheme: IAM names the provider without https://, e.g. \
             oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE",
        ));
    }
    let (host, path) = value.split_once('/').unwrap_or((value, ""));
    let host_ok = !host.is_empty()
        && host.contains('.')
        && host
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let path_ok = !value.ends_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
    if host_ok && path_ok {
        Ok(())
    } else {
        Err(error(
            flag,
            value,
            "expected the cluster's OIDC issuer host and path, e.g. \
             oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE (`aws eks describe-cluster --query \
             cluster.identity.oidc.issuer`, without https://)",
        ))
    }
}

/// An IAM role name: 1 to 64 of letters, digits and `+=,.@_-`.
fn check_role_name(value: &str) -> Result<(), PlanError> {
    if !value.is_empty()
        && value.len() <= MAX_ROLE_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        Ok(())
    } else {
        Err(error(
            "role-name",
            value,
            "an IAM role name is 1 to 64 letters, digits and +=,.@_-",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PlanInput {
        PlanInput {
            service_account: "shop/orders-api".into(),
            db_user: "orders_app".into(),
            resource_id: "cluster-ABCDEFGHIJKL0123456789".into(),
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            oidc_provider: "oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF".into(),
            preset: Preset::Readonly,
            schemas: vec!["public".into()],
            role_name: None,
            database: None,
        }
    }

    #[test]
    fn partitions_follow_the_region() {
        for (region, expected) in [
            ("eu-west-1", "aws"),
            ("us-east-1", "aws"),
            ("cn-north-1", "aws-cn"),
            ("cn-northwest-1", "aws-cn"),
            ("us-gov-west-1", "aws-us-gov"),
            ("us-iso-east-1", "aws-iso"),
            ("us-isob-east-1", "aws-iso-b"),
        ] {
            assert_eq!(partition(region), expected, "{region}");
        }
    }

    #[test]
    fn long_service_accounts_get_distinct_64_character_roles() {
        let name = "a".repeat(60);
        let first = default_role_name("team-one", &name);
        let second = default_role_name("team-two", &name);
        assert_eq!(first.len(), MAX_ROLE_NAME);
        assert_eq!(second.len(), MAX_ROLE_NAME);
        assert_ne!(first, second);
        assert!(first.starts_with("pgwarden-team-one-aaa"), "{first}");
        assert!(check_role_name(&first).is_ok());
        assert_eq!(default_role_name("ns", "sa"), "pgwarden-ns-sa");
    }

    #[test]
    fn hostile_names_stay_inside_their_quotes() {
        let mut input = input();
        input.db_user = "a\"; DROP TABLE t; --".into();
        input.schemas = vec!["we\"ird".into()];
        let sql = plan(&input).unwrap().sql;
        assert!(sql.starts_with("CREATE ROLE \"a\"\"; DROP TABLE t; --\" LOGIN;\n"));
        assert!(sql.contains("ON SCHEMA \"we\"\"ird\" TO"), "{sql}");
    }

    #[test]
    fn each_check_names_its_flag() {
        type Change = fn(&mut PlanInput);
        let cases: [(Change, &str); 9] = [
            (|i| i.service_account = "shop".into(), "service-account"),
            (|i| i.service_account = "Shop/x".into(), "service-account"),
            (|i| i.db_user = "x".repeat(64), "db-user"),
            (|i| i.db_user = "app*".into(), "db-user"),
            (
                |i| i.resource_id = "my-cluster".into(),
                "cluster-resource-id",
            ),
            (|i| i.account = "12345".into(), "account"),
            (|i| i.region = "europe".into(), "region"),
            (
                |i| i.oidc_provider = "https://oidc.x.com/id/1".into(),
                "oidc-provider",
            ),
            (|i| i.role_name = Some("has space".into()), "role-name"),
        ];
        for (change, flag) in cases {
            let mut input = input();
            change(&mut input);
            assert_eq!(plan(&input).unwrap_err().flag, flag);
        }
    }
}
