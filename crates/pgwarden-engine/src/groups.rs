//! Preset group roles: created NOLOGIN and marked as pgwarden's, checked before every use,
//! joined by the administrator (so it can grant on, and take back, what the group owns), and
//! given their preset's privileges, including on what the connection's admin groups create.

use crate::error::{EngineError, retried, sql};
use crate::preset::grant_statements;
use crate::quote::{quote_ident, quote_literal};
use crate::target::Target;
use pgwarden_core::{Preset, RoleDef, RoleKind};
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

/// The comment pgwarden puts on the group roles it creates. A group role without it is used
/// only when its role says `adopt_group_role: true`.
pub const GROUP_MARK: &str = "pgwarden preset group role";

/// A preset role's group, as `begin_user` needs it.
pub(crate) struct Group<'a> {
    pub preset: Preset,
    pub name: &'a str,
    pub schemas: &'a [String],
    pub adopted: bool,
}

impl<'a> Group<'a> {
    /// The group `name` holding `preset`'s privileges on `schemas`.
    pub(crate) fn new(preset: Preset, name: &'a str, schemas: &'a [String], adopted: bool) -> Self {
        Group {
            preset,
            name,
            schemas,
            adopted,
        }
    }

    /// The group of `role`, if it is a preset role.
    pub(crate) fn of(role: &'a RoleDef) -> Option<Group<'a>> {
        match &role.kind {
            RoleKind::Preset {
                preset,
                schemas,
                group_role,
                adopt_group_role,
            } => Some(Group::new(*preset, group_role, schemas, *adopt_group_role)),
            RoleKind::Statements(_) | RoleKind::Identity => None,
        }
    }
}

impl Target {
    /// Makes `group` ready for its users: it and the groups of `admin_roles` (the admin preset
    /// roles of this connection) exist, are safe, are joined by the administrator, and `group`
    /// holds its preset's privileges on what the administrator and those admin groups own and
    /// will create. Done once per start-up for each distinct setup.
    pub(crate) async fn ensure_group(
        &self,
        client: &deadpool_postgres::Object,
        group: &Group<'_>,
        admin_roles: &[RoleDef],
    ) -> Result<(), EngineError> {
        let admins: Vec<Group<'_>> = admin_roles
            .iter()
            .filter_map(Group::of)
            .filter(|admin| admin.preset == Preset::Admin && admin.name != group.name)
            .collect();
        let admin_names: Vec<&str> = admins.iter().map(|a| a.name).collect();
        let key = format!(
            "{}\0{:?}\0{}\0{}",
            group.name,
            group.preset,
            group.schemas.join("\0"),
            admin_names.join("\0")
        );
        let mut ready = self.groups_ready.lock().await;
        if ready.contains(&key) {
            return Ok(());
        }
        for g in std::iter::once(group).chain(&admins) {
            prepare(&***client, g.name, g.adopted).await?;
        }
        let database = current_database(&***client).await?;
        let grants = grant_statements(
            group.preset,
            group.name,
            &database,
            group.schemas,
            &admin_names,
        );
        let (client, grants) = (&***client, &grants);
        retried(|| async move {
            client.batch_execute(grants).await.map_err(sql(format!(
                "granting {:?} privileges to group role {:?}",
                group.preset, group.name
            )))
        })
        .await?;
        ready.insert(key);
        Ok(())
    }
}

/// A group role's attributes that matter before handing it to dynamic users.
struct Found {
    unsafe_attribute: Option<&'static str>,
    marked: bool,
    /// A powerful role it is a member of (its users could `SET ROLE` to it).
    powerful_membership: Option<String>,
}

/// Looks up `group`: `None` when it does not exist.
async fn look_up(client: &impl GenericClient, group: &str) -> Result<Option<Found>, EngineError> {
    let row = client
        .query_opt(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolbypassrls, \
             COALESCE(shobj_description(oid, 'pg_authid'), '') = $2, \
             (SELECT min(p.rolname)::text FROM pg_roles p WHERE p.rolname <> $1 \
              AND pg_has_role(r.oid, p.oid, 'MEMBER') AND (p.rolsuper OR p.rolcreaterole \
              OR p.rolbypassrls OR p.rolname IN ('pg_execute_server_program', \
              'pg_read_server_files', 'pg_write_server_files'))) \
             FROM pg_roles r WHERE rolname = $1",
            &[&group, &GROUP_MARK],
        )
        .await
        .map_err(sql(format!("looking up group role {group:?}")))?;
    Ok(row.map(|row| {
        let unsafe_attribute = [
            (row.get(0), "LOGIN"),
            (row.get(1), "SUPERUSER"),
            (row.get(2), "CREATEROLE"),
            (row.get(3), "BYPASSRLS"),
        ]
        .into_iter()
        .find_map(|(has, name): (bool, _)| has.then_some(name));
        Found {
            unsafe_attribute,
            marked: row.get(4),
            powerful_membership: row.get(5),
        }
    }))
}

/// Refuses a group role every dynamic user would act as, if it is one of PostgreSQL's
/// predefined roles (`pg_read_server_files`, `pg_execute_server_program`, …), has a dangerous
/// attribute, or is a member of a role that has one (or of a role that reads, writes or runs
/// server files).
fn refuse_unsafe(group: &str, found: &Found) -> Result<(), EngineError> {
    let unsafe_group = |reason: String| {
        Err(EngineError::UnsafeGroup {
            group: group.to_string(),
            reason,
        })
    };
    if pgwarden_core::names::is_predefined_role(group) {
        return unsafe_group(pgwarden_core::names::PREDEFINED_ROLE_REFUSED.into());
    }
    if let Some(attribute) = found.unsafe_attribute {
        return unsafe_group(format!(
            "has {attribute}; a preset's group role must be a NOLOGIN role without \
             SUPERUSER, CREATEROLE or BYPASSRLS, since every dynamic user acts as it"
        ));
    }
    if let Some(role) = &found.powerful_membership {
        return unsafe_group(format!(
            "is a member of {role:?}, which dynamic users could switch to with SET ROLE; \
             revoke that membership first"
        ));
    }
    Ok(())
}

/// Creates `group` (NOLOGIN, marked) if missing, else checks that it is safe to hand to
/// dynamic users; then makes sure the administrator is a member of it.
async fn prepare(
    client: &impl GenericClient,
    group: &str,
    adopted: bool,
) -> Result<(), EngineError> {
    match look_up(client, group).await? {
        None => create(client, group).await?,
        Some(found) => {
            refuse_unsafe(group, &found)?;
            if !found.marked && !adopted {
                return Err(EngineError::UnsafeGroup {
                    group: group.to_string(),
                    reason: "exists but was not created by pgwarden; set adopt_group_role: true \
                             on the role to use it"
                        .into(),
                });
            }
        }
    }
    join(client, group).await
}

/// Checks the role named after `identity` (made by a database owner, never by pgwarden):
/// it exists and is safe; then makes sure the administrator is a member of it.
pub(crate) async fn prepare_identity(
    client: &impl GenericClient,
    identity: &str,
) -> Result<(), EngineError> {
    if identity.len() > pgwarden_core::names::MAX_IDENTIFIER_BYTES {
        return Err(EngineError::IdentityTooLong {
            identity: identity.to_string(),
        });
    }
    let found = look_up(client, identity)
        .await?
        .ok_or_else(|| EngineError::NoIdentityRole {
            identity: identity.to_string(),
            quoted: quote_ident(identity),
        })?;
    refuse_unsafe(identity, &found)?;
    join(client, identity).await
}

/// Creates `group` NOLOGIN with pgwarden's mark; a concurrent creation is fine.
async fn create(client: &impl GenericClient, group: &str) -> Result<(), EngineError> {
    let g = quote_ident(group);
    let created = client
        .batch_execute(&format!(
            "CREATE ROLE {g} NOLOGIN;\nCOMMENT ON ROLE {g} IS {};",
            quote_literal(GROUP_MARK)
        ))
        .await;
    match created {
        Err(error) if !matches!(error.code(), Some(c) if *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION) => {
            Err(sql(format!("creating group role {group:?}"))(error))
        }
        _ => Ok(()),
    }
}

/// Makes the administrator a member of `role` if it is not already (needed to grant on what
/// the role owns, set its default privileges, and REASSIGN/DROP OWNED).
pub(crate) async fn join(client: &impl GenericClient, role: &str) -> Result<(), EngineError> {
    let member: bool = client
        .query_one("SELECT pg_has_role(CURRENT_USER, $1, 'USAGE')", &[&role])
        .await
        .map_err(sql(format!("checking membership in {role:?}")))?
        .get(0);
    if member {
        return Ok(());
    }
    match client
        .batch_execute(&format!("GRANT {} TO CURRENT_USER;", quote_ident(role)))
        .await
    {
        // PostgreSQL 16+: granting a role takes ADMIN OPTION on it, which only the role's
        // creator gets by itself.
        Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            let admin: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .map_err(sql("reading the administrator's name"))?
                .get(0);
            Err(EngineError::UnsafeGroup {
                group: role.to_string(),
                reason: format!(
                    "cannot be granted by the administrator {admin:?}: as a superuser, run \
                     GRANT {} TO {} WITH ADMIN OPTION",
                    quote_ident(role),
                    quote_ident(&admin)
                ),
            })
        }
        other => other.map_err(sql(format!("joining role {role:?}"))),
    }
}

/// The database `client` is connected to.
pub(crate) async fn current_database(client: &impl GenericClient) -> Result<String, EngineError> {
    Ok(client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(sql("reading the current database"))?
        .get(0))
}
