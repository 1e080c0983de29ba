//! Static roles (Vault's `static-roles`): an existing database user whose password pgwarden
//! owns and changes on a schedule, for applications that cannot take a new user name.
//! [`StaticRoleSpec`] is what users write (Vault's field names); [`StaticRoleDef`] the
//! validated form; [`Rotation`] says when the password changes next.

use crate::{CoreError, Ttl, names::MAX_IDENTIFIER_BYTES, role::validate_name, template};
use serde::{Deserialize, Serialize};
use serde_with::formats::PreferMany;
use serde_with::{DefaultOnNull, OneOrMany, serde_as};
use time::OffsetDateTime;

/// The shortest rotation period accepted, as Vault's.
pub const MIN_ROTATION_PERIOD: Ttl = Ttl::from_secs(5);

/// When a static role's password changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// This long after the last rotation (`rotation_period`).
    Period(Ttl),
    /// At the times of a standard five-field cron expression, in UTC (`rotation_schedule`).
    Schedule(String),
}

impl Rotation {
    /// The next rotation after one done at `last`; never panics (a schedule that never fires
    /// again, e.g. a past date, gives the latest representable instant).
    pub fn next_after(&self, last: OffsetDateTime) -> OffsetDateTime {
        let never = time::PrimitiveDateTime::MAX.assume_utc();
        match self {
            Rotation::Period(period) => period.after(last),
            Rotation::Schedule(expression) => parse_cron(expression)
                .ok()
                .and_then(|cron| {
                    let start = chrono::DateTime::from_timestamp(last.unix_timestamp(), 0)?;
                    cron.find_next_occurrence(&start, false).ok()
                })
                .and_then(|next| OffsetDateTime::from_unix_timestamp(next.timestamp()).ok())
                .unwrap_or(never),
        }
    }
}

/// Parses a five-field cron expression (minute hour day-of-month month day-of-week), as
/// Vault's `rotation_schedule` takes.
fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| e.to_string())
}

/// A validated static role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoleDef {
    /// The static role's name within its mount.
    pub name: String,
    /// The connection (database) the user lives in.
    pub db_name: String,
    /// The existing database user whose password pgwarden owns.
    pub username: String,
    /// When the password changes.
    pub rotation: Rotation,
    /// Statements that set the password (`{{name}}`, `{{password}}`); empty means pgwarden's
    /// own `ALTER ROLE … WITH PASSWORD`.
    pub rotation_statements: Vec<String>,
}

/// A static role as users write it, through `/v1/<mount>/static-roles/<name>` or in the file.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoleSpec {
    /// The connection the user lives in.
    #[serde(default)]
    pub db_name: Option<String>,
    /// The existing database user.
    #[serde(default)]
    pub username: Option<String>,
    /// Rotate this long after the last rotation.
    #[serde(default)]
    pub rotation_period: Option<Ttl>,
    /// Rotate at these times (five-field cron, UTC).
    #[serde(default)]
    pub rotation_schedule: Option<String>,
    /// Accepted for Vault compatibility; pgwarden rotates at the scheduled time.
    #[serde(default, skip_serializing)]
    pub rotation_window: Option<Ttl>,
    /// Statements that set the password.
    #[serde_as(as = "DefaultOnNull<OneOrMany<_, PreferMany>>")]
    #[serde(default)]
    pub rotation_statements: Vec<String>,
    /// Accepted for Vault compatibility (`credential_type`, only `password`).
    #[serde(default, skip_serializing)]
    pub credential_type: Option<String>,
}

impl StaticRoleSpec {
    /// Validates the spec as static role `name`.
    pub fn into_def(self, name: &str) -> Result<StaticRoleDef, CoreError> {
        let invalid = |reason: String| CoreError::InvalidRole {
            role: name.to_string(),
            reason,
        };
        validate_name(name)?;
        let db_name = self
            .db_name
            .filter(|d| !d.is_empty())
            .ok_or_else(|| invalid("db_name is required".into()))?;
        let username = self
            .username
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid("username is required".into()))?;
        if username.len() > MAX_IDENTIFIER_BYTES || username.contains('\0') {
            return Err(invalid(format!(
                "username must be a PostgreSQL role name (1 to {MAX_IDENTIFIER_BYTES} bytes)"
            )));
        }
        if let Some(kind) = self.credential_type.as_deref()
            && kind != "password"
        {
            return Err(invalid(format!(
                "credential_type {kind:?} is not supported; use \"password\""
            )));
        }
        let rotation = match (self.rotation_period, self.rotation_schedule) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "set only one of rotation_period or rotation_schedule".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "one of rotation_period or rotation_schedule is required".into(),
                ));
            }
            (Some(period), None) if period < MIN_ROTATION_PERIOD => {
                return Err(invalid(format!(
                    "rotation_period must be at least {} seconds",
                    MIN_ROTATION_PERIOD.as_secs()
                )));
            }
            (Some(period), None) => Rotation::Period(period),
            (None, Some(expression)) => {
                parse_cron(&expression).map_err(|e| {
                    invalid(format!(
                        "rotation_schedule {expression:?} is not a five-field cron expression: {e}"
                    ))
                })?;
                // Checked within eight years: 29 February comes at least that often.
                let now = OffsetDateTime::now_utc();
                let rotation = Rotation::Schedule(expression.clone());
                if rotation.next_after(now) > now.saturating_add(time::Duration::days(366 * 8)) {
                    return Err(invalid(format!(
                        "rotation_schedule {expression:?} never comes (no such date)"
                    )));
                }
                rotation
            }
        };
        let mut placeholders = Vec::new();
        for statement in &self.rotation_statements {
            template::validate(statement).map_err(|e| invalid(e.to_string()))?;
            let _ = template::substitute(statement, |name| {
                placeholders.push(name.to_string());
                Ok::<_, ()>(String::new())
            });
        }
        if !self.rotation_statements.is_empty() {
            if !placeholders.iter().any(|p| p == "password") {
                return Err(invalid(
                    "rotation_statements must set the password with {{password}}, e.g. \
                     ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'"
                        .into(),
                ));
            }
            if placeholders.iter().any(|p| p == "expiration") {
                return Err(invalid(
                    "rotation_statements cannot use {{expiration}}: a static role's password \
                     does not expire"
                        .into(),
                ));
            }
        }
        if !self.rotation_statements.is_empty() && !crate::names::is_safe_value(&username) {
            return Err(invalid(format!(
                "username {username:?} cannot be substituted into rotation_statements (only \
                 letters, digits and -_.:+/=$ and space can); leave rotation_statements empty \
                 and pgwarden quotes the name itself"
            )));
        }
        Ok(StaticRoleDef {
            name: name.to_string(),
            db_name,
            username,
            rotation,
            rotation_statements: self.rotation_statements,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn spec(json: serde_json::Value) -> Result<StaticRoleDef, String> {
        serde_json::from_value::<StaticRoleSpec>(json)
            .map_err(|e| e.to_string())?
            .into_def("app")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn periods_and_schedules_give_the_next_rotation() {
        let last = datetime!(2026-12-06 10:17:30 UTC);
        assert_eq!(
            Rotation::Period(Ttl::from_secs(3600)).next_after(last),
            datetime!(2026-12-06 11:17:30 UTC)
        );
        assert_eq!(
            Rotation::Schedule("0 3 * * *".into()).next_after(last),
            datetime!(2026-12-07 03:00:00 UTC)
        );
        assert_eq!(
            Rotation::Schedule("*/15 * * * *".into()).next_after(last),
            datetime!(2026-12-06 10:30:00 UTC)
        );
        // A rotation exactly on a scheduled minute waits for the next one.
        assert_eq!(
            Rotation::Schedule("*/15 * * * *".into())
                .next_after(datetime!(2026-12-06 10:30:00 UTC)),
            datetime!(2026-12-06 10:45:00 UTC)
        );
        assert_eq!(
            Rotation::Period(Ttl::MAX).next_after(time::PrimitiveDateTime::MAX.assume_utc()),
            time::PrimitiveDateTime::MAX.assume_utc()
        );
    }

    #[test]
    fn specs_are_checked_with_vaults_rules() {
        let def = spec(serde_json::json!({"db_name": "appdb", "username": "app",
            "rotation_period": "24h"}))
        .unwrap();
        assert_eq!(def.rotation, Rotation::Period(Ttl::from_secs(86_400)));
        assert!(
            spec(serde_json::json!({"db_name": "appdb", "username": "app",
                "rotation_schedule": "0 0 29 2 *"}))
            .is_ok(),
            "leap days come"
        );
        assert_eq!(
            spec(serde_json::json!({"db_name": "appdb", "username": "app",
                "rotation_schedule": "0 * * * *"}))
            .unwrap()
            .rotation,
            Rotation::Schedule("0 * * * *".into())
        );
        for (json, error) in [
            (
                serde_json::json!({"username": "app", "rotation_period": 60}),
                "role \"app\": db_name is required",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app"}),
                "role \"app\": one of rotation_period or rotation_schedule is required",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app",
                    "rotation_period": 60, "rotation_schedule": "* * * * *"}),
                "role \"app\": set only one of rotation_period or rotation_schedule",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app", "rotation_period": 4}),
                "role \"app\": rotation_period must be at least 5 seconds",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app",
                    "rotation_schedule": "0 0 3 * * *"}),
                "role \"app\": rotation_schedule \"0 0 3 * * *\" is not a five-field cron \
                 expression: Invalid pattern: Pattern must have 5 fields when seconds are \
                 disallowed.",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app",
                    "rotation_schedule": "0 0 30 2 *"}),
                "role \"app\": rotation_schedule \"0 0 30 2 *\" never comes (no such date)",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "o'brien",
                    "rotation_period": 60,
                    "rotation_statements": "ALTER ROLE \"{{name}}\" PASSWORD '{{password}}'"}),
                "role \"app\": username \"o'brien\" cannot be substituted into \
                 rotation_statements (only letters, digits and -_.:+/=$ and space can); leave \
                 rotation_statements empty and pgwarden quotes the name itself",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app", "rotation_period": 60,
                    "rotation_statements": "ALTER ROLE \"{{name}}\" CONNECTION LIMIT 10"}),
                "role \"app\": rotation_statements must set the password with {{password}}, \
                 e.g. ALTER ROLE \"{{name}}\" WITH PASSWORD '{{password}}'",
            ),
            (
                serde_json::json!({"db_name": "appdb", "username": "app", "rotation_period": 60,
                    "rotation_statements": "ALTER ROLE \"{{name}}\" PASSWORD '{{password}}' \
                     VALID UNTIL '{{expiration}}'"}),
                "role \"app\": rotation_statements cannot use {{expiration}}: a static role's \
                 password does not expire",
            ),
        ] {
            assert_eq!(spec(json).unwrap_err(), error);
        }
    }
}
