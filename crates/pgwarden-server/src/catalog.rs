//! Mounts with their connections and roles: those from the configuration file (read-only
//! through the API) and those written through the API (persisted in the store, passwords sealed).

use crate::config::{Config, ConfigError};
use crate::error::ServerError;
use crate::seal::Sealer;
use pgwarden_core::connection::take_url_password;
use pgwarden_core::role::validate_name;
use pgwarden_core::{ConnectionDef, Preset, RoleDef, RoleKind, RoleSpec};
use pgwarden_engine::Target;
use pgwarden_store::{Store, StoredConnection};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Where a definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Api,
}

struct ConnectionEntry {
    def: ConnectionDef,
    source: Source,
    target: Arc<Target>,
}

struct RoleEntry {
    def: RoleDef,
    source: Source,
}

#[derive(Default)]
struct Mount {
    connections: BTreeMap<String, ConnectionEntry>,
    roles: BTreeMap<String, RoleEntry>,
}

/// A connection write through the API, in Vault's shape.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ConnectionWrite {
    /// Must be `postgresql-database-plugin`.
    #[serde(default)]
    pub plugin_name: Option<String>,
    /// The URL, with optional `{{username}}`/`{{password}}`.
    #[serde(default)]
    pub connection_url: Option<String>,
    /// Administrative user.
    #[serde(default)]
    pub username: Option<String>,
    /// Administrative password; kept from the previous version when omitted on update.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Role globs (a list, or a comma-separated string as Vault accepts).
    #[serde(default, deserialize_with = "comma_list")]
    pub allowed_roles: Option<Vec<String>>,
    /// Connect before saving (default true).
    #[serde(default)]
    pub verify_connection: Option<bool>,
}

fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        List(Vec<String>),
    }
    let raw: Option<Raw> = serde::Deserialize::deserialize(d)?;
    Ok(raw.map(|raw| match raw {
        Raw::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Raw::List(list) => list,
    }))
}

/// All mounts and their definitions.
pub struct Catalog {
    mounts: RwLock<BTreeMap<String, Mount>>,
    store: Arc<dyn Store>,
    sealer: Option<Sealer>,
}

fn seal_context(mount: &str, name: &str) -> String {
    format!("connection\0{mount}\0{name}")
}

fn no_mount(mount: &str) -> ServerError {
    ServerError::NotFound(format!(
        "no mount {mount:?}: mounts are defined in the configuration file"
    ))
}

/// A catalog entry that knows where it was defined.
trait Defined {
    fn source(&self) -> Source;
}

impl Defined for RoleEntry {
    fn source(&self) -> Source {
        self.source
    }
}

impl Defined for ConnectionEntry {
    fn source(&self) -> Source {
        self.source
    }
}

/// Refuses to change `name` through the API when the configuration file defines it.
fn ensure_writable<E: Defined>(
    entries: &BTreeMap<String, E>,
    kind: &str,
    name: &str,
) -> Result<(), ServerError> {
    match entries.get(name) {
        Some(entry) if entry.source() == Source::File => Err(read_only(kind, name)),
        _ => Ok(()),
    }
}

fn read_only(kind: &str, name: &str) -> ServerError {
    ServerError::BadRequest(format!(
        "{kind} {name:?} is defined in the configuration file and is read-only through the API"
    ))
}

impl Catalog {
    /// Builds the catalog from the file's mounts plus what the store holds.
    pub fn load(
        config: &Config,
        store: Arc<dyn Store>,
        sealer: Option<Sealer>,
    ) -> Result<Catalog, ConfigError> {
        let mut mounts = BTreeMap::new();
        for (mount_name, mount_config) in &config.mounts {
            validate_name(mount_name).map_err(|source| ConfigError::Definition {
                mount: mount_name.clone(),
                source,
            })?;
            let mut mount = Mount::default();
            for (name, conn) in &mount_config.connections {
                let def = conn.to_def(mount_name, name)?;
                let target = Target::new(&def).map_err(|e| ConfigError::Invalid(e.to_string()))?;
                mount.connections.insert(
                    name.clone(),
                    ConnectionEntry {
                        def,
                        source: Source::File,
                        target: Arc::new(target),
                    },
                );
            }
            for (name, spec) in &mount_config.roles {
                let def =
                    spec.clone()
                        .into_def(name)
                        .map_err(|source| ConfigError::Definition {
                            mount: mount_name.clone(),
                            source,
                        })?;
                mount.roles.insert(
                    name.clone(),
                    RoleEntry {
                        def,
                        source: Source::File,
                    },
                );
            }
            mounts.insert(mount_name.clone(), mount);
        }
        let stored = |e: pgwarden_store::StoreError| ConfigError::Invalid(e.to_string());
        for (mount_name, def) in store.roles().map_err(stored)? {
            if let Some(mount) = mounts.get_mut(&mount_name)
                && !mount.roles.contains_key(&def.name)
            {
                mount.roles.insert(
                    def.name.clone(),
                    RoleEntry {
                        def,
                        source: Source::Api,
                    },
                );
            }
        }
        for (mount_name, conn) in store.connections().map_err(stored)? {
            let Some(mount) = mounts.get_mut(&mount_name) else {
                continue;
            };
            if mount.connections.contains_key(&conn.name) {
                continue;
            }
            let sealer = sealer.as_ref().ok_or_else(|| {
                ConfigError::Invalid(
                    "the state store holds sealed connection passwords but no seal key is configured: set seal_key_file or PGWARDEN_SEAL_KEY".into(),
                )
            })?;
            let password = sealer
                .open(
                    &conn.sealed_password,
                    &seal_context(&mount_name, &conn.name),
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            let def = ConnectionDef {
                name: conn.name.clone(),
                connection_url: conn.connection_url,
                username: conn.username,
                password,
                allowed_roles: conn.allowed_roles,
                verify_connection: conn.verify_connection,
            };
            let target = Target::new(&def).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            mount.connections.insert(
                conn.name,
                ConnectionEntry {
                    def,
                    source: Source::Api,
                    target: Arc::new(target),
                },
            );
        }
        Ok(Catalog {
            mounts: RwLock::new(mounts),
            store,
            sealer,
        })
    }

    fn read<T>(
        &self,
        mount: &str,
        f: impl FnOnce(&Mount) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mounts = self.mounts.read().unwrap_or_else(|p| p.into_inner());
        f(mounts.get(mount).ok_or_else(|| no_mount(mount))?)
    }

    fn write<T>(
        &self,
        mount: &str,
        f: impl FnOnce(&mut Mount) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let mut mounts = self.mounts.write().unwrap_or_else(|p| p.into_inner());
        f(mounts.get_mut(mount).ok_or_else(|| no_mount(mount))?)
    }

    /// True when `mount` exists.
    pub fn has_mount(&self, mount: &str) -> bool {
        self.read(mount, |_| Ok(())).is_ok()
    }

    /// The file-defined connections to check at start-up, as `mount/name` and target.
    pub fn targets_to_verify(&self) -> Vec<(String, Arc<Target>)> {
        self.targets_where(|c| c.def.verify_connection)
    }

    /// Every connection, as `mount/name` and target.
    pub fn targets(&self) -> Vec<(String, Arc<Target>)> {
        self.targets_where(|_| true)
    }

    fn targets_where(&self, keep: impl Fn(&ConnectionEntry) -> bool) -> Vec<(String, Arc<Target>)> {
        let mounts = self.mounts.read().unwrap_or_else(|p| p.into_inner());
        mounts
            .iter()
            .flat_map(|(m, mount)| {
                mount
                    .connections
                    .values()
                    .filter(|c| keep(c))
                    .map(move |c| (format!("{m}/{}", c.def.name), c.target.clone()))
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

    /// The target a role's users are created in, if its connection allows the role.
    pub fn target_for_role(&self, mount: &str, role: &RoleDef) -> Result<Arc<Target>, ServerError> {
        self.read(mount, |m| {
            let conn = m.connections.get(&role.db_name).ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "role {:?} names connection {:?}, which does not exist in mount {mount:?}",
                    role.name, role.db_name
                ))
            })?;
            if !conn.def.allows_role(&role.name) {
                return Err(ServerError::BadRequest(format!(
                    "role {:?} is not in the allowed_roles of connection {:?}",
                    role.name, role.db_name
                )));
            }
            Ok(conn.target.clone())
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
        self.read(mount, |m| {
            m.connections
                .get(name)
                .map(|c| c.target.clone())
                .ok_or_else(|| {
                    ServerError::NotFound(format!(
                        "connection {name:?} not found in mount {mount:?}"
                    ))
                })
        })
    }

    /// The role as the API shows it.
    pub fn role_spec(&self, mount: &str, name: &str) -> Result<RoleSpec, ServerError> {
        self.role(mount, name).map(|r| r.to_spec())
    }

    /// Names of the roles in `mount`.
    pub fn role_names(&self, mount: &str) -> Result<Vec<String>, ServerError> {
        self.read(mount, |m| Ok(m.roles.keys().cloned().collect()))
    }

    /// Creates or replaces an API role.
    pub fn put_role(&self, mount: &str, name: &str, spec: RoleSpec) -> Result<(), ServerError> {
        let def = spec.into_def(name)?;
        self.write(mount, |m| {
            ensure_writable(&m.roles, "role", name)?;
            self.store.put_role(mount, &def)?;
            m.roles.insert(
                name.to_string(),
                RoleEntry {
                    def,
                    source: Source::Api,
                },
            );
            Ok(())
        })
    }

    /// Deletes an API role (a missing role is not an error, as in Vault).
    pub fn delete_role(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        self.write(mount, |m| {
            ensure_writable(&m.roles, "role", name)?;
            self.store.delete_role(mount, name)?;
            m.roles.remove(name);
            Ok(())
        })
    }

    /// The connection as the API shows it (never the password).
    pub fn connection_info(
        &self,
        mount: &str,
        name: &str,
    ) -> Result<serde_json::Value, ServerError> {
        self.read(mount, |m| {
            let c = m.connections.get(name).ok_or_else(|| {
                ServerError::NotFound(format!("connection {name:?} not found in mount {mount:?}"))
            })?;
            Ok(serde_json::json!({
                "plugin_name": pgwarden_core::connection::POSTGRES_PLUGIN,
                "connection_details": {
                    "connection_url": take_url_password(&c.def.connection_url).0,
                    "username": c.def.username,
                },
                "allowed_roles": c.def.allowed_roles,
                "verify_connection": c.def.verify_connection,
                "password_policy": "",
                "root_credentials_rotate_statements": [],
                "source": match c.source { Source::File => "file", Source::Api => "api" },
            }))
        })
    }

    /// Names of the connections in `mount`.
    pub fn connection_names(&self, mount: &str) -> Result<Vec<String>, ServerError> {
        self.read(mount, |m| Ok(m.connections.keys().cloned().collect()))
    }

    /// Creates or replaces an API connection, checking it first unless asked not to.
    pub async fn put_connection(
        &self,
        mount: &str,
        name: &str,
        write: ConnectionWrite,
    ) -> Result<(), ServerError> {
        validate_name(name)?;
        if let Some(plugin) = &write.plugin_name
            && plugin != pgwarden_core::connection::POSTGRES_PLUGIN
        {
            return Err(ServerError::BadRequest(format!(
                "plugin_name {plugin:?} is not supported; use {:?}",
                pgwarden_core::connection::POSTGRES_PLUGIN
            )));
        }
        let previous = self.read(mount, |m| {
            ensure_writable(&m.connections, "connection", name)?;
            Ok(m.connections.get(name).map(|entry| entry.def.clone()))
        })?;
        let missing = |field: &str| {
            ServerError::BadRequest(format!("connection {name:?}: {field} is required"))
        };
        // A password inside the URL is sealed like any other, never stored or shown in it.
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
        let def = ConnectionDef {
            name: name.to_string(),
            connection_url: connection_url
                .or_else(|| previous.as_ref().map(|p| p.connection_url.clone()))
                .ok_or_else(|| missing("connection_url"))?,
            username: write
                .username
                .or_else(|| previous.as_ref().map(|p| p.username.clone()))
                .ok_or_else(|| missing("username"))?,
            password: match write.password.or(url_password) {
                Some(p) => p,
                None => previous
                    .as_ref()
                    .map(|p| p.password.clone())
                    .ok_or_else(|| missing("password"))?,
            },
            allowed_roles: write
                .allowed_roles
                .or_else(|| previous.as_ref().map(|p| p.allowed_roles.clone()))
                .unwrap_or_default(),
            verify_connection: write.verify_connection.unwrap_or(true),
        };
        def.validate()?;
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            ServerError::BadRequest(
                "no seal key is configured (seal_key_file or PGWARDEN_SEAL_KEY), so connection passwords cannot be stored encrypted".into(),
            )
        })?;
        let target = Target::new(&def)?;
        if def.verify_connection {
            target.verify().await.map_err(|e| {
                ServerError::BadRequest(format!("connection {name:?} failed verification: {e}"))
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
        };
        self.write(mount, |m| {
            self.store.put_connection(mount, &stored)?;
            m.connections.insert(
                name.to_string(),
                ConnectionEntry {
                    def,
                    source: Source::Api,
                    target: Arc::new(target),
                },
            );
            Ok(())
        })
    }

    /// Deletes an API connection (missing is not an error).
    pub fn delete_connection(&self, mount: &str, name: &str) -> Result<(), ServerError> {
        self.write(mount, |m| {
            ensure_writable(&m.connections, "connection", name)?;
            self.store.delete_connection(mount, name)?;
            m.connections.remove(name);
            Ok(())
        })
    }
}
