//! Dynamic role definitions: a preset (`readonly`, `user`, `admin`) whose statements pgwarden
//! generates, or Vault-style statement templates. [`RoleSpec`] is the loose form users write
//! (YAML or the Vault API); [`RoleDef`] is the validated form everything else uses.

use crate::{CoreError, Ttl, names::MAX_IDENTIFIER_BYTES, template};
use serde::{Deserialize, Serialize};
use serde_with::formats::PreferMany;
use serde_with::{DefaultOnNull, OneOrMany, serde_as};

/// TTL of a lease when the role sets none.
pub const DEFAULT_TTL: Ttl = Ttl::from_secs(3600);
/// Upper bound on a lease's life when the role sets none.
pub const DEFAULT_MAX_TTL: Ttl = Ttl::from_secs(24 * 3600);

/// The privilege sets pgwarden can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// CONNECT, USAGE on the schemas, SELECT on tables and sequences, now and later.
    Readonly,
    /// Readonly plus INSERT, UPDATE, DELETE, sequence USAGE/UPDATE and EXECUTE.
    User,
    /// Everything on the schemas' objects plus CREATE on the schemas.
    Admin,
}

/// Vault's four statement lists of a templated role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statements {
    /// Run to create the user.
    pub creation: Vec<String>,
    /// Run to drop the user; empty means pgwarden's own revocation.
    pub revocation: Vec<String>,
    /// Run to extend the user's `VALID UNTIL`; empty means `ALTER ROLE … VALID UNTIL`.
    pub renew: Vec<String>,
    /// Run to undo a half-finished creation; empty means pgwarden's own revocation.
    pub rollback: Vec<String>,
}

/// How a role's users get their privileges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RoleKind {
    /// Membership in a NOLOGIN group role that holds a preset's grants.
    Preset {
        /// Which privileges.
        preset: Preset,
        /// Schemas the grants cover.
        schemas: Vec<String>,
        /// The group role holding the grants.
        group_role: String,
        /// Use `group_role` even though pgwarden did not create it.
        #[serde(default)]
        adopt_group_role: bool,
    },
    /// User-written statements.
    Statements(Statements),
    /// Membership in the existing role named exactly like the caller's identity (e.g.
    /// `system:serviceaccount:team-a:app`), with whatever the database owner granted it.
    Identity,
}

/// A validated dynamic role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleDef {
    /// The role's name within its mount.
    pub name: String,
    /// The connection (database) its users are created in.
    pub db_name: String,
    /// How privileges are given.
    pub kind: RoleKind,
    /// Lease TTL when the caller asks for none.
    pub default_ttl: Ttl,
    /// No lease outlives its issue time plus this.
    pub max_ttl: Ttl,
}

/// A role as users write it, in YAML or through `/v1/<mount>/roles/<name>`. Statement lists
/// accept one string or a list (Vault clients send both), and null as empty.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// The connection its users are created in.
    #[serde(default)]
    pub db_name: Option<String>,
    /// Generate statements from a preset instead of templates.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Schemas a preset covers (default `public`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// Name of a preset's group role (default: the role's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_role: Option<String>,
    /// Use an existing `group_role` pgwarden did not create (it must still be a NOLOGIN role
    /// without SUPERUSER, CREATEROLE or BYPASSRLS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_group_role: bool,
    /// Users join the existing role named like the caller's identity (PostgREST-style
    /// per-identity grants) instead of a preset's group or templates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_role: bool,
    /// Vault's `creation_statements`.
    #[serde_as(as = "DefaultOnNull<OneOrMany<_, PreferMany>>")]
    #[serde(default)]
    pub creation_statements: Vec<String>,
    /// Vault's `revocation_statements`.
    #[serde_as(as = "DefaultOnNull<OneOrMany<_, PreferMany>>")]
    #[serde(default)]
    pub revocation_statements: Vec<String>,
    /// Vault's `renew_statements`.
    #[serde_as(as = "DefaultOnNull<OneOrMany<_, PreferMany>>")]
    #[serde(default)]
    pub renew_statements: Vec<String>,
    /// Vault's `rollback_statements`.
    #[serde_as(as = "DefaultOnNull<OneOrMany<_, PreferMany>>")]
    #[serde(default)]
    pub rollback_statements: Vec<String>,
    /// Lease TTL when the caller asks for none.
    #[serde(default)]
    pub default_ttl: Option<Ttl>,
    /// Longest life of a lease.
    #[serde(default)]
    pub max_ttl: Option<Ttl>,
    /// Accepted for Vault compatibility (`credential_type`, only `password`).
    #[serde(default, skip_serializing)]
    pub credential_type: Option<String>,
}

/// Checks a mount, role or connection name: non-empty, at most 256 bytes, no `/`, no control characters.
pub fn validate_name(name: &str) -> Result<(), CoreError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 256 {
        "must be at most 256 bytes"
    } else if name.contains('/') {
        "must not contain '/'"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(CoreError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

impl RoleSpec {
    /// Validates the spec into a [`RoleDef`] named `name`, filling in defaults.
    pub fn into_def(mut self, name: &str) -> Result<RoleDef, CoreError> {
        validate_name(name)?;
        for list in [
            &mut self.creation_statements,
            &mut self.revocation_statements,
            &mut self.renew_statements,
            &mut self.rollback_statements,
        ] {
            list.retain(|statement| !statement.trim().is_empty());
        }
        let invalid = |reason: String| CoreError::InvalidRole {
            role: name.to_string(),
            reason,
        };
        if let Some(kind) = self.credential_type.as_deref()
            && kind != "password"
        {
            return Err(invalid(format!(
                "credential_type {kind:?} is not supported; only \"password\""
            )));
        }
        let db_name = self.db_name.filter(|d| !d.is_empty()).ok_or_else(|| {
            invalid("db_name is required: name the connection its users are created in".into())
        })?;
        let max_ttl = self
            .max_ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_MAX_TTL);
        let default_ttl = match self.default_ttl.filter(|t| !t.is_zero()) {
            Some(ttl) if ttl > max_ttl => {
                return Err(invalid(format!(
                    "default_ttl ({ttl}) exceeds max_ttl ({max_ttl})"
                )));
            }
            Some(ttl) => ttl,
            None => DEFAULT_TTL.min(max_ttl),
        };
        let has_statements = !(self.creation_statements.is_empty()
            && self.revocation_statements.is_empty()
            && self.renew_statements.is_empty()
            && self.rollback_statements.is_empty());
        let kind = match self.preset {
            _ if self.identity_role => {
                if self.preset.is_some()
                    || has_statements
                    || self.group_role.is_some()
                    || !self.schemas.is_empty()
                    || self.adopt_group_role
                {
                    return Err(invalid(
                        "identity_role takes no preset, statements, group_role or schemas: its \
                         users join the role named like the caller's identity"
                            .into(),
                    ));
                }
                RoleKind::Identity
            }
            Some(_) if has_statements => {
                return Err(invalid(
                    "give either preset or statements, not both: a preset generates its own statements".into(),
                ));
            }
            Some(preset) => {
                let group_role = self.group_role.unwrap_or_else(|| name.to_string());
                check_identifier(&group_role)
                    .and_then(|()| {
                        if crate::names::is_predefined_role(&group_role) {
                            Err(crate::names::PREDEFINED_ROLE_REFUSED.to_string())
                        } else {
                            Ok(())
                        }
                    })
                    .map_err(|why| invalid(format!("group_role {group_role:?} {why}")))?;
                let schemas = if self.schemas.is_empty() {
                    vec!["public".to_string()]
                } else {
                    self.schemas
                };
                for schema in &schemas {
                    check_identifier(schema)
                        .map_err(|why| invalid(format!("schema {schema:?} {why}")))?;
                }
                RoleKind::Preset {
                    preset,
                    schemas,
                    group_role,
                    adopt_group_role: self.adopt_group_role,
                }
            }
            None if self.creation_statements.is_empty() => {
                return Err(invalid(
                    "creation_statements or preset (readonly, user, admin) is required".into(),
                ));
            }
            None => {
                if self.group_role.is_some() || !self.schemas.is_empty() || self.adopt_group_role {
                    return Err(invalid(
                        "group_role, adopt_group_role and schemas apply only to preset roles"
                            .into(),
                    ));
                }
                let statements = Statements {
                    creation: self.creation_statements,
                    revocation: self.revocation_statements,
                    renew: self.renew_statements,
                    rollback: self.rollback_statements,
                };
                for statement in statements
                    .creation
                    .iter()
                    .chain(&statements.revocation)
                    .chain(&statements.renew)
                    .chain(&statements.rollback)
                {
                    template::validate(statement).map_err(|e| invalid(e.to_string()))?;
                }
                RoleKind::Statements(statements)
            }
        };
        Ok(RoleDef {
            name: name.to_string(),
            db_name,
            kind,
            default_ttl,
            max_ttl,
        })
    }
}

/// Why an identifier pgwarden would create cannot be used, if it cannot.
fn check_identifier(ident: &str) -> Result<(), String> {
    if ident.is_empty() {
        Err("must not be empty".into())
    } else if ident.len() > MAX_IDENTIFIER_BYTES {
        Err(format!(
            "is {} bytes; PostgreSQL identifiers are at most {MAX_IDENTIFIER_BYTES}",
            ident.len()
        ))
    } else if ident.contains('\0') {
        Err("must not contain NUL".into())
    } else {
        Ok(())
    }
}

impl RoleDef {
    /// The loose form of this role, as the API reads it back.
    pub fn to_spec(&self) -> RoleSpec {
        let mut spec = RoleSpec {
            db_name: Some(self.db_name.clone()),
            default_ttl: Some(self.default_ttl),
            max_ttl: Some(self.max_ttl),
            ..RoleSpec::default()
        };
        match &self.kind {
            RoleKind::Preset {
                preset,
                schemas,
                group_role,
                adopt_group_role,
            } => {
                spec.preset = Some(*preset);
                spec.schemas = schemas.clone();
                spec.group_role = Some(group_role.clone());
                spec.adopt_group_role = *adopt_group_role;
            }
            RoleKind::Statements(s) => {
                spec.creation_statements = s.creation.clone();
                spec.revocation_statements = s.revocation.clone();
                spec.renew_statements = s.renew.clone();
                spec.rollback_statements = s.rollback.clone();
            }
            RoleKind::Identity => spec.identity_role = true,
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_roles_take_nothing_else() {
        let def = spec(r#"{"db_name":"appdb","identity_role":true}"#)
            .into_def("mine")
            .unwrap();
        assert_eq!(def.kind, RoleKind::Identity);
        assert_eq!(def.to_spec().into_def("mine").unwrap(), def);
        let err = spec(r#"{"db_name":"appdb","identity_role":true,"preset":"readonly"}"#)
            .into_def("mine")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "role \"mine\": identity_role takes no preset, statements, group_role or schemas: \
             its users join the role named like the caller's identity"
        );
    }

    fn spec(json: &str) -> RoleSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn preset_gets_defaults() {
        let def = spec(r#"{"db_name":"appdb","preset":"readonly"}"#)
            .into_def("appdb-readonly")
            .unwrap();
        assert_eq!(def.default_ttl, DEFAULT_TTL);
        assert_eq!(def.max_ttl, DEFAULT_MAX_TTL);
        assert_eq!(
            def.kind,
            RoleKind::Preset {
                preset: Preset::Readonly,
                schemas: vec!["public".into()],
                group_role: "appdb-readonly".into(),
                adopt_group_role: false,
            }
        );
    }

    #[test]
    fn default_ttl_follows_a_small_max_ttl() {
        let def = spec(r#"{"db_name":"a","preset":"user","max_ttl":"10m"}"#)
            .into_def("r")
            .unwrap();
        assert_eq!(def.default_ttl.as_secs(), 600);
    }

    #[test]
    fn statements_accept_a_string_or_a_list() {
        let one = spec(r#"{"db_name":"a","creation_statements":"CREATE ROLE \"{{name}}\";"}"#)
            .into_def("r")
            .unwrap();
        let many = spec(r#"{"db_name":"a","creation_statements":["CREATE ROLE \"{{name}}\";"]}"#)
            .into_def("r")
            .unwrap();
        assert_eq!(one, many);
    }

    #[test]
    fn errors_say_what_to_fix() {
        let cases = [
            (
                r#"{"preset":"readonly"}"#,
                "role \"r\": db_name is required: name the connection its users are created in",
            ),
            (
                r#"{"db_name":"a"}"#,
                "role \"r\": creation_statements or preset (readonly, user, admin) is required",
            ),
            (
                r#"{"db_name":"a","preset":"admin","creation_statements":["x"]}"#,
                "role \"r\": give either preset or statements, not both: a preset generates its own statements",
            ),
            (
                r#"{"db_name":"a","preset":"admin","default_ttl":"2h","max_ttl":"1h"}"#,
                "role \"r\": default_ttl (7200s) exceeds max_ttl (3600s)",
            ),
            (
                r#"{"db_name":"a","creation_statements":["GRANT {{group}} TO x"]}"#,
                "role \"r\": unknown placeholder {{group}} in statement; known: name, username, password, expiration",
            ),
            (
                r#"{"db_name":"a","creation_statements":["CREATE ROLE \"{{name}}\"","COPY t FROM STDIN"]}"#,
                "role \"r\": statement runs COPY, which templates cannot use: pgwarden does not \
                 carry COPY's data (FROM STDIN, TO STDOUT)",
            ),
            (
                r#"{"db_name":"a","preset":"user","schemas":["public",""]}"#,
                "role \"r\": schema \"\" must not be empty",
            ),
            (
                r#"{"db_name":"a","preset":"readonly","group_role":"pg_execute_server_program","adopt_group_role":true}"#,
                "role \"r\": group_role \"pg_execute_server_program\" is a name PostgreSQL \
                 reserves for its predefined roles (pg_*), whose powers (such as reading server \
                 files or running programs) every dynamic user would get; use a NOLOGIN role of \
                 your own and grant it what the users need",
            ),
        ];
        for (json, message) in cases {
            assert_eq!(
                spec(json).into_def("r").unwrap_err().to_string(),
                message,
                "{json}"
            );
        }
        let long = "x".repeat(64);
        let err = spec(r#"{"db_name":"a","preset":"user"}"#)
            .into_def(&long)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "role \"{long}\": group_role \"{long}\" is 64 bytes; PostgreSQL identifiers are at most 63"
            )
        );
    }

    #[test]
    fn names_with_sql_metacharacters_are_fine_but_slashes_are_not() {
        let def = spec(r#"{"db_name":"a","preset":"user"}"#)
            .into_def("a\"; DROP TABLE t; --")
            .unwrap();
        assert!(
            matches!(def.kind, RoleKind::Preset { ref group_role, .. } if group_role == "a\"; DROP TABLE t; --")
        );
        assert_eq!(
            validate_name("a/b").unwrap_err().to_string(),
            "invalid name \"a/b\": must not contain '/'"
        );
    }

    #[test]
    fn spec_round_trips() {
        let def = spec(r#"{"db_name":"a","creation_statements":["CREATE ROLE \"{{name}}\";"],"default_ttl":60,"max_ttl":"2m"}"#)
            .into_def("r")
            .unwrap();
        assert_eq!(def.to_spec().into_def("r").unwrap(), def);
    }
}
