//! Vault-style statement templates: `{{name}}` (alias `{{username}}`), `{{password}}` and
//! `{{expiration}}`. Every substituted value must pass [`is_safe_value`], so nothing
//! substituted can leave the quotes the template writer put around it.

use crate::{CoreError, names::is_safe_value};

/// The values a template may reference.
#[derive(Debug, Clone, Copy)]
pub struct TemplateValues<'a> {
    /// The generated user name.
    pub name: &'a str,
    /// What `{{password}}` becomes (pgwarden passes a SCRAM verifier, never the plaintext).
    pub password: Option<&'a str>,
    /// What `{{expiration}}` becomes, e.g. `2026-11-22 10:00:05+00`.
    pub expiration: Option<&'a str>,
}

/// Replaces each `{{ name }}` of `template` with `value(name)` (the name trimmed); a `{{`
/// that is never closed is kept as text (see [`has_unclosed`]). The one `{{…}}` scanner of
/// pgwarden: statement templates here, the agent's file templates too.
pub fn substitute<E>(
    template: &str,
    mut value: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::with_capacity(template.len().saturating_add(64));
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("{{") {
        out.push_str(before);
        let Some((placeholder, next)) = after.split_once("}}") else {
            out.push_str("{{");
            out.push_str(after);
            return Ok(out);
        };
        out.push_str(&value(placeholder.trim())?);
        rest = next;
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `template` has a `{{` without its `}}`.
pub fn has_unclosed(template: &str) -> bool {
    template
        .rsplit_once("{{")
        .is_some_and(|(_, after)| !after.contains("}}"))
}

/// Substitutes the placeholders of `statement`; unknown placeholders and unsafe values are errors.
pub fn render(statement: &str, values: &TemplateValues<'_>) -> Result<String, CoreError> {
    substitute(statement, |placeholder| {
        let (label, value) = match placeholder {
            "name" | "username" => ("name", Some(values.name)),
            "password" => ("password", values.password),
            "expiration" => ("expiration", values.expiration),
            other => {
                return Err(CoreError::UnknownPlaceholder {
                    placeholder: other.to_string(),
                });
            }
        };
        let value = value.unwrap_or("");
        if !is_safe_value(value) {
            return Err(CoreError::UnsafeValue { placeholder: label });
        }
        Ok(value.to_string())
    })
}

/// Checks a template's placeholders without values, so bad templates fail when written, not
/// when used; and refuses `COPY`, whose data transfer the driver cannot carry (the statement
/// would fail with a protocol error, on a connection left mid-`COPY`).
pub fn validate(statement: &str) -> Result<(), CoreError> {
    if runs_copy(statement) {
        return Err(CoreError::CopyInStatement);
    }
    render(
        statement,
        &TemplateValues {
            name: "n",
            password: Some("p"),
            expiration: Some("e"),
        },
    )
    .map(|_| ())
}

/// Whether one of `statement`'s `;`-separated parts starts with `COPY` (after blanks and
/// comments). A `;` inside a literal may split a part early; that errs toward refusing.
fn runs_copy(statement: &str) -> bool {
    statement
        .split(';')
        .any(|part| first_word(part).eq_ignore_ascii_case("copy"))
}

/// The first word of `sql`, after blanks, `--` comments and `/* */` comments.
fn first_word(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = sql.strip_prefix("/*") {
            sql = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    sql.split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_is_refused_wherever_a_statement_starts() {
        for statement in [
            "COPY t FROM STDIN",
            "  copy t TO STDOUT;",
            "GRANT x TO \"{{name}}\"; COPY t FROM STDIN;",
            "-- load\n/* the seed */ Copy(SELECT 1) TO STDOUT",
        ] {
            assert_eq!(
                validate(statement).unwrap_err().to_string(),
                "statement runs COPY, which templates cannot use: pgwarden does not carry \
                 COPY's data (FROM STDIN, TO STDOUT)",
                "{statement}"
            );
        }
        for statement in [
            "CREATE ROLE \"{{name}}\"; -- COPY nothing",
            "GRANT SELECT ON copy_log TO \"{{name}}\";",
            "COMMENT ON ROLE \"{{name}}\" IS 'made by copying';",
            "/* unclosed comment COPY",
        ] {
            assert!(validate(statement).is_ok(), "{statement}");
        }
    }

    #[test]
    fn unclosed_braces_are_text_and_detected() {
        let kept = substitute("a {{x}} b {{ y", |name| Ok::<_, ()>(name.to_uppercase()));
        assert_eq!(kept.unwrap(), "a X b {{ y");
        assert!(has_unclosed("a {{x}} b {{ y"));
        assert!(has_unclosed("{{"));
        assert!(!has_unclosed("a {{x}} b"));
        assert!(!has_unclosed("}} {{x}}"));
    }

    const VALUES: TemplateValues<'static> = TemplateValues {
        name: "v-root-app-abc-1",
        password: Some("SCRAM-SHA-256$4096:s$k:k"),
        expiration: Some("2026-11-22 10:00:05+00"),
    };

    #[test]
    fn substitutes_vault_placeholders() {
        let sql = render(
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT x TO \"{{ username }}\";",
            &VALUES,
        )
        .unwrap();
        assert_eq!(
            sql,
            "CREATE ROLE \"v-root-app-abc-1\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:s$k:k' VALID UNTIL '2026-11-22 10:00:05+00'; GRANT x TO \"v-root-app-abc-1\";"
        );
    }

    #[test]
    fn refuses_values_that_could_escape_quotes() {
        let values = TemplateValues {
            name: "x\"; DROP TABLE t; --",
            ..VALUES
        };
        let err = render("DROP ROLE \"{{name}}\"", &values).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to substitute name: the value has characters outside the safe alphabet"
        );
    }

    #[test]
    fn names_unknown_placeholders() {
        let err = validate("GRANT {{group}} TO \"{{name}}\"").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown placeholder {{group}} in statement; known: name, username, password, expiration"
        );
    }

    #[test]
    fn leaves_dollar_quoted_bodies_alone() {
        let sql = render("DO $$ BEGIN RAISE NOTICE '{{name}}'; END $$;", &VALUES).unwrap();
        assert_eq!(sql, "DO $$ BEGIN RAISE NOTICE 'v-root-app-abc-1'; END $$;");
    }
}
