//! Mounts with their connections and roles: those from the configuration file (read-only
//! through the API) and those written through the API (persisted in the store, passwords sealed).

mod root;

use crate::config::{Config, ConfigError};
use crate::error::ServerError;
use crate::seal::Sealer;
use parking_lot::RwLock;
use pgwarden_core::connection::{POSTGRES_PLUGIN, take_url_password};
use pgwarden_core::role::validate_name;
use pgwarden_core::wire::ConnectionWrite;
use pgwarden_core::{AdminAuth, ConnectionDef, Preset, RoleDef, RoleKind, RoleSpec};
use pgwarden_engine::Target;
use pgwarden_store::{ConnectionChange, Store, StoredConnection};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The configuration file: read-only through the API.
    File,
    /// Written through the API and kept in the state store.
    Api,
}

/// A definition and where it came from.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// The validated definition.
    pub def: T,
    /// Where it was defined.
    pub source: Source,
}

#[derive(Default)]
struct Mount {
    connections: BTreeMap<String, Entry<ConnectionDef>>,
    /// The live target of each connection, by connection name.
    targets: BTreeMap<String, Arc<Target>>,
    roles: BTreeMap<String, Entry<RoleDef>>,
}

impl Mount {
    fn target(&self, mount: &str, name: &str) -> Result<Arc<Target>, ServerError> {
        self.targets.get(name).cloned().ok_or_else(|| {
            ServerError::NotFound(format!("connection {name:?} not found in mount {mount:?}"))
        })
    }

    fn add_connection(&mut self, def: ConnectionDef, source: Source, target: Target) {
        self.targets.insert(def.name.clone(), Arc::new(target));
        self.connections
            .insert(def.name.clone(), Entry { def, source });
    }
}

/// All mounts and their definitions.
pub struct Catalog {
    mounts: RwLock<BTreeMap<String, Mount>>,
    /// Serializes API writes, so the store and memory agree without holding `mounts` while the
    /// store writes (readers, issuance among them, never wait for a disk flush).
    writes: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    sealer: Option<Sealer>,
    /// On shared state: when the definitions were last read from the store (see
    /// [`Catalog::ensure_fresh`]); `None` when this process alone writes them.
    refreshed: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// How old the definitions read from shared state may be before reads of them answer 503.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// The target of a connection being loaded.
pub(crate) fn connection_target(mount: &str, def: &ConnectionDef) -> Result<Target, ConfigError> {
    Target::new(def).map_err(|source| ConfigError::Connection {
        mount: mount.to_string(),
        name: def.name.clone(),
        source,
    })
}

fn seal_context(mount: &str, name: &str) -> String {
    format!("connection\0{mount}\0{name}")
}

fn no_mount(mount: &str) -> ServerError {
    ServerError::NotFound(format!(
        "no mount {mount:?}: mounts are defined in the configuration file"
    ))
}

/// Refuses to change `name` through the API when the configuration file defines it.
fn ensure_writable<T>(
    entries: &BTreeMap<String, Entry<T>>,
    kind: &str,
    name: &str,
) -> Result<(), ServerError> {
    match entries.get(name) {
        Some(entry) if entry.source == Source::File => Err(read_only(kind, name)),
        _ => Ok(()),
    }
}

fn read_only(kind: &str, name: &str) -> ServerError {
    ServerError::BadRequest(format!(
        "{kind} {name:?} is defined in the configuration file and is read-only through the API"
    ))
}

/// Makes the API-written definitions of `mounts` those of the store (`roles`, `connections`),
/// keeping the file's, and the targets (with their open connections) of unchanged connections.
fn apply_stored(
    mounts: &mut BTreeMap<String, Mount>,
    sealer: Option<&Sealer>,
    roles: Vec<(String, RoleDef)>,
    connections: Vec<(String, StoredConnection)>,
) -> Result<(), ConfigError> {
    // What can fail first (unsealing, and a target for each new or changed connection), so
    // that an error leaves the catalog as it was. `None`: keep the current target.
    let mut prepared = Vec::new();
    for (mount_name, conn) in connections {
        let Some(mount) = mounts.get(&mount_name) else {
            continue;
        };
        let def = unseal(sealer, &mount_name, conn)?;
        let target = match mount.connections.get(&def.name) {
            Some(entry) if entry.source == Source::File => continue, // the file's wins
            Some(entry) if same_connection(&entry.def, &def) => None,
            _ => Some(Arc::new(connection_target(&mount_name, &def)?)),
        };
        prepared.push((mount_name, def, target));
    }
    // Then the swap, which cannot fail.
    let mut kept_targets = BTreeMap::new();
    for (mount_name, mount) in mounts.iter_mut() {
        mount.roles.retain(|_, entry| entry.source == Source::File);
        let api: Vec<String> = mount
            .connections
            .iter()
            .filter(|(_, entry)| entry.source == Source::Api)
            .map(|(name, _)| name.clone())
            .collect();
        for name in api {
            mount.connections.remove(&name);
            if let Some(target) = mount.targets.remove(&name) {
                kept_targets.insert((mount_name.clone(), name), target);
            }
        }
    }
    for (mount_name, def) in roles {
        if let Some(mount) = mounts.get_mut(&mount_name)
            && !mount.roles.contains_key(&def.name)
        {
            let source = Source::Api;
            mount.roles.insert(def.name.clone(), Entry { def, source });
        }
    }
    for (mount_name, def, target) in prepared {
        let key = (mount_name, def.name.clone());
        let Some(target) = target.or_else(|| kept_targets.remove(&key)) else {
            continue; // unreachable: an unchanged connection had a target
        };
        if let Some(mount) = mounts.get_mut(&key.0) {
            mount.targets.insert(def.name.clone(), target);
            let (name, source) = (def.name.clone(), Source::Api);
            mount.connections.insert(name, Entry { def, source });
        }
    }
    Ok(())
}

/// Whether two definitions of a connection reach the same database the same way.
fn same_connection(a: &ConnectionDef, b: &ConnectionDef) -> bool {
    use secrecy::ExposeSecret;
    a.connection_url == b.connection_url
        && a.username == b.username
        && a.password.expose_secret() == b.password.expose_secret()
        && a.allowed_roles == b.allowed_roles
        && a.verify_connection == b.verify_connection
        && a.auth == b.auth
}

/// A stored connection of `mount` with its password unsealed.
fn unseal(
    sealer: Option<&Sealer>,
    mount: &str,
    conn: StoredConnection,
) -> Result<ConnectionDef, ConfigError> {
    let sealer = sealer.ok_or_else(|| {
        ConfigError::Invalid(
            "the state store holds sealed connection passwords but no seal key is configured: set seal_key_file or PGWARDEN_SEAL_KEY".into(),
        )
    })?;
    let password = sealer
        .open(&conn.sealed_password, &seal_context(mount, &conn.name))
        .map_err(|source| ConfigError::Sealed {
            mount: mount.to_string(),
            name: conn.name.clone(),
            source,
        })?;
    Ok(ConnectionDef {
        name: conn.name,
        connection_url: conn.connection_url,
        username: conn.username,
        password,
        allowed_roles: conn.allowed_roles,
        verify_connection: conn.verify_connection,
        auth: AdminAuth::Password,
    })
}

/// A change to a connection that leases and static roles forbid while they use it.
#[derive(Clone, Copy)]
enum Change {
    /// Deleting it.
    Delete,
    /// Pointing it at another server.
    Move,
}

impl Catalog {
    /// Re-reads the API-written definitions from the store, so that what another replica wrote
    /// is served here too.
    pub async fn refresh(&self) -> Result<(), ServerError> {
        let _serial = self.writes.lock().await;
        let roles = self.store.roles().await?;
        let connections = self.store.connections().await?;
        let mut mounts = self.mounts.write();
        apply_stored(&mut mounts, self.sealer.as_ref(), roles, connections)
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        *self.refreshed.lock() = Some(std::time::Instant::now());
        Ok(())
    }

    /// From now on, the definitions are kept in step with a shared store by
    /// [`Catalog::refresh`], and reads through the API check that they are.
    pub fn expect_refreshes(&self) {
        *self.refreshed.lock() = Some(std::time::Instant::now());
    }

    /// On shared state, refuses (503) to answer from definitions not read from the store for
    /// a few seconds (this replica is cut off from it): they may be stale.
    pub fn ensure_fresh(&self) -> Result<(), ServerError> {
        match *self.refreshed.lock() {
            Some(at) if at.elapsed() > STALE_AFTER => Err(ServerError::Unavailable(format!(
                "this replica has not read its definitions from the state database for {} s \
                 (see its log for why); they may be stale",
                at.elapsed().as_secs()
            ))),
            _ => Ok(()),
        }
    }

    /// Builds the catalog from the file's mounts plus what the store holds.
    pub async fn load(
        config: &Config,
        store: Arc<dyn Store>,
        sealer: Option<Sealer>,
    ) -> Result<Catalog, ConfigError> {
        let mut mounts = BTreeMap::new();
        for (mount_name, mount_config) in &config.mounts {
            let definition = |source| ConfigError::Definition {
                mount: mount_name.clone(),
                source,
            };
            validate_name(mount_name).map_err(definition)?;
            let mut mount = Mount::default();
            for (name, conn) in &mount_config.connections {
                let def = conn.to_def(mount_name, name)?;
                let target = connection_target(mount_name, &def)?;
                mount.add_connection(def, Source::File, target);
            }
            for (name, spec) in &mount_config.roles {
                let def = spec.clone().into_def(name).map_err(definition)?;
                let source = Source::File;
                mount.roles.insert(name.clone(), Entry { def, source });
            }
            mounts.insert(mount_name.clone(), mount);
        }
        let roles = store.roles().await.map_err(ConfigError::Store)?;
        let connections = store.connections().await.map_err(ConfigError::Store)?;
        apply_stored(&mut mounts, sealer.as_ref(), roles, connections)?;
        Ok(Catalog {
            mounts: RwLock::new(mounts),
            writes: tokio::sync::Mutex::new(()),
            store,
            sealer,
            refreshed: parking_lot::Mutex::new(None),
        })
    }

    fn read<T>(
        &self,
        mount: &str,
        f: impl FnOnce(&Mount) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mounts = self.mounts.read();
        f(mounts.get(mount).ok_or_else(|| no_mount(mount))?)
    }

    /// The seal key, or the error saying how to configure one: connection passwords written
    /// through the API are stored only encrypted.
    fn sealer(&self) -> Result<&Sealer, ServerError> {
        self.sealer.as_ref().ok_or_else(|| {
            ServerError::BadRequest(
                "no seal key is configured (seal_key_file or PGWARDEN_SEAL_KEY), so connection passwords cannot be stored encrypted".into(),
            )
        })
    }

    fn write<T>(
        &self,
        mount: &str,
        f: impl FnOnce(&mut Mount) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mut mounts = self.mounts.write();
        f(mounts.get_mut(mount).ok_or_else(|| no_mount(mount))?)
    }

    /// The connections to check at start-up (`verify_connection`), as mount, name and target.
    pub fn targets_to_verify(&self) -> Vec<(String, String, Arc<Target>)> {
        let mounts = self.mounts.read();
        mounts
            .iter()
            .flat_map(|(m, mount)| {
                mount
                    .connections
                    .values()
                    .filter(|c| c.def.verify_connection)
                    .filter_map(move |c| {
                        let target = mount.targets.get(&c.def.name)?.clone();
                        Some((m.clone(), c.def.name.clone(), target))
                    })
            })
            .collect()
    }

    /// Every role of `mount`.
    pub fn roles(&self, mount: &str) -> Result<Vec<RoleDef>, ServerError> {
        self.read(mount, |m| {
            Ok(m.roles.values().map(|r| r.def.clone()).collect())
        })
    }

    /// Every connection, as `mount/name` and target.
    pub fn targets(&self) -> Vec<(String, Arc<Target>)> {
        let mounts = self.mounts.read();
        mounts
            .iter()
            .flat_map(|(m, mount)| {
                mount
                    .targets
                    .iter()
                    .map(move |(name, target)| (format!("{m}/{name}"), target.clone()))
            })
            .collect()
    }

    /// The role `name` of `mount`.
    pub fn role(&self, mount: &str, name: &str) -> Result<RoleDef, ServerError> {
        self.read(mount, |m| {
            m.roles.get(name).map(|r| r.def.clone()).ok_or_else(|| {
                ServerError::NotFound(format!("role {name:?} not found in mount {mount:?}"))
            })
        })
    }

    /// The target a role's users are created in, if its connection allows the role, and the
    /// URL that connection is stored with if it was written through the API (`None` for one
    /// of the file), read together: the lease's record checks that the state still holds
    /// the connection the user is made through ([`Store::insert_lease_via`]).
    pub fn target_for_role(
        &self,
        mount: &str,
        role: &RoleDef,
    ) -> Result<(Arc<Target>, Option<String>), ServerError> {
        self.allowing(mount, &role.db_name, &role.name, |m, entry| {
            let stored_url = match entry.source {
                Source::Api => Some(entry.def.connection_url.clone()),
                Source::File => None,
            };
            Ok((m.target(mount, &role.db_name)?, stored_url))
        })
    }

    /// The target of connection `connection`, if its `allowed_roles` take (dynamic or static)
    /// role `role`.
    pub fn target_allowing(
        &self,
        mount: &str,
        connection: &str,
        role: &str,
    ) -> Result<Arc<Target>, ServerError> {
        self.allowing(mount, connection, role, |m, _| m.target(mount, connection))
    }

    /// `f` of `mount` and connection `connection`, if its `allowed_roles` take role `role`.
    fn allowing<T>(
        &self,
        mount: &str,
        connection: &str,
        role: &str,
        f: impl FnOnce(&Mount, &Entry<ConnectionDef>) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        self.read(mount, |m| {
            let conn = m.connections.get(connection).ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "role {role:?} names connection {connection:?}, which does not exist in mount {mount:?}"
                ))
            })?;
            if !conn.def.allows_role(role) {
                return Err(ServerError::BadRequest(format!(
                    "role {role:?} is not in the allowed_roles of connection {connection:?}"
                )));
            }
            f(m, conn)
        })
    }

    /// The admin preset roles of `mount` whose users are created through `connection`: other
    /// preset groups of that connection are given their privileges on what these create.
    pub fn admin_roles(&self, mount: &str, connection: &str) -> Result<Vec<RoleDef>, ServerError> {
        self.read(mount, |m| {
            Ok(m.roles
                .values()
                .map(|r| &r.def)
                .filter(|def| {
                    def.db_name == connection
                        && matches!(
                            def.kind,
                            RoleKind::Preset {
                                preset: Preset::Admin,
                                ..
                            }
                        )
                })
                .cloned()
                .collect())
        })
    }

    /// The target of connection `name` (for revocation: no allowed-roles check).
    pub fn target(&self, mount: &str, name: &str) -> Result<Arc<Target>, ServerError> {
        self.read(mount, |m| m.target(mount, name))
    }

    /// The target of connection `name` as the state holds it now, for acting on a user that
    /// exists (renewing or dropping it). On shared state another replica may have written,
    /// moved or re-created an API connection within the second before this one reads it:
    /// the stored URL is compared with this replica's first, and the definitions read again
    /// when they differ. (Once a lease uses a connection, it can be neither moved nor
    /// deleted.)
    pub async fn current_target(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Arc<Target>, ServerError> {
        if self.refreshed.lock().is_none() {
            return self.target(mount, name);
        }
        let known = self.read(mount, |m| {
            Ok(m.connections
                .get(name)
                .map(|entry| (entry.source, entry.def.connection_url.clone())))
        })?;
        let current = match known {
            Some((Source::File, _)) => true,
            Some((Source::Api, url)) => self
                .store
                .connections()
                .await?
                .iter()
                .any(|(m, c)| m == mount && c.name == name && c.connection_url == url),
            None => false,
        };
        if !current {
            self.refresh().await?;
        }
        self.target(mount, name)
    }

    /// Names of the roles in `mount`.
    pub fn role_names(&self, mount: &str) -> Result<Vec<String>, ServerError> {
        self.read(mount, |m| Ok(m.roles.keys().cloned().collect()))
    }

    /// Applies an API change: refuses file-defined names (`writable`), writes the store without
    /// holding `mounts`, then updates memory. The caller holds `writes`.
    async fn commit<E>(
        &self,
        mount: &str,
        writable: impl FnOnce(&Mount) -> Result<(), ServerError>,
        persist: impl Future<Output = Result<(), E>>,
        apply: impl FnOnce(&mut Mount),
    ) -> Result<(), ServerError>
    where
        ServerError: From<E>,
    {
        self.read(mount, writable)?;
        persist.await?;
        self.write(mount, |m| {
            apply(m);
            Ok(())
        })
    }

    /// Creates or replaces an API role.
    pub async fn put_role(
        &self,
        mount: &str,
        name: &str,
        spec: RoleSpec,
    ) -> Result<(), ServerError> {
        let def = spec.into_def(name)?;
        let stored = def.clone();
        let _serial = self.writes.lock().await;
        self.commit(
            mount,
            |m| ensure_writable(&m.roles, "role", name),
            self.store.put_role(mount, &stored),
            |m| {
                let source = Source::Api;
                m.roles.insert(name.to_string(), Entry { def, source });
            },
        )
        .await
    }

    /// Deletes an API role (a missing role is not an error, as in Vault).
    pub async fn delete_role(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        let _serial = self.writes.lock().await;
        self.commit(
            mount,
            |m| ensure_writable(&m.roles, "role", name),
            async { self.store.delete_role(mount, name).await.map(drop) },
            |m| {
                m.roles.remove(name);
            },
        )
        .await
    }

    /// The connection `name` of `mount` and where it was defined.
    pub fn connection(&self, mount: &str, name: &str) -> Result<Entry<ConnectionDef>, ServerError> {
        self.read(mount, |m| {
            m.connections.get(name).cloned().ok_or_else(|| {
                ServerError::NotFound(format!("connection {name:?} not found in mount {mount:?}"))
            })
        })
    }

    /// Ok when mount `mount` exists, else its 404.
    pub fn ensure_mount(&self, mount: &str) -> Result<(), ServerError> {
        self.read(mount, |_| Ok(()))
    }

    /// Names of the connections in `mount`.
    pub fn connection_names(&self, mount: &str) -> Result<Vec<String>, ServerError> {
        self.read(mount, |m| Ok(m.connections.keys().cloned().collect()))
    }

    /// Creates or replaces an API connection, checking it first unless asked not to. A move to
    /// another server is refused while leases or static roles use it; the store refuses it
    /// too should a lease be recorded meanwhile (an issuance records its lease only while the
    /// connection is stored as the issuer read it), and refuses any write when another
    /// replica changed the connection since this one read it.
    pub async fn put_connection(
        &self,
        mount: &str,
        name: &str,
        write: ConnectionWrite,
    ) -> Result<(), ServerError> {
        validate_name(name)?;
        let _serial = self.writes.lock().await;
        let previous = self.read(mount, |m| {
            ensure_writable(&m.connections, "connection", name)?;
            Ok(m.connections.get(name).map(|entry| entry.def.clone()))
        })?;
        // What the store must still hold for this write to apply: another replica may have
        // changed it within the second before this one read it.
        let expected_url = previous.as_ref().map(|def| def.connection_url.clone());
        // The server the connection reaches now, if it exists.
        let previous_server = self.target(mount, name).ok().map(|target| target.server());
        let def = connection_def(name, write, previous)?;
        let sealer = self.sealer()?;
        let target = Target::new(&def)?;
        let moving = previous_server.is_some_and(|server| server != target.server());
        if moving {
            self.refuse_while_used(mount, name, Change::Move).await?;
        }
        if def.verify_connection {
            target.verify().await.map_err(|e| {
                ServerError::BadRequest(format!(
                    "connection {name:?} failed verification: {}",
                    pgwarden_core::chain(&e)
                ))
            })?;
        }
        let stored = StoredConnection {
            name: name.to_string(),
            connection_url: def.connection_url.clone(),
            username: def.username.clone(),
            sealed_password: sealer
                .seal(&def.password, &seal_context(mount, name))
                .map_err(|e| ServerError::Internal(e.to_string()))?,
            allowed_roles: def.allowed_roles.clone(),
            verify_connection: def.verify_connection,
            sealed_pending_password: None,
        };
        // A move is refused by the store too when another replica recorded a lease through
        // the connection since the count above; any write, when another replica changed the
        // connection since this one read it.
        let persist = async {
            let outcome = self
                .store
                .write_connection(mount, &stored, expected_url.as_deref(), moving)
                .await?;
            done_unless_refused(mount, name, Change::Move, outcome)
        };
        self.commit(
            mount,
            |m| ensure_writable(&m.connections, "connection", name),
            persist,
            |m| m.add_connection(def, Source::Api, target),
        )
        .await
    }

    /// Refuses (409) to `change` connection `name` while leases or static roles use it: each
    /// lease's user lives on the server it was created on, where its revocation must drop it
    /// through this connection, and each static role manages a user of the server it was
    /// defined on (and one user has one static role per server).
    async fn refuse_while_used(
        &self,
        mount: &str,
        name: &str,
        change: Change,
    ) -> Result<(), ServerError> {
        let leases = self.leases_using(mount, name).await?;
        if leases > 0 {
            return Err(used_by_leases(mount, name, change, leases));
        }
        let using = self.static_roles_using(mount, name).await?;
        if using.is_empty() {
            return Ok(());
        }
        let using = using.join(", ");
        Err(ServerError::Conflict(match change {
            Change::Delete => {
                format!("connection {name:?} is used by static role(s) {using}; delete them first")
            }
            Change::Move => format!(
                "connection {name:?} is used by static role(s) {using}; its hosts cannot change \
                 while they manage users there: delete them first"
            ),
        }))
    }

    /// How many leases of `mount` have their users made through connection `name`.
    async fn leases_using(&self, mount: &str, name: &str) -> Result<u64, ServerError> {
        let leases = self.store.all_leases().await?;
        Ok(leases
            .iter()
            .filter(|lease| lease.mount == mount && lease.role.db_name == name)
            .count() as u64)
    }

    /// Names of the static roles of connection `name` in `mount`.
    pub async fn static_roles_using(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<Vec<String>, ServerError> {
        Ok(self
            .store
            .static_roles()
            .await?
            .into_iter()
            .filter(|role| role.mount == mount && role.def.db_name == name)
            .map(|role| role.def.name)
            .collect())
    }

    /// Deletes an API connection (missing is not an error), refused (409) while leases or
    /// static roles use it: their revocation needs it. (The store refuses it too should a
    /// lease be recorded meanwhile.)
    pub async fn delete_connection(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        let _serial = self.writes.lock().await;
        self.refuse_while_used(mount, name, Change::Delete).await?;
        self.commit(
            mount,
            |m| ensure_writable(&m.connections, "connection", name),
            async {
                let outcome = self.store.delete_connection(mount, name).await?;
                done_unless_refused(mount, name, Change::Delete, outcome)
            },
            |m| {
                m.connections.remove(name);
                m.targets.remove(name);
            },
        )
        .await
    }
}

/// The refusal (409) of an issuance whose connection `name` was deleted or rewritten
/// (through this replica or another) while its user was being made.
pub fn changed_while_issuing(name: &str) -> ServerError {
    ServerError::Conflict(format!(
        "connection {name:?} was deleted or rewritten while this credential was being issued; \
         nothing was created: ask again"
    ))
}

/// The refusal (409) to `change` connection `name` of `mount`, which `leases` leases use.
fn used_by_leases(mount: &str, name: &str, change: Change, leases: u64) -> ServerError {
    ServerError::Conflict(match change {
        Change::Delete => format!(
            "connection {name:?} is used by {leases} lease(s); revoke them first \
             (sys/leases/revoke-prefix/{mount}/creds/<role>) or let them expire"
        ),
        Change::Move => format!(
            "connection {name:?} is used by {leases} lease(s) whose users live on its \
             current server; its hosts cannot change until they are revoked \
             (sys/leases/revoke-prefix/{mount}/creds/<role>) or expire"
        ),
    })
}

/// Fails with the refusal (409) to `change` connection `name` of `mount` when the store
/// found leases using it (recorded through another replica since this one counted them), or
/// found it changed through another replica since this one read it.
fn done_unless_refused(
    mount: &str,
    name: &str,
    change: Change,
    outcome: ConnectionChange,
) -> Result<(), ServerError> {
    match outcome {
        ConnectionChange::UsedBy(leases) => Err(used_by_leases(mount, name, change, leases)),
        ConnectionChange::Stale => Err(ServerError::Conflict(format!(
            "connection {name:?} was changed through another replica since this one read it; \
             read it again and retry"
        ))),
        ConnectionChange::Changed | ConnectionChange::Missing => Ok(()),
    }
}

/// The definition an API write makes of connection `name`: omitted fields keep `previous`'s
/// values; a password inside the URL is taken out (sealed like any other, never shown in it).
fn connection_def(
    name: &str,
    write: ConnectionWrite,
    previous: Option<ConnectionDef>,
) -> Result<ConnectionDef, ServerError> {
    if let Some(plugin) = &write.plugin_name
        && plugin != POSTGRES_PLUGIN
    {
        return Err(ServerError::BadRequest(format!(
            "plugin_name {plugin:?} is not supported; use {POSTGRES_PLUGIN:?}"
        )));
    }
    let missing =
        |field: &str| ServerError::BadRequest(format!("connection {name:?}: {field} is required"));
    let (connection_url, url_password) = match write.connection_url {
        Some(url) => {
            let (url, password) = take_url_password(&url);
            (Some(url), password)
        }
        None => (None, None),
    };
    if url_password.is_some() && write.password.is_some() {
        return Err(ServerError::BadRequest(format!(
            "connection {name:?}: the password is in both connection_url and password; give it once"
        )));
    }
    // Vault trims the entries of a comma-separated list and drops empty ones.
    let allowed_roles = write.allowed_roles.map(|roles| {
        roles
            .iter()
            .map(|role| role.trim())
            .filter(|role| !role.is_empty())
            .map(String::from)
            .collect()
    });
    let previous_field = |field: fn(&ConnectionDef) -> String| previous.as_ref().map(field);
    let def = ConnectionDef {
        name: name.to_string(),
        connection_url: connection_url
            .or_else(|| previous_field(|p| p.connection_url.clone()))
            .ok_or_else(|| missing("connection_url"))?,
        username: write
            .username
            .or_else(|| previous_field(|p| p.username.clone()))
            .ok_or_else(|| missing("username"))?,
        password: match write.password.or(url_password) {
            Some(p) => p,
            None => previous
                .as_ref()
                .map(|p| p.password.clone())
                .ok_or_else(|| missing("password"))?,
        },
        allowed_roles: allowed_roles
            .or_else(|| previous.as_ref().map(|p| p.allowed_roles.clone()))
            .unwrap_or_default(),
        verify_connection: write.verify_connection.unwrap_or(true),
        auth: AdminAuth::Password,
    };
    def.validate()?;
    Ok(def)
}
