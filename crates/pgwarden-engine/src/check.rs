//! What the administrative user of a target lacks (or has beyond need), each finding with the
//! SQL that fixes it. pgwarden needs an ordinary `LOGIN CREATEROLE` administrator that may end
//! other sessions (`pg_signal_backend`) and owns the database and the schemas its presets cover.

use crate::error::{EngineError, sql};
use crate::quote::quote_ident;
use crate::target::Target;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something pgwarden promises will fail.
    Missing,
    /// Works, but with more power than needed.
    Excess,
}

/// One thing about the administrator, with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What is wrong and what it breaks.
    pub problem: String,
    /// The SQL (run as a superuser or the object's owner) that fixes it.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; fix: {}", self.problem, self.fix)
    }
}

/// What the administrator of `target` lacks for preset roles covering `schemas`, and for the
/// existing group roles those presets adopt (`adopted_groups`).
pub async fn check_administrator(
    target: &Target,
    schemas: &[String],
    adopted_groups: &[String],
) -> Result<Vec<Finding>, EngineError> {
    let client = target.client().await?;
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolcreaterole, \
             rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'USAGE'), \
             (SELECT pg_has_role(current_user, datdba, 'USAGE') FROM pg_database \
              WHERE datname = current_database()), current_database()::text, \
             current_setting('server_version_num')::int \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading the administrator's attributes"))?;
    let (admin, superuser, createrole, signal, owns_db, database, version): (
        String,
        bool,
        bool,
        bool,
        bool,
        String,
        i32,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );
    let a = quote_ident(&admin);
    let mut findings = Vec::new();
    let mut missing = |problem: String, fix: String| {
        findings.push(Finding {
            severity: Severity::Missing,
            problem,
            fix,
        })
    };
    if superuser {
        // A superuser can do everything below; say only that it is more than needed.
        return Ok(vec![Finding {
            severity: Severity::Excess,
            problem: format!(
                "administrator {admin:?} is a superuser; pgwarden needs only LOGIN CREATEROLE \
                 with pg_signal_backend and ownership of the database and schemas"
            ),
            fix: format!(
                "CREATE ROLE pgwarden_admin LOGIN CREATEROLE PASSWORD '<a new password>'; \
                 GRANT pg_signal_backend TO pgwarden_admin; \
                 ALTER DATABASE {} OWNER TO pgwarden_admin; and use it instead of {a}",
                quote_ident(&database)
            ),
        }]);
    }
    if !createrole {
        missing(
            format!("administrator {admin:?} lacks CREATEROLE: no user can be created"),
            format!("ALTER ROLE {a} CREATEROLE;"),
        );
    }
    if !signal {
        missing(
            format!(
                "administrator {admin:?} is not a member of pg_signal_backend: sessions of \
                 revoked users cannot be ended"
            ),
            format!("GRANT pg_signal_backend TO {a};"),
        );
    }
    if !owns_db {
        missing(
            format!(
                "administrator {admin:?} does not own database {database:?}: presets cannot \
                 grant CONNECT or TEMPORARY on it"
            ),
            format!("ALTER DATABASE {} OWNER TO {a};", quote_ident(&database)),
        );
    }
    for schema in schemas {
        let owns = flag(
            &client,
            "SELECT pg_has_role(current_user, nspowner, 'USAGE') FROM pg_namespace \
             WHERE nspname = $1",
            schema,
            "schema",
        )
        .await?;
        let s = quote_ident(schema);
        match owns {
            None => missing(
                format!("schema {schema:?} does not exist in database {database:?}"),
                format!("CREATE SCHEMA {s} AUTHORIZATION {a};"),
            ),
            Some(false) => missing(
                format!(
                    "administrator {admin:?} does not own schema {schema:?}: presets cannot \
                     grant on its tables or set its default privileges"
                ),
                format!("ALTER SCHEMA {s} OWNER TO {a};"),
            ),
            Some(true) => {}
        }
    }
    // PostgreSQL 16+: granting a role takes ADMIN OPTION on it, which the administrator has
    // only on the roles it created.
    for group in adopted_groups.iter().filter(|_| version >= 160000) {
        let grantable = flag(
            &client,
            "SELECT pg_has_role(current_user, oid, 'USAGE WITH ADMIN OPTION') FROM pg_roles \
             WHERE rolname = $1",
            group,
            "group role",
        )
        .await?;
        if grantable == Some(false) {
            missing(
                format!(
                    "administrator {admin:?} cannot grant the adopted group role {group:?} \
                     (PostgreSQL 16+ needs ADMIN OPTION on it): no user of its roles can be created"
                ),
                format!("GRANT {} TO {a} WITH ADMIN OPTION;", quote_ident(group)),
            );
        }
    }
    Ok(findings)
}

/// What `query` answers for the object named `name` (`what` names its kind in errors); `None`
/// when no such object exists.
async fn flag(
    client: &tokio_postgres::Client,
    query: &str,
    name: &str,
    what: &str,
) -> Result<Option<bool>, EngineError> {
    Ok(client
        .query_opt(query, &[&name])
        .await
        .map_err(sql(format!("looking up {what} {name:?}")))?
        .map(|row| row.get(0)))
}
