//! The server's YAML configuration and its `PGWARDEN_*` environment overrides.

use pgwarden_core::{AdminAuth, ConnectionDef, CoreError, RoleSpec, Ttl};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

/// Why the configuration cannot be used; each message names the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown fields.
    #[error("config file {path}: {}", for_users(source))]
    Parse {
        /// The file.
        path: String,
        /// The parser's error, with line and column.
        source: Box<serde_saphyr::Error>,
    },
    /// The seal key is unusable.
    #[error("config: {0}")]
    Seal(#[from] crate::seal::SealError),
    /// The policy file cannot be used.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A field's value is not usable.
    #[error("config: {0}")]
    Invalid(String),
    /// A role or connection definition is invalid.
    #[error("config: mount {mount:?}: {source}")]
    Definition {
        /// The mount it is in.
        mount: String,
        /// What is wrong.
        source: CoreError,
    },
    /// A connection's URL or TLS settings cannot be used.
    #[error("config: mount {mount:?}: connection {name:?}: {source}")]
    Connection {
        /// The mount it is in.
        mount: String,
        /// The connection.
        name: String,
        /// What is wrong.
        source: pgwarden_engine::EngineError,
    },
    /// A connection password kept in the state store cannot be opened.
    #[error("config: mount {mount:?}: stored connection {name:?}: {source}")]
    Sealed {
        /// The mount it is in.
        mount: String,
        /// The connection.
        name: String,
        /// Why.
        source: crate::seal::SealError,
    },
    /// The roles and connections written through the API could not be read.
    #[error("config: reading definitions from the state store: {0}")]
    Store(#[source] pgwarden_store::StoreError),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Directory of the SQLite state file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where the state lives: SQLite in `data_dir` (the default: one process), or a
    /// PostgreSQL database that several replicas share.
    #[serde(default)]
    pub state: StateConfig,
    /// File holding the root token (`PGWARDEN_ROOT_TOKEN` wins).
    #[serde(default)]
    pub root_token_file: Option<PathBuf>,
    /// File holding the 64-hex-digit key that seals stored secrets (`PGWARDEN_SEAL_KEY` wins).
    #[serde(default)]
    pub seal_key_file: Option<PathBuf>,
    /// Secrets-engine mounts by name.
    #[serde(default)]
    pub mounts: BTreeMap<String, MountConfig>,
    /// Auth mounts by name (`/v1/auth/<name>/login`).
    #[serde(default)]
    pub auth: BTreeMap<String, AuthConfig>,
    /// The policy file (hot-reloaded); without one only the root token can get credentials.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// Vault KV v1 mounts served read-only: mount → path → key/value data.
    #[serde(default)]
    pub settings: BTreeMap<String, BTreeMap<String, BTreeMap<String, serde_json::Value>>>,
    /// Limits on HTTP connections.
    #[serde(default)]
    pub http: HttpConfig,
    /// The sweep for users no lease names.
    #[serde(default)]
    pub orphans: OrphanConfig,
    /// Access requests.
    #[serde(default)]
    pub requests: RequestsConfig,
    /// The audit log (always in the state store) and its optional file copy.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The root token, resolved from the environment or `root_token_file` by [`Config::resolve_secrets`].
    #[serde(skip)]
    pub root_token: Option<SecretString>,
    /// The seal key, resolved by [`Config::resolve_secrets`].
    #[serde(skip)]
    pub seal_key: Option<SecretString>,
}

/// The state store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// A PostgreSQL database shared by every replica; without it, SQLite in `data_dir`.
    #[serde(default)]
    pub postgresql: Option<PostgresStateConfig>,
}

/// The shared PostgreSQL state database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStateConfig {
    /// libpq URL (`postgresql://user@host:5432/db?sslmode=verify-full&sslrootcert=…`); TLS
    /// options as for connections. Its password may be `{{password}}`, filled from
    /// `password_env`.
    pub url: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// Limits on the API's HTTP connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections served at once; more wait to be accepted (default 512).
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// API requests worked on at once, counting those whose client hung up (their work goes
    /// on, so that no lease is left half-done); more wait for their turn while their client
    /// waits (default 128).
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: NonZeroUsize,
    /// Of those turns, the most that requests for one database connection's credentials
    /// (issue, renew, revoke) hold at once; more wait for that connection's share without
    /// holding a turn, so that a slow or unreachable database cannot hold up the others
    /// (default a quarter of `max_requests_in_flight`, rounded up; at most all of them). See
    /// [`HttpConfig::database_share`].
    #[serde(default)]
    pub max_requests_per_database: Option<NonZeroUsize>,
    /// Time a client has to finish its TLS handshake (with `tls`), to send its request
    /// headers, or to start its next request on an idle kept-alive connection, before it is
    /// closed (default 10s).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Ttl,
    /// Serve the API over TLS with this certificate chain and key (PEM files, taken again
    /// when they change); without it the API is plain HTTP.
    #[serde(default)]
    pub tls: Option<pgwarden_tls::TlsFiles>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: default_max_connections(),
            max_requests_in_flight: default_max_requests_in_flight(),
            max_requests_per_database: None,
            tls: None,
            header_read_timeout: default_header_read_timeout(),
        }
    }
}

/// The YAML parser's error as a user can act on it: without its advice to the program that
/// called it (a key given twice is refused; the parser suggests an option of its own).
fn for_users(error: &serde_saphyr::Error) -> String {
    error
        .to_string()
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}

impl HttpConfig {
    /// The turns one database's requests may hold: `max_requests_per_database`, else a
    /// quarter of `max_requests_in_flight` rounded up (32 of the default 128: twice a
    /// database's pool, and it takes four slow databases to hold every turn). More than
    /// there are turns is refused: it could only mean a share that protects nothing.
    pub fn database_share(&self) -> Result<usize, ConfigError> {
        let turns = self.max_requests_in_flight.get();
        match self.max_requests_per_database {
            None => Ok(turns.div_ceil(4)),
            Some(share) if share.get() <= turns => Ok(share.get()),
            Some(share) => Err(ConfigError::Invalid(format!(
                "http.max_requests_per_database ({share}) is more than \
                 http.max_requests_in_flight ({turns}): one database's requests can hold at \
                 most every turn"
            ))),
        }
    }
}

fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(512).unwrap_or(NonZeroUsize::MIN)
}

/// Eight times a target's pool of connections: a burst queues for turns, where a client that
/// gives up leaves nothing, rather than for a database connection, where its work runs on.
fn default_max_requests_in_flight() -> NonZeroUsize {
    NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN)
}

fn default_header_read_timeout() -> Ttl {
    Ttl::from_secs(10)
}

/// The orphan sweep: users in a target that look like pgwarden's (`v-…-<20 random>-<time>`)
/// but that no lease names, after a crash, a restore of the state from backup, or a bug.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrphanConfig {
    /// How often every connection is checked for users no lease names (default 5m; at least
    /// 1s).
    #[serde(default = "default_orphan_interval")]
    pub interval: Ttl,
    /// How long an orphan is reported before it is dropped (default 1h).
    #[serde(default = "default_orphan_grace")]
    pub grace: Ttl,
    /// How often every connection is checked for sessions whose role no longer exists, which
    /// are ended (default 10s; at least 1s).
    #[serde(default = "default_sessions_interval")]
    pub sessions_interval: Ttl,
    /// Drop orphans after the grace period (default true); false only reports them.
    #[serde(default = "yes")]
    pub drop: bool,
}

impl Default for OrphanConfig {
    fn default() -> Self {
        OrphanConfig {
            interval: default_orphan_interval(),
            grace: default_orphan_grace(),
            sessions_interval: default_sessions_interval(),
            drop: true,
        }
    }
}

/// Access requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsConfig {
    /// How long a request waits for its approvals before it expires (default 24h).
    #[serde(default = "default_pending_ttl")]
    pub pending_ttl: Ttl,
    /// How long a finished request (decided, withdrawn or expired, its credential ended) is
    /// kept before it is forgotten (default 30d); the audit log keeps its story.
    #[serde(default = "default_keep_finished")]
    pub keep_finished: Ttl,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            pending_ttl: default_pending_ttl(),
            keep_finished: default_keep_finished(),
        }
    }
}

fn default_pending_ttl() -> Ttl {
    Ttl::from_secs(24 * 3600)
}

fn default_keep_finished() -> Ttl {
    Ttl::from_secs(30 * 24 * 3600)
}

/// The audit log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A file every record is also appended to, one JSON object per line (created 0600), for
    /// shipping to a log system; the chain in the state store stays the record of truth.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

fn default_orphan_interval() -> Ttl {
    Ttl::from_secs(300)
}

fn default_orphan_grace() -> Ttl {
    Ttl::from_secs(3600)
}

fn default_sessions_interval() -> Ttl {
    Ttl::from_secs(10)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8200))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./pgwarden-data")
}

/// An auth mount: Kubernetes service accounts or OIDC/JWT for people.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AuthConfig {
    /// Kubernetes service-account tokens.
    Kubernetes(KubernetesConfig),
    /// OIDC/JWT tokens of people.
    Jwt(JwtConfig),
}

/// Where signing keys come from: exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// A JWKS file (re-read when an unknown key id appears).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find the JWKS through `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub oidc_discovery: bool,
}

/// A Kubernetes auth mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The cluster's service-account issuer (`iss`); checked when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Signing keys (refused with `token_review`).
    #[serde(default)]
    pub keys: KeysConfig,
    /// Accepted audiences (any one suffices); empty skips the check, or with `token_review`
    /// accepts tokens for the API server itself.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept legacy secret-based tokens (`iss: kubernetes/serviceaccount`).
    #[serde(default)]
    pub allow_legacy_tokens: bool,
    /// Validate through the API server's TokenReview instead of locally.
    #[serde(default)]
    pub token_review: Option<TokenReviewConfig>,
    /// Put before each caller's policy subjects as `<prefix>/`: needed by all but one of
    /// several Kubernetes mounts (clusters), whose service accounts would otherwise share
    /// subjects.
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// Login roles.
    #[serde(default)]
    pub roles: std::collections::HashMap<String, pgwarden_auth::KubernetesRole>,
}

/// How to reach the API server for TokenReview.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewConfig {
    /// `https://<api server>`.
    pub host: String,
    /// File with the reviewer's service-account token.
    pub reviewer_token_file: PathBuf,
    /// PEM file of the cluster's CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// An OIDC/JWT auth mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The identity provider's issuer (`iss`); checked when set, and the discovery base.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Signing keys.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Accepted audiences; empty skips the check.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Put before each caller's policy subjects as `<prefix>/`: needed by all but one of
    /// several OIDC/JWT mounts (identity providers), whose people would otherwise share
    /// subjects.
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// Login roles.
    #[serde(default)]
    pub roles: std::collections::HashMap<String, pgwarden_auth::JwtRole>,
}

/// One database secrets-engine mount.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Connections by name (what roles call `db_name`).
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionConfig>,
    /// Dynamic roles by name.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSpec>,
    /// Static roles by name: existing users whose password pgwarden owns and rotates.
    #[serde(default)]
    pub static_roles: BTreeMap<String, pgwarden_core::static_role::StaticRoleSpec>,
}

/// A connection as written in the file; the password comes from exactly one of three places.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Accepted for Vault compatibility; must be `postgresql-database-plugin` when given.
    #[serde(default)]
    pub plugin_name: Option<String>,
    /// `postgresql://{{username}}:{{password}}@host:port/db?sslmode=…`
    pub connection_url: String,
    /// Administrative user.
    pub username: String,
    /// The password inline (prefer `password_env` or `password_file`).
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Role globs allowed to use this connection; empty allows none.
    #[serde(default)]
    pub allowed_roles: Vec<String>,
    /// Connect once at start-up to check the settings.
    #[serde(default = "yes")]
    pub verify_connection: bool,
    /// How the administrative user signs in: `password` (the default) or `rds_iam`.
    #[serde(default)]
    pub auth: AdminAuthKind,
    /// The region `auth: rds_iam` signs tokens for; default: the AWS environment's.
    #[serde(default)]
    pub aws_region: Option<String>,
}

/// The `auth` of a connection in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAuthKind {
    /// One of `password`, `password_env` or `password_file`.
    #[default]
    Password,
    /// An RDS IAM auth token signed with the AWS credentials of pgwarden's environment
    /// (environment keys, web identity, profiles); no password is configured.
    RdsIam,
}

fn yes() -> bool {
    true
}

/// Reads a secret from a file, dropping one trailing newline.
pub(crate) fn read_secret_file(path: &Path, what: &str) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{what} {}: {e}", path.display())))?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// A non-empty environment variable.
fn env_secret(name: &str) -> Option<SecretString> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

/// Shortest root token accepted.
const MIN_ROOT_TOKEN_BYTES: usize = 16;

impl Config {
    /// The root token, checked to be present and long enough.
    pub fn checked_root_token(&self) -> Result<SecretString, ConfigError> {
        let token = self.root_token.clone().ok_or_else(|| {
            ConfigError::Invalid("no root token: set PGWARDEN_ROOT_TOKEN or root_token_file".into())
        })?;
        if token.expose_secret().len() < MIN_ROOT_TOKEN_BYTES {
            return Err(ConfigError::Invalid(format!(
                "the root token must be at least {MIN_ROOT_TOKEN_BYTES} characters"
            )));
        }
        Ok(token)
    }

    /// Reads `path`, applies environment overrides and resolves secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::read(path)?;
        config.resolve_secrets()?;
        Ok(config)
    }

    /// Reads `path` and applies environment overrides, leaving the root token and the seal key
    /// unread: for work that needs neither (`pgwarden check`).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        config.apply_env()?;
        Ok(config)
    }

    /// Parses YAML text (no environment, no secrets).
    pub fn parse(text: &str) -> Result<Config, Box<serde_saphyr::Error>> {
        serde_saphyr::from_str(if text.trim().is_empty() { "{}" } else { text }).map_err(Box::new)
    }

    /// Applies `PGWARDEN_LISTEN` and `PGWARDEN_DATA_DIR`.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Ok(listen) = std::env::var("PGWARDEN_LISTEN") {
            self.listen = listen
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("PGWARDEN_LISTEN {listen:?}: {e}")))?;
        }
        if let Some(dir) = std::env::var_os("PGWARDEN_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        Ok(())
    }

    /// Resolves the root token (`PGWARDEN_ROOT_TOKEN`, else `root_token_file`) and the seal key
    /// (`PGWARDEN_SEAL_KEY`, else `seal_key_file`), keeping values already set.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if self.root_token.is_none() {
            self.root_token = match (env_secret("PGWARDEN_ROOT_TOKEN"), &self.root_token_file) {
                (Some(token), _) => Some(token),
                (None, Some(file)) => Some(read_secret_file(file, "root_token_file")?),
                (None, None) => None,
            };
        }
        if self.seal_key.is_none() {
            self.seal_key = match (env_secret("PGWARDEN_SEAL_KEY"), &self.seal_key_file) {
                (Some(key), _) => Some(key),
                (None, Some(file)) => Some(read_secret_file(file, "seal_key_file")?),
                (None, None) => None,
            };
        }
        Ok(())
    }
}

impl ConnectionConfig {
    /// The validated definition named `name`, with its password read from wherever it lives.
    pub fn to_def(&self, mount: &str, name: &str) -> Result<ConnectionDef, ConfigError> {
        let invalid = |reason: String| ConfigError::Definition {
            mount: mount.to_string(),
            source: CoreError::InvalidConnection {
                connection: name.to_string(),
                reason,
            },
        };
        if let Some(plugin) = &self.plugin_name
            && plugin != pgwarden_core::connection::POSTGRES_PLUGIN
        {
            return Err(invalid(format!(
                "plugin_name {plugin:?} is not supported; use {:?}",
                pgwarden_core::connection::POSTGRES_PLUGIN
            )));
        }
        let configured = match (&self.password, &self.password_env, &self.password_file) {
            (None, None, None) => None,
            (Some(p), None, None) => Some(p.clone()),
            (None, Some(var), None) => Some(env_secret(var).ok_or_else(|| {
                invalid(format!(
                    "password_env {var:?} is not set in the environment"
                ))
            })?),
            (None, None, Some(file)) => {
                Some(read_secret_file(file, "password_file").map_err(|e| invalid(e.to_string()))?)
            }
            _ => {
                return Err(invalid(
                    "set only one of password, password_env or password_file".into(),
                ));
            }
        };
        let (password, auth) = match (self.auth, configured) {
            (AdminAuthKind::Password, Some(password)) => {
                if self.aws_region.is_some() {
                    return Err(invalid("aws_region applies only to auth: rds_iam".into()));
                }
                (password, AdminAuth::Password)
            }
            (AdminAuthKind::Password, None) => {
                return Err(invalid(
                    "set one of password, password_env or password_file (or auth: rds_iam)".into(),
                ));
            }
            (AdminAuthKind::RdsIam, None) => (
                SecretString::from(""),
                AdminAuth::RdsIam {
                    region: self.aws_region.clone(),
                },
            ),
            (AdminAuthKind::RdsIam, Some(_)) => {
                return Err(invalid(
                    "auth rds_iam signs in with a token, not a password: remove password, \
                     password_env and password_file"
                        .into(),
                ));
            }
        };
        let def = ConnectionDef {
            name: name.to_string(),
            connection_url: self.connection_url.clone(),
            username: self.username.clone(),
            password,
            allowed_roles: self.allowed_roles.clone(),
            verify_connection: self.verify_connection,
            auth,
        };
        def.validate().map_err(|source| ConfigError::Definition {
            mount: mount.to_string(),
            source,
        })?;
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
listen: "127.0.0.1:8201"
data_dir: "/tmp/x"
mounts:
  database:
    connections:
      appdb:
        connection_url: "postgresql://{{username}}:{{password}}@127.0.0.1:5432/appdb?sslmode=disable"
        username: pgwarden_admin
        password: secret
        allowed_roles: ["appdb-*"]
    roles:
      appdb-readonly: { db_name: appdb, preset: readonly, default_ttl: 1h, max_ttl: 24h }
      custom-reader:
        db_name: appdb
        creation_statements:
          - CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
        default_ttl: 5m
        max_ttl: 1h
"#;

    #[test]
    fn parses_the_documented_shape() {
        let config = Config::parse(SAMPLE).unwrap();
        assert_eq!(config.listen.port(), 8201);
        let mount = &config.mounts["database"];
        let conn = mount.connections["appdb"]
            .to_def("database", "appdb")
            .unwrap();
        assert!(conn.allows_role("appdb-readonly"));
        assert!(!conn.allows_role("other"));
        let role = mount.roles["custom-reader"]
            .clone()
            .into_def("custom-reader")
            .unwrap();
        assert_eq!(role.default_ttl.as_secs(), 300);
    }

    #[test]
    fn parses_auth_mounts() {
        let config = Config::parse(
            r#"
auth:
  kubernetes:
    type: kubernetes
    issuer: https://kubernetes.default.svc
    keys: { oidc_discovery: true }
    audiences: [pgwarden]
    roles:
      team-a: { bound_service_account_names: ["*"], bound_service_account_namespaces: [team-a], token_ttl: 1h }
  people:
    type: jwt
    keys: { jwks_url: "https://idp/jwks" }
    roles:
      dba: { user_claim: email, groups_claim: groups }
policy_file: /etc/pgwarden/policy.yaml
settings:
  kv:
    team-a/appdb: { host: db, port: 5432, credentials: database/creds/appdb-user }
"#,
        )
        .unwrap();
        assert!(
            matches!(config.auth["kubernetes"], AuthConfig::Kubernetes(ref k) if k.keys.oidc_discovery)
        );
        assert!(
            matches!(config.auth["people"], AuthConfig::Jwt(ref j) if j.roles.contains_key("dba"))
        );
        assert_eq!(
            config.settings["kv"]["team-a/appdb"]["port"],
            serde_json::json!(5432)
        );
        let err = Config::parse("auth:\n  k:\n    type: ldap\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ldap"), "{err}");
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.data_dir, PathBuf::from("./pgwarden-data"));
        assert!(config.mounts.is_empty());
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = Config::parse("listen: \"127.0.0.1:1\"\nlisten_adress: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_adress"), "{err}");
    }

    #[test]
    fn a_key_given_twice_names_the_line_and_nothing_a_user_cannot_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("twice.yaml");
        std::fs::write(&file, "http: { max_connections: 5 }\nhttp: { tls: null }\n").unwrap();
        let error = Config::load(&file).unwrap_err().to_string();
        assert_eq!(
            error.lines().next(),
            Some(
                format!(
                    "config file {}: error: line 2 column 1: duplicate mapping key: http",
                    file.display()
                )
                .as_str()
            ),
            "{error}"
        );
        assert!(!error.contains("DuplicateKeyPolicy"), "{error}");
    }

    #[test]
    fn http_limits_of_zero_are_refused() {
        for field in [
            "max_connections",
            "max_requests_in_flight",
            "max_requests_per_database",
        ] {
            let err = Config::parse(&format!("http: {{ {field}: 0 }}\n"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err.lines().next(),
                Some(
                    "error: line 1 column 9: invalid value: integer `0`, expected a nonzero usize"
                ),
                "{err}"
            );
        }
        let http = Config::parse("").unwrap().http;
        assert_eq!(
            (
                http.max_connections.get(),
                http.max_requests_in_flight.get(),
                http.database_share().unwrap()
            ),
            (512, 128, 32)
        );
    }

    #[test]
    fn a_database_share_defaults_to_a_quarter_of_the_turns_and_cannot_exceed_them() {
        let share = |yaml: &str| Config::parse(yaml).unwrap().http.database_share();
        assert_eq!(share("http: { max_requests_in_flight: 10 }").unwrap(), 3);
        assert_eq!(share("http: { max_requests_in_flight: 1 }").unwrap(), 1);
        assert_eq!(
            share("http: { max_requests_in_flight: 8, max_requests_per_database: 8 }").unwrap(),
            8
        );
        assert_eq!(
            share("http: { max_requests_in_flight: 8, max_requests_per_database: 9 }")
                .unwrap_err()
                .to_string(),
            "config: http.max_requests_per_database (9) is more than http.max_requests_in_flight (8): \
             one database's requests can hold at most every turn"
        );
    }

    #[test]
    fn a_connection_needs_exactly_one_password_source() {
        let mut conn =
            Config::parse(SAMPLE).unwrap().mounts["database"].connections["appdb"].clone();
        conn.password_env = Some("X".into());
        assert_eq!(
            conn.to_def("database", "appdb").unwrap_err().to_string(),
            "config: mount \"database\": connection \"appdb\": set only one of password, password_env or password_file"
        );
        conn.password = None;
        conn.password_env = Some("PGWARDEN_TEST_SURELY_UNSET".into());
        assert_eq!(
            conn.to_def("database", "appdb").unwrap_err().to_string(),
            "config: mount \"database\": connection \"appdb\": password_env \"PGWARDEN_TEST_SURELY_UNSET\" is not set in the environment"
        );
    }

    #[test]
    fn rds_iam_takes_a_region_and_no_password() {
        let mut conn =
            Config::parse(SAMPLE).unwrap().mounts["database"].connections["appdb"].clone();
        let error =
            |conn: &ConnectionConfig| conn.to_def("database", "appdb").unwrap_err().to_string();
        conn.aws_region = Some("eu-west-1".into());
        assert_eq!(
            error(&conn),
            "config: mount \"database\": connection \"appdb\": aws_region applies only to auth: rds_iam"
        );
        conn.auth = AdminAuthKind::RdsIam;
        assert_eq!(
            error(&conn),
            "config: mount \"database\": connection \"appdb\": auth rds_iam signs in with a token, not a password: remove password, password_env and password_file"
        );
        conn.password = None;
        let def = conn.to_def("database", "appdb").unwrap();
        assert_eq!(
            def.auth,
            AdminAuth::RdsIam {
                region: Some("eu-west-1".into())
            }
        );
        conn.auth = AdminAuthKind::Password;
        conn.aws_region = None;
        assert_eq!(
            error(&conn),
            "config: mount \"database\": connection \"appdb\": set one of password, password_env or password_file (or auth: rds_iam)"
        );
    }
}
