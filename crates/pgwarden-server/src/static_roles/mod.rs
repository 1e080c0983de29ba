//! Static roles: existing database users whose password pgwarden owns and rotates, by
//! period or cron schedule (`schedule`), on demand (`rotate-role`) and when first defined.
//! This module keeps the definitions (API and file) and hands out passwords; `rotation`
//! changes a password without ever leaving one nobody knows.

mod rotation;
mod schedule;

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::config::{ConfigError, MountConfig};
use crate::error::ServerError;
use crate::seal::Sealer;
use pgwarden_core::static_role::{StaticRoleDef, StaticRoleSpec};
use pgwarden_core::wire::{StaticCredential, StaticRoleInfo};
use pgwarden_core::{Ttl, chain};
use pgwarden_store::{Store, StoredStaticRole};
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// How long after its creation through the API a role becomes due for the leader: its
/// creator gives it its first password at once, and the leader should not race it.
const CREATOR_FIRST: Duration = Duration::from_secs(60);

/// The static roles of every mount, in the state store.
pub struct StaticRoles {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    sealer: Option<Arc<Sealer>>,
    audit: AuditLog,
    /// One lock per role: this process works on a role one request at a time.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Roles whose last scheduled rotation failed, and when to try again.
    retry_at: parking_lot::Mutex<HashMap<String, Instant>>,
    /// The roles the configuration file defines (the API cannot change them).
    file_defined: parking_lot::Mutex<HashSet<String>>,
    /// Pending passwords the leader has seen, with the role's version and since when.
    pending_since: parking_lot::Mutex<HashMap<String, (u64, Instant)>>,
    /// Held while a definition is checked and stored (after its role's lock): two
    /// definitions of different roles for one user cannot both pass the check.
    defining: tokio::sync::Mutex<()>,
}

/// `<mount>/static-roles/<name>`, as roles are named in errors, locks and the audit log.
fn key(mount: &str, name: &str) -> String {
    format!("{mount}/static-roles/{name}")
}

/// The context a role's passwords are sealed with, so one cannot be moved to another role.
fn seal_context(mount: &str, name: &str) -> String {
    format!("static-role:{mount}/{name}")
}

/// The error of a write that lost a race with another request (perhaps on another replica).
fn changed_meanwhile(mount: &str, name: &str) -> ServerError {
    ServerError::Conflict(format!(
        "static role {name:?} in mount {mount:?} was changed by another request meanwhile; try again"
    ))
}

impl StaticRoles {
    /// Static roles kept in `store`, their connections found in `catalog`, their passwords
    /// sealed with `sealer` (without one, none can be defined).
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        sealer: Option<Arc<Sealer>>,
        audit: AuditLog,
    ) -> StaticRoles {
        StaticRoles {
            store,
            catalog,
            sealer,
            audit,
            locks: Default::default(),
            retry_at: Default::default(),
            file_defined: Default::default(),
            defining: Default::default(),
            pending_since: Default::default(),
        }
    }

    /// Creates static role `name` and sets its first password, or updates its rotation.
    /// The user and connection of an existing role cannot change.
    pub async fn write(
        &self,
        mount: &str,
        name: &str,
        spec: StaticRoleSpec,
    ) -> Result<(), ServerError> {
        self.refuse_file_defined(mount, name)?;
        let def = spec.into_def(name)?;
        let lock = self.lock(mount, name);
        let _held = lock.lock().await;
        let Some(created) = self.define(mount, def, false).await? else {
            return Ok(());
        };
        // As Vault does, the password changes at once, so only pgwarden knows it.
        match self.start_rotation(created).await {
            Ok(_) => Ok(()),
            Err(error) => {
                self.forget_if_untouched(mount, name).await;
                Err(error)
            }
        }
    }

    /// Stores the static roles of the configuration file: each one missing is created (the
    /// leader gives it its first password within a second, or as soon as its database can
    /// be reached), each one present gets the file's rotation. Fails on a definition that
    /// cannot be used (bad fields, unknown connection, another user than the stored role's).
    pub async fn define_from_file(
        &self,
        mounts: &BTreeMap<String, MountConfig>,
    ) -> Result<(), ConfigError> {
        for (mount, config) in mounts {
            for (name, spec) in &config.static_roles {
                let invalid = |source| ConfigError::Definition {
                    mount: mount.clone(),
                    source,
                };
                let def = spec.clone().into_def(name).map_err(invalid)?;
                if self.sealer.is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "mount {mount:?}: static role {name:?} needs a seal key to store its \
                         password encrypted: set seal_key_file or PGWARDEN_SEAL_KEY"
                    )));
                }
                self.file_defined.lock().insert(key(mount, name));
                let lock = self.lock(mount, name);
                let _held = lock.lock().await;
                if let Err(error) = self.define(mount, def, true).await {
                    return Err(ConfigError::Invalid(format!(
                        "mount {mount:?}: static role {name:?}: {error}"
                    )));
                }
            }
        }
        self.forget_left_file().await
    }

    /// Forgets the static roles an earlier configuration file defined and this one does not
    /// (their users keep their passwords), so pgwarden stops rotating them.
    async fn forget_left_file(&self) -> Result<(), ConfigError> {
        let stored = self
            .store
            .static_roles()
            .await
            .map_err(ConfigError::Store)?;
        for role in stored.into_iter().filter(|r| r.from_file) {
            let object = key(&role.mount, &role.def.name);
            if self.file_defined.lock().contains(&object) {
                continue;
            }
            self.store
                .delete_static_role(&role.mount, &role.def.name, role.version)
                .await
                .map_err(ConfigError::Store)?;
            tracing::info!(role = %object, username = %role.def.username, "static role no longer in the configuration file: forgotten, its user keeps its password");
        }
        Ok(())
    }

    /// Stores `def` (from the file when `from_file`): a new role (returned, for its first
    /// rotation), or an existing one with its rotation updated (`None`). One user is managed
    /// by one static role, and never the connection's own administrator. The caller holds the
    /// role's lock.
    async fn define(
        &self,
        mount: &str,
        def: StaticRoleDef,
        from_file: bool,
    ) -> Result<Option<StoredStaticRole>, ServerError> {
        let name = def.name.clone();
        self.sealer()?;
        self.catalog
            .target_allowing(mount, &def.db_name, &def.name)?;
        let admin = self.catalog.connection(mount, &def.db_name)?.def.username;
        if admin == def.username {
            return Err(ServerError::BadRequest(format!(
                "user {admin:?} is the administrator of connection {:?}; a static role cannot \
                 manage it (rotate-root changes an API connection's administrator password)",
                def.db_name
            )));
        }
        let _one_at_a_time = self.defining.lock().await;
        let stored = self.store.static_roles().await?;
        let server = self.catalog.target(mount, &def.db_name)?.server();
        // A role belongs to the server, not to one database: connections to other databases
        // of it, in any mount, reach the same user.
        let same_server = |other: &StoredStaticRole| match self
            .catalog
            .target(&other.mount, &other.def.db_name)
        {
            Ok(target) => target.server() == server,
            Err(_) => other.mount == mount && other.def.db_name == def.db_name,
        };
        if let Some(other) = stored.iter().find(|r| {
            !(r.mount == mount && r.def.name == name)
                && r.def.username == def.username
                && same_server(r)
        }) {
            let managed = format!(
                "user {:?} of connection {:?} is already managed by static role {:?}",
                def.username, def.db_name, other.def.name
            );
            if other.mount == mount && other.def.db_name == def.db_name {
                return Err(ServerError::BadRequest(managed));
            }
            return Err(ServerError::BadRequest(format!(
                "{managed} of connection {:?} in mount {:?}, on the same server ({server}): a \
                 role is shared by every database of a server, and two rotations would undo \
                 each other",
                other.def.db_name, other.mount
            )));
        }
        let now = OffsetDateTime::now_utc();
        if let Some(existing) = stored
            .into_iter()
            .find(|r| r.mount == mount && r.def.name == name)
        {
            if existing.def.username != def.username || existing.def.db_name != def.db_name {
                return Err(ServerError::BadRequest(format!(
                    "static role {name:?} manages user {:?} of connection {:?}; its username \
                     and db_name cannot change: delete the static role and create it again",
                    existing.def.username, existing.def.db_name
                )));
            }
            if existing.def == def && existing.from_file == from_file {
                return Ok(None);
            }
            let mut updated = existing.clone();
            updated.version = existing.version.saturating_add(1);
            if let Some(last) = existing.last_rotation {
                updated.next_rotation = def.rotation.next_after(last);
            }
            updated.def = def;
            updated.from_file = from_file;
            if !self
                .store
                .update_static_role(&updated, existing.version)
                .await?
            {
                return Err(changed_meanwhile(mount, &name));
            }
            return Ok(None);
        }
        let role = StoredStaticRole {
            mount: mount.to_string(),
            def,
            version: 0,
            sealed_password: None,
            sealed_pending: None,
            last_rotation: None,
            // A file role gets its first password from the leader; an API role from its
            // creator, at once.
            next_rotation: if from_file {
                now
            } else {
                now.saturating_add(time::Duration::try_from(CREATOR_FIRST).unwrap_or_default())
            },
            from_file,
        };
        if !self.store.insert_static_role(&role).await? {
            return Err(changed_meanwhile(mount, &name));
        }
        Ok(Some(role))
    }

    /// Refuses an API change to a static role the configuration file defines.
    fn refuse_file_defined(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        if self.file_defined.lock().contains(&key(mount, name)) {
            return Err(ServerError::BadRequest(format!(
                "static role {name:?} of mount {mount:?} is defined in the configuration file; \
                 change it there"
            )));
        }
        Ok(())
    }

    /// After a first rotation failed: deletes the new role if pgwarden never set a password
    /// for it and none is in flight (the failure was certainly before the database changed),
    /// so a mistyped definition does not linger; otherwise keeps it, with its pending
    /// password, for the leader to finish.
    async fn forget_if_untouched(&self, mount: &str, name: &str) {
        let Ok(Some(role)) = self.store.get_static_role(mount, name).await else {
            return;
        };
        if role.sealed_password.is_none()
            && role.sealed_pending.is_none()
            && let Err(error) = self
                .store
                .delete_static_role(mount, name, role.version)
                .await
        {
            tracing::warn!(role = %key(mount, name), error = %chain(&error), "could not delete a static role whose first rotation failed");
        }
    }

    /// A static role's definition and last rotation, as Vault shows them.
    pub async fn read(&self, mount: &str, name: &str) -> Result<StaticRoleInfo, ServerError> {
        let role = self.stored(mount, name).await?;
        let (rotation_period, rotation_schedule) = rotation_fields(&role);
        Ok(StaticRoleInfo {
            db_name: role.def.db_name,
            username: role.def.username,
            rotation_statements: role.def.rotation_statements,
            rotation_period,
            rotation_schedule,
            last_vault_rotation: role.last_rotation.map(crate::api::respond::rfc3339),
            credential_type: "password".into(),
        })
    }

    /// The names of `mount`'s static roles.
    pub async fn names(&self, mount: &str) -> Result<Vec<String>, ServerError> {
        self.catalog.ensure_mount(mount)?;
        Ok(self
            .store
            .static_roles()
            .await?
            .into_iter()
            .filter(|r| r.mount == mount)
            .map(|r| r.def.name)
            .collect())
    }

    /// Forgets a static role; the user keeps whatever password it has (as in Vault), and
    /// whoever manages it next sets their own. Missing is not an error.
    pub async fn delete(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        self.refuse_file_defined(mount, name)?;
        let lock = self.lock(mount, name);
        let _held = lock.lock().await;
        let Some(role) = self.store.get_static_role(mount, name).await? else {
            return Ok(());
        };
        if !self
            .store
            .delete_static_role(mount, name, role.version)
            .await?
        {
            return Err(changed_meanwhile(mount, name));
        }
        Ok(())
    }

    /// The current password of a static role, finishing a rotation left half-done.
    pub async fn credential(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<StaticCredential, ServerError> {
        let role = self.settled(mount, name).await?;
        let (Some(sealed), Some(last_rotation)) = (&role.sealed_password, role.last_rotation)
        else {
            return Err(ServerError::Unavailable(format!(
                "static role {name:?} in mount {mount:?} has no password yet: its first rotation \
                 has not succeeded (see pgwarden's log, or POST {mount}/rotate-role/{name})"
            )));
        };
        let password = self.open(mount, name, sealed)?;
        let (rotation_period, rotation_schedule) = rotation_fields(&role);
        let endpoint = self
            .catalog
            .target_allowing(mount, &role.def.db_name, name)?
            .endpoint();
        Ok(StaticCredential {
            host: endpoint.host,
            port: endpoint.port,
            database: endpoint.database,
            hosts: endpoint.hosts,
            username: role.def.username,
            password,
            last_vault_rotation: crate::api::respond::rfc3339(last_rotation),
            rotation_period,
            rotation_schedule,
            ttl: Ttl::between(OffsetDateTime::now_utc(), role.next_rotation).as_secs(),
        })
    }

    /// The role with no rotation in flight: a pending password (a rotation running, perhaps
    /// on another replica, or cut short) is finished first, waiting for the database's lock
    /// on the user, as often as other rotations keep overtaking this read. A rotation that
    /// certainly failed was dropped: then the password in force is the one to hand out.
    async fn settled(&self, mount: &str, name: &str) -> Result<StoredStaticRole, ServerError> {
        const ATTEMPTS: usize = 10;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let role = self.stored(mount, name).await?;
            if role.sealed_pending.is_none() {
                return Ok(role);
            }
            let lock = self.lock(mount, name);
            let _held = lock.lock().await;
            match self.settle(self.stored(mount, name).await?).await {
                Ok(role) if role.sealed_pending.is_none() => return Ok(role),
                Ok(_) => {}
                Err(error @ ServerError::Conflict(_)) => last_error = Some(error),
                Err(error) => {
                    let now = self.stored(mount, name).await?;
                    return if now.sealed_pending.is_none() {
                        Ok(now)
                    } else {
                        Err(error)
                    };
                }
            }
        }
        Err(last_error.unwrap_or_else(|| changed_meanwhile(mount, name)))
    }

    /// Rotates a static role's password now (`rotate-role`).
    pub async fn rotate(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        self.stored(mount, name).await?;
        let lock = self.lock(mount, name);
        let _held = lock.lock().await;
        let role = self.settle(self.stored(mount, name).await?).await?;
        self.start_rotation(role).await.map(drop)
    }

    /// The stored role, or 404.
    async fn stored(&self, mount: &str, name: &str) -> Result<StoredStaticRole, ServerError> {
        self.catalog.ensure_mount(mount)?;
        self.store
            .get_static_role(mount, name)
            .await?
            .ok_or_else(|| {
                ServerError::NotFound(format!("static role {name:?} not found in mount {mount:?}"))
            })
    }

    /// The sealer, or the error that says how to configure one.
    fn sealer(&self) -> Result<&Sealer, ServerError> {
        self.sealer.as_deref().ok_or_else(|| {
            ServerError::BadRequest(
                "no seal key is configured (seal_key_file or PGWARDEN_SEAL_KEY), so static role \
                 passwords cannot be stored encrypted"
                    .into(),
            )
        })
    }

    /// Unseals one of a role's passwords.
    fn open(&self, mount: &str, name: &str, sealed: &[u8]) -> Result<SecretString, ServerError> {
        self.sealer()?
            .open(sealed, &seal_context(mount, name))
            .map_err(|e| {
                ServerError::Internal(format!(
                    "the password of static role {name:?} in mount {mount:?} cannot be unsealed \
                     (was the seal key changed?): {e}"
                ))
            })
    }

    /// The lock of one role in this process.
    fn lock(&self, mount: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .entry(key(mount, name))
            .or_default()
            .clone()
    }
}

/// Vault's `rotation_period` (seconds) or `rotation_schedule` of a role.
fn rotation_fields(role: &StoredStaticRole) -> (Option<u64>, Option<String>) {
    match &role.def.rotation {
        pgwarden_core::static_role::Rotation::Period(period) => (Some(period.as_secs()), None),
        pgwarden_core::static_role::Rotation::Schedule(cron) => (None, Some(cron.clone())),
    }
}
