//! Creating, renewing and revoking dynamic users in a target database.

use crate::error::{EngineError, sql};
use crate::preset::grant_statements;
use crate::quote::{quote_ident, quote_literal};
use crate::target::Target;
use pgwarden_core::lease::valid_until;
use pgwarden_core::template::{TemplateValues, render};
use pgwarden_core::{RoleDef, RoleKind, Statements};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

impl Target {
    /// Creates `username` with `password` for `role`, valid until `expires_at` (plus slack),
    /// all in one transaction. Only a SCRAM verifier of the password is sent.
    pub async fn create_user(
        &self,
        role: &RoleDef,
        username: &str,
        password: &SecretString,
        expires_at: OffsetDateTime,
    ) -> Result<(), EngineError> {
        let verifier =
            postgres_protocol::password::scram_sha_256(password.expose_secret().as_bytes());
        let until = valid_until(expires_at);
        let mut client = self.client().await?;
        let statements = match &role.kind {
            RoleKind::Preset {
                preset,
                schemas,
                group_role,
            } => {
                self.ensure_group(&client, *preset, group_role, schemas)
                    .await?;
                let u = quote_ident(username);
                let g = quote_ident(group_role);
                vec![format!(
                    "CREATE ROLE {u} WITH LOGIN PASSWORD {} VALID UNTIL {} IN ROLE {g};\n\
                     ALTER ROLE {u} SET role = {};",
                    quote_literal(&verifier),
                    quote_literal(&until),
                    quote_literal(group_role),
                )]
            }
            RoleKind::Statements(s) => {
                render_all(&s.creation, username, Some(&verifier), Some(&until))?
            }
        };
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting a transaction"))?;
        for statement in &statements {
            tx.batch_execute(statement).await.map_err(sql(format!(
                "creating user {username:?} for role {:?}",
                role.name
            )))?;
        }
        tx.commit()
            .await
            .map_err(sql(format!("committing user {username:?}")))
    }

    /// Moves `username`'s `VALID UNTIL` to `expires_at` (plus slack).
    pub async fn renew_user(
        &self,
        role: &RoleDef,
        username: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), EngineError> {
        let until = valid_until(expires_at);
        let client = self.client().await?;
        if !user_exists(&**client, username).await? {
            return Err(EngineError::UserGone {
                username: username.to_string(),
            });
        }
        let statements = match &role.kind {
            RoleKind::Statements(Statements { renew, .. }) if !renew.is_empty() => {
                render_all(renew, username, None, Some(&until))?
            }
            _ => vec![format!(
                "ALTER ROLE {} VALID UNTIL {};",
                quote_ident(username),
                quote_literal(&until)
            )],
        };
        for statement in &statements {
            client
                .batch_execute(statement)
                .await
                .map_err(sql(format!("renewing user {username:?}")))?;
        }
        Ok(())
    }

    /// Drops `username`: blocks new logins, ends its sessions, hands what it owns to the group
    /// role (or the administrator) in every database, then drops the role. A user that does not
    /// exist counts as revoked.
    pub async fn revoke_user(&self, role: &RoleDef, username: &str) -> Result<(), EngineError> {
        let custom = match &role.kind {
            RoleKind::Statements(s) if !s.revocation.is_empty() => Some(&s.revocation),
            _ => None,
        };
        self.drop_user(role, username, custom).await
    }

    /// Undoes a creation that may not have finished: the role's rollback statements if it has
    /// any, else the full revocation.
    pub async fn rollback_user(&self, role: &RoleDef, username: &str) -> Result<(), EngineError> {
        let custom = match &role.kind {
            RoleKind::Statements(s) if !s.rollback.is_empty() => Some(&s.rollback),
            _ => None,
        };
        self.drop_user(role, username, custom).await
    }

    async fn drop_user(
        &self,
        role: &RoleDef,
        username: &str,
        custom: Option<&Vec<String>>,
    ) -> Result<(), EngineError> {
        let mut client = self.client().await?;
        if !user_exists(&**client, username).await? {
            return Ok(());
        }
        let u = quote_ident(username);
        client
            .batch_execute(&format!("ALTER ROLE {u} NOLOGIN;"))
            .await
            .map_err(sql(format!("blocking logins of {username:?}")))?;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[&username],
            )
            .await
            .map_err(sql(format!("ending the sessions of {username:?}")))?;
        if let Some(statements) = custom {
            let tx = client
                .transaction()
                .await
                .map_err(sql("starting a transaction"))?;
            for statement in render_all(statements, username, None, None)? {
                tx.batch_execute(&statement)
                    .await
                    .map_err(sql(format!("revoking user {username:?}")))?;
            }
            return tx
                .commit()
                .await
                .map_err(sql(format!("committing revocation of {username:?}")));
        }
        let heir = match &role.kind {
            RoleKind::Preset { group_role, .. } => quote_ident(group_role),
            RoleKind::Statements(_) => "CURRENT_USER".to_string(),
        };
        let databases = self.databases_with_dependents(&**client, username).await?;
        if !databases.is_empty() {
            ensure_member_of(&**client, username).await?;
            if let RoleKind::Preset { group_role, .. } = &role.kind {
                ensure_member_of(&**client, group_role).await?;
            }
        }
        let disown = format!("REASSIGN OWNED BY {u} TO {heir};\nDROP OWNED BY {u};");
        let here = current_database(&**client).await?;
        for database in databases.iter().filter(|d| **d != here) {
            let other = self.connect_to(database).await?;
            other.batch_execute(&disown).await.map_err(sql(format!(
                "disowning {username:?} in database {database:?}"
            )))?;
        }
        let tx = client
            .transaction()
            .await
            .map_err(sql("starting a transaction"))?;
        if databases.contains(&here) {
            tx.batch_execute(&disown)
                .await
                .map_err(sql(format!("disowning {username:?} in database {here:?}")))?;
        }
        tx.batch_execute(&format!("DROP ROLE IF EXISTS {u};"))
            .await
            .map_err(sql(format!("dropping user {username:?}")))?;
        tx.commit()
            .await
            .map_err(sql(format!("committing revocation of {username:?}")))
    }

    /// Databases holding objects owned by, or privileges granted to, `username`.
    async fn databases_with_dependents(
        &self,
        client: &impl GenericClient,
        username: &str,
    ) -> Result<Vec<String>, EngineError> {
        let rows = client
            .query(
                "SELECT DISTINCT d.datname::text FROM pg_shdepend s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 JOIN pg_roles r ON r.oid = s.refobjid \
                 WHERE s.refclassid = 'pg_authid'::regclass AND r.rolname = $1 AND d.datallowconn",
                &[&username],
            )
            .await
            .map_err(sql(format!("finding what {username:?} owns")))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Creates the preset's group role if missing and applies its grants, once per start-up
    /// for each distinct (group, preset, schemas).
    async fn ensure_group(
        &self,
        client: &deadpool_postgres::Object,
        preset: pgwarden_core::Preset,
        group: &str,
        schemas: &[String],
    ) -> Result<(), EngineError> {
        let key = format!("{group}\0{preset:?}\0{}", schemas.join("\0"));
        let mut ready = self.groups_ready.lock().await;
        if ready.contains(&key) {
            return Ok(());
        }
        if !user_exists(&***client, group).await? {
            let created = client
                .batch_execute(&format!("CREATE ROLE {} NOLOGIN;", quote_ident(group)))
                .await;
            if let Err(error) = created {
                let raced = matches!(error.code(), Some(c) if *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION);
                if !raced {
                    return Err(sql(format!("creating group role {group:?}"))(error));
                }
            }
        }
        let database = current_database(&***client).await?;
        client
            .batch_execute(&grant_statements(preset, group, &database, schemas))
            .await
            .map_err(sql(format!(
                "granting {preset:?} privileges to group role {group:?}"
            )))?;
        ready.insert(key);
        Ok(())
    }
}

/// Renders each statement with the user's name and, where given, password and expiration.
fn render_all(
    statements: &[String],
    username: &str,
    password: Option<&str>,
    expiration: Option<&str>,
) -> Result<Vec<String>, EngineError> {
    let values = TemplateValues {
        name: username,
        password,
        expiration,
    };
    statements
        .iter()
        .map(|s| render(s, &values).map_err(EngineError::from))
        .collect()
}

/// The database `client` is connected to.
async fn current_database(client: &impl GenericClient) -> Result<String, EngineError> {
    Ok(client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(sql("reading the current database"))?
        .get(0))
}

async fn user_exists(client: &impl GenericClient, username: &str) -> Result<bool, EngineError> {
    let row = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&username])
        .await
        .map_err(sql(format!("looking up role {username:?}")))?;
    Ok(row.is_some())
}

/// Makes the administrator a member of `role` if it is not already (needed for REASSIGN/DROP OWNED).
async fn ensure_member_of(client: &impl GenericClient, role: &str) -> Result<(), EngineError> {
    let member: bool = client
        .query_one("SELECT pg_has_role(CURRENT_USER, $1, 'USAGE')", &[&role])
        .await
        .map_err(sql(format!("checking membership in {role:?}")))?
        .get(0);
    if !member {
        client
            .batch_execute(&format!("GRANT {} TO CURRENT_USER;", quote_ident(role)))
            .await
            .map_err(sql(format!("joining role {role:?} to disown its objects")))?;
    }
    Ok(())
}
