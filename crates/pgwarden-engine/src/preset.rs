//! The grants each preset gives its group role. Pure text generation; every name is quoted.

use crate::quote::quote_ident;
use pgwarden_core::Preset;

/// Privileges per preset: on the database, on the schemas, on tables, sequences and routines.
struct Privileges {
    database: &'static str,
    schema: &'static str,
    tables: &'static str,
    sequences: &'static str,
    routines: Option<&'static str>,
}

fn privileges(preset: Preset) -> Privileges {
    match preset {
        Preset::Readonly => Privileges {
            database: "CONNECT",
            schema: "USAGE",
            tables: "SELECT",
            sequences: "SELECT",
            routines: None,
        },
        Preset::User => Privileges {
            database: "CONNECT, TEMPORARY",
            schema: "USAGE",
            tables: "SELECT, INSERT, UPDATE, DELETE",
            sequences: "USAGE, SELECT, UPDATE",
            routines: Some("EXECUTE"),
        },
        Preset::Admin => Privileges {
            database: "CONNECT, TEMPORARY",
            schema: "USAGE, CREATE",
            tables: "ALL PRIVILEGES",
            sequences: "ALL PRIVILEGES",
            routines: Some("EXECUTE"),
        },
    }
}

/// The idempotent `GRANT` and `ALTER DEFAULT PRIVILEGES` statements that give `group` the
/// preset's privileges in `database` on `schemas`, now and on objects the connecting
/// administrator or any of `admin_groups` (whose users create objects) creates later.
pub(crate) fn grant_statements(
    preset: Preset,
    group: &str,
    database: &str,
    schemas: &[String],
    admin_groups: &[&str],
) -> String {
    let p = privileges(preset);
    let g = quote_ident(group);
    let mut sql = format!(
        "GRANT {} ON DATABASE {} TO {g};\n",
        p.database,
        quote_ident(database)
    );
    let creators: Vec<String> = std::iter::once(String::new())
        .chain(
            admin_groups
                .iter()
                .map(|a| format!(" FOR ROLE {}", quote_ident(a))),
        )
        .collect();
    for schema in schemas {
        let s = quote_ident(schema);
        sql.push_str(&format!(
            "GRANT {schema_privs} ON SCHEMA {s} TO {g};\n\
             GRANT {tables} ON ALL TABLES IN SCHEMA {s} TO {g};\n\
             GRANT {sequences} ON ALL SEQUENCES IN SCHEMA {s} TO {g};\n",
            schema_privs = p.schema,
            tables = p.tables,
            sequences = p.sequences,
        ));
        if let Some(routines) = p.routines {
            sql.push_str(&format!(
                "GRANT {routines} ON ALL ROUTINES IN SCHEMA {s} TO {g};\n"
            ));
        }
        for creator in &creators {
            sql.push_str(&format!(
                "ALTER DEFAULT PRIVILEGES{creator} IN SCHEMA {s} GRANT {tables} ON TABLES TO {g};\n\
                 ALTER DEFAULT PRIVILEGES{creator} IN SCHEMA {s} GRANT {sequences} ON SEQUENCES TO {g};\n",
                tables = p.tables,
                sequences = p.sequences,
            ));
            if let Some(routines) = p.routines {
                sql.push_str(&format!(
                    "ALTER DEFAULT PRIVILEGES{creator} IN SCHEMA {s} GRANT {routines} ON ROUTINES TO {g};\n"
                ));
            }
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_grants_select_only_and_quotes_every_name() {
        let sql = grant_statements(Preset::Readonly, "ro\"x", "app db", &["public".into()], &[]);
        assert!(
            sql.starts_with("GRANT CONNECT ON DATABASE \"app db\" TO \"ro\"\"x\";\n"),
            "{sql}"
        );
        assert!(sql.contains("GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"ro\"\"x\";"));
        assert!(!sql.contains("INSERT"));
        assert!(!sql.contains("ROUTINES"));
    }

    #[test]
    fn admin_may_create_in_each_schema() {
        let sql = grant_statements(Preset::Admin, "adm", "db", &["a".into(), "b".into()], &[]);
        assert!(sql.contains("GRANT USAGE, CREATE ON SCHEMA \"a\" TO \"adm\";"));
        assert!(sql.contains("GRANT USAGE, CREATE ON SCHEMA \"b\" TO \"adm\";"));
    }

    #[test]
    fn readers_see_what_admin_groups_create() {
        let sql = grant_statements(Preset::Readonly, "ro", "db", &["s".into()], &["adm\"1"]);
        assert!(sql.contains(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA \"s\" GRANT SELECT ON TABLES TO \"ro\";"
        ));
        assert!(sql.contains(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"adm\"\"1\" IN SCHEMA \"s\" GRANT SELECT ON TABLES TO \"ro\";"
        ));
        assert!(sql.contains(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"adm\"\"1\" IN SCHEMA \"s\" GRANT SELECT ON SEQUENCES TO \"ro\";"
        ));
    }
}
