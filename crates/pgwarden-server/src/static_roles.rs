//! Static roles: existing database users whose password pgwarden owns and rotates, by
//! period or cron schedule, on demand (`rotate-role`) and when first defined.
//!
//! A rotation never leaves a password nobody knows, whatever crashes when:
//! 1. a new password is stored, sealed, as the role's *pending* one (compare-and-set on the
//!    row's version; the password in force stays stored too);
//! 2. the database is told, in a transaction that first takes an advisory lock for the user
//!    and checks that the row is still at that version (so a replica that was overtaken
//!    never lands a stale password after a newer one);
//! 3. the row is updated: the pending password becomes the one in force.
//!
//! A crash after 1 or 2 leaves the pending password stored. Whoever touches the role next
//! (the leader's pass, a read of its credentials, a rotation) sets it again, which changes
//! nothing if step 2 had happened, and completes step 3.

use crate::audit::AuditLog;
use crate::catalog::Catalog;
use crate::config::{ConfigError, MountConfig};
use crate::error::ServerError;
use crate::seal::Sealer;
use pgwarden_core::static_role::{StaticRoleDef, StaticRoleSpec};
use pgwarden_core::wire::{StaticCredential, StaticRoleInfo};
use pgwarden_core::{AuditEvent, Outcome, Ttl, chain};
use pgwarden_engine::{EngineError, NewPassword};
use pgwarden_store::{Store, StoredStaticRole};
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::watch;

/// How often the leader looks for rotations that are due or unfinished.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long the leader waits before trying a failed rotation again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

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
        let Some(created) = self.define(mount, def).await? else {
            return Ok(());
        };
        // As Vault does, the password changes at once, so only pgwarden knows it.
        match self.start_rotation(created).await {
            Ok(_) => Ok(()),
            Err(error) => {
                self.forget_if_untouched(mount, name, &error).await;
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
                if let Err(error) = self.define(mount, def).await {
                    return Err(ConfigError::Invalid(format!(
                        "mount {mount:?}: static role {name:?}: {error}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Stores `def`: a new role due for rotation now (returned, for its first rotation), or
    /// an existing one with its rotation updated (`None`). The caller holds the role's lock.
    async fn define(
        &self,
        mount: &str,
        def: StaticRoleDef,
    ) -> Result<Option<StoredStaticRole>, ServerError> {
        let name = def.name.clone();
        self.sealer()?;
        self.catalog
            .target_allowing(mount, &def.db_name, &def.name)?;
        let now = OffsetDateTime::now_utc();
        if let Some(existing) = self.store.get_static_role(mount, &name).await? {
            if existing.def.username != def.username || existing.def.db_name != def.db_name {
                return Err(ServerError::BadRequest(format!(
                    "static role {name:?} manages user {:?} of connection {:?}; its username \
                     and db_name cannot change: delete the static role and create it again",
                    existing.def.username, existing.def.db_name
                )));
            }
            if existing.def == def {
                return Ok(None);
            }
            let mut updated = existing.clone();
            updated.version = existing.version.saturating_add(1);
            updated.next_rotation = def
                .rotation
                .next_after(existing.last_rotation.unwrap_or(now));
            updated.def = def;
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
            next_rotation: now,
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

    /// After a first rotation failed with `error`: deletes the new role if the database was
    /// certainly not changed (no such user, database unreachable), so a mistyped definition
    /// does not linger; otherwise keeps it, and its pending password, for the leader to finish.
    async fn forget_if_untouched(&self, mount: &str, name: &str, error: &ServerError) {
        // A missing user (reported as a bad request) or an unreachable database changed
        // nothing; any other failure might have set the pending password.
        let database_untouched = match error {
            ServerError::Engine(e) => e.created_nothing(),
            ServerError::BadRequest(_) => true,
            _ => false,
        };
        let Ok(Some(role)) = self.store.get_static_role(mount, name).await else {
            return;
        };
        if (database_untouched || role.sealed_pending.is_none())
            && let Err(delete_error) = self
                .store
                .delete_static_role(mount, name, role.version)
                .await
        {
            tracing::warn!(role = %key(mount, name), error = %chain(&delete_error), "could not delete a static role whose first rotation failed");
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
        self.catalog.connection_names(mount)?;
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
        let mut role = self.stored(mount, name).await?;
        if role.sealed_pending.is_some() {
            let lock = self.lock(mount, name);
            let _held = lock.lock().await;
            role = self.settle(self.stored(mount, name).await?).await?;
        }
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

    /// Rotates a static role's password now (`rotate-role`).
    pub async fn rotate(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        let lock = self.lock(mount, name);
        let _held = lock.lock().await;
        let role = self.settle(self.stored(mount, name).await?).await?;
        self.start_rotation(role).await.map(drop)
    }

    /// While this replica leads, every [`CHECK_INTERVAL`]: rotates the static roles that are
    /// due and finishes rotations left half-done (after a crash).
    pub async fn run(
        self: Arc<Self>,
        is_leader: impl Fn() -> bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            if !is_leader() {
                continue;
            }
            if let Err(error) = self.rotate_due().await {
                tracing::warn!(error = %chain(&error), "looking for static roles to rotate failed");
            }
        }
    }

    /// One pass of [`StaticRoles::run`].
    pub async fn rotate_due(&self) -> Result<(), ServerError> {
        let now = OffsetDateTime::now_utc();
        for role in self.store.static_roles().await? {
            let due = role.sealed_pending.is_some() || role.next_rotation <= now;
            let (mount, name) = (role.mount.clone(), role.def.name.clone());
            let waiting = self
                .retry_at
                .lock()
                .get(&key(&mount, &name))
                .is_some_and(|at| Instant::now() < *at);
            if !due || waiting {
                continue;
            }
            let lock = self.lock(&mount, &name);
            let _held = lock.lock().await;
            let rotated = async {
                let Some(role) = self.store.get_static_role(&mount, &name).await? else {
                    return Ok(());
                };
                let role = self.settle(role).await?;
                if role.next_rotation <= OffsetDateTime::now_utc() {
                    self.start_rotation(role).await?;
                }
                Ok::<_, ServerError>(())
            }
            .await;
            let object = key(&mount, &name);
            match rotated {
                Ok(()) => {
                    self.retry_at.lock().remove(&object);
                }
                Err(error) => {
                    tracing::warn!(role = %object, error = %chain(&error), "rotating a static role failed; trying again in 30 s");
                    self.retry_at.lock().insert(
                        object.clone(),
                        Instant::now()
                            .checked_add(RETRY_AFTER)
                            .unwrap_or_else(Instant::now),
                    );
                    self.audit.submit(
                        AuditEvent::now(
                            "pgwarden",
                            "static-role.rotate",
                            &object,
                            Outcome::Failure,
                        )
                        .with_detail(error.to_string()),
                    );
                }
            }
        }
        Ok(())
    }

    /// Steps 1 to 3 for `role` (which has no pending password): a new password, stored, set,
    /// confirmed. Returns the role as stored after.
    async fn start_rotation(
        &self,
        role: StoredStaticRole,
    ) -> Result<StoredStaticRole, ServerError> {
        let (mount, name) = (role.mount.clone(), role.def.name.clone());
        let password = tokio::task::spawn_blocking(NewPassword::generate)
            .await
            .map_err(|e| ServerError::Internal(format!("making a password: {e}")))?;
        let mut pending = role.clone();
        pending.version = role.version.saturating_add(1);
        pending.sealed_pending = Some(
            self.sealer()?
                .seal(password.password(), &seal_context(&mount, &name))
                .map_err(|e| ServerError::Internal(e.to_string()))?,
        );
        if !self
            .store
            .update_static_role(&pending, role.version)
            .await?
        {
            return Err(changed_meanwhile(&mount, &name));
        }
        self.finish(pending, &password).await
    }

    /// Finishes a rotation `role` holds pending, if any; returns the role as stored after.
    async fn settle(&self, role: StoredStaticRole) -> Result<StoredStaticRole, ServerError> {
        let Some(sealed) = &role.sealed_pending else {
            return Ok(role);
        };
        let pending = self.open(&role.mount, &role.def.name, sealed)?;
        let password = tokio::task::spawn_blocking(move || NewPassword::from_password(pending))
            .await
            .map_err(|e| ServerError::Internal(format!("hashing a password: {e}")))?;
        tracing::info!(role = %key(&role.mount, &role.def.name), "finishing an unfinished static role rotation");
        self.finish(role, &password).await
    }

    /// Steps 2 and 3: sets `password` (the one `role` holds pending) in the database if the
    /// role is still at its version, then makes it the one in force.
    async fn finish(
        &self,
        role: StoredStaticRole,
        password: &NewPassword,
    ) -> Result<StoredStaticRole, ServerError> {
        let (mount, name) = (role.mount.as_str(), role.def.name.as_str());
        let target = self
            .catalog
            .target_allowing(mount, &role.def.db_name, name)?;
        let still_pending = || async {
            matches!(
                self.store.get_static_role(mount, name).await,
                Ok(Some(now)) if now.version == role.version
            )
        };
        let set = target
            .set_password(
                &role.def.username,
                &role.def.rotation_statements,
                password,
                still_pending,
            )
            .await
            .map_err(|error| match error {
                EngineError::UserGone { username } => ServerError::BadRequest(format!(
                    "user {username:?} does not exist in connection {:?}: a static role manages \
                     an existing user; create it first",
                    role.def.db_name
                )),
                other => other.into(),
            })?;
        if !set {
            return Err(changed_meanwhile(mount, name));
        }
        let now = OffsetDateTime::now_utc();
        let mut done = role.clone();
        done.version = role.version.saturating_add(1);
        done.sealed_password = done.sealed_pending.take();
        done.last_rotation = Some(now);
        done.next_rotation = done.def.rotation.next_after(now);
        if !self.store.update_static_role(&done, role.version).await? {
            return Err(changed_meanwhile(mount, name));
        }
        tracing::info!(role = %key(mount, name), username = %done.def.username, "static role password rotated");
        self.audit.submit(AuditEvent::now(
            "pgwarden",
            "static-role.rotated",
            &key(mount, name),
            Outcome::Success,
        ));
        Ok(done)
    }

    /// The stored role, or 404.
    async fn stored(&self, mount: &str, name: &str) -> Result<StoredStaticRole, ServerError> {
        self.catalog.connection_names(mount)?;
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
