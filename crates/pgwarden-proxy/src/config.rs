//! The proxy's YAML configuration.

use pgwarden_core::Ttl;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole proxy configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// pgwarden's address (e.g. `http://pgwarden:8200`).
    pub address: String,
    /// A PEM file of the CA certificates to trust, and only those, when `address` is
    /// `https://` with a certificate a private CA signed; else the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TCP address clients connect to; `null` for the Unix socket only.
    #[serde(default = "default_listen")]
    pub listen: Option<SocketAddr>,
    /// Directory of the Unix socket `.s.PGSQL.<port>` (the port `listen` bound, else 5432).
    #[serde(default)]
    pub unix_socket_dir: Option<PathBuf>,
    /// The Unix socket's permissions, in octal (as PostgreSQL's `unix_socket_permissions`).
    #[serde(default = "default_unix_socket_mode", deserialize_with = "octal_mode")]
    pub unix_socket_mode: u32,
    /// How clients prove who they are.
    pub auth: ClientAuth,
    /// The secrets mount of roles named without one in the startup packet's `user`.
    #[serde(default = "default_mount")]
    pub mount: String,
    /// `session`: a server connection for the client's whole session; `transaction`: one per
    /// transaction.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// In transaction pooling, most named prepared statements kept on one server connection
    /// (least recently used closed first); 0 refuses named prepared statements.
    #[serde(default = "default_max_prepared_statements")]
    pub max_prepared_statements: usize,
    /// Most server connections per pool (one pool per identity, role and database).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Most client connections at once; more are refused with `53300`.
    #[serde(default = "default_max_client_conn")]
    pub max_client_conn: usize,
    /// An idle server connection is closed after this long.
    #[serde(default = "default_server_idle_timeout", deserialize_with = "duration")]
    pub server_idle_timeout: Duration,
    /// Longest a client waits for a server connection before it gets `53300`.
    #[serde(default = "default_query_wait_timeout", deserialize_with = "duration")]
    pub query_wait_timeout: Duration,
    /// Longest a client may take from connecting to having authenticated.
    #[serde(
        default = "default_client_login_timeout",
        deserialize_with = "duration"
    )]
    pub client_login_timeout: Duration,
    /// How long a validated token is trusted before pgwarden is asked again.
    #[serde(default = "default_identity_cache", deserialize_with = "duration")]
    pub identity_cache: Duration,
    /// TLS towards clients (answering `SSLRequest`); without it, `SSLRequest` gets `N`.
    #[serde(default)]
    pub tls: Option<pgwarden_tls::TlsFiles>,
    /// How server connections are made.
    #[serde(default)]
    pub upstream: Upstream,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// On SIGTERM, how long open transactions may take to finish.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

/// How clients authenticate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ClientAuth {
    /// The client's password is a service-account token, an OIDC token or a pgwarden token;
    /// the startup packet's `user` names the pgwarden role.
    Identity {
        /// Where a JWT is exchanged for a pgwarden token, tried in order.
        logins: Vec<Login>,
    },
    /// Clients on loopback or the Unix socket are the pod itself: the proxy logs in with the
    /// pod's own service-account token.
    Sidecar {
        /// The login role.
        role: String,
        /// The auth mount.
        #[serde(default = "default_login_mount")]
        mount: String,
        /// The projected service-account token, re-read at every login.
        #[serde(default = "default_token_file")]
        token_file: PathBuf,
    },
}

/// One JWT login: `auth/<mount>/login` with login role `role`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The auth mount (`kubernetes`, `jwt`, …).
    pub mount: String,
    /// The login role.
    pub role: String,
}

/// Session or transaction pooling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection per client session.
    #[default]
    Session,
    /// A server connection per transaction.
    Transaction,
}

/// How server connections are made.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// libpq's `sslmode`: `disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificates (PEM) for `verify-ca`/`verify-full`; the system's roots without it.
    #[serde(default)]
    pub root_cert: Option<PathBuf>,
    /// libpq's `target_session_attrs` over the credential's hosts.
    #[serde(default)]
    pub target_session_attrs: TargetSessionAttrs,
    /// Roles (`<role>` or `<mount>/<role>`, as clients name them) that choose otherwise, e.g.
    /// a read-only role sent to the replicas.
    #[serde(default)]
    pub role_target_session_attrs: BTreeMap<String, TargetSessionAttrs>,
}

impl Upstream {
    /// The `target_session_attrs` of role `role` in secrets mount `mount`.
    pub fn attrs_for(&self, mount: &str, role: &str) -> TargetSessionAttrs {
        let by_role = &self.role_target_session_attrs;
        by_role
            .get(&format!("{mount}/{role}"))
            .or_else(|| by_role.get(role))
            .copied()
            .unwrap_or(self.target_session_attrs)
    }
}

/// libpq's `sslmode`, read as pgwarden reads it for its own connections: the modes that ask
/// for TLS always verify the server (chain and name), and the others never use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// Plain TCP (the password never travels: SCRAM), as pgwarden's connections do.
    #[default]
    Prefer,
    /// TLS, the server's chain and name verified.
    Require,
    /// TLS, the server's chain and name verified.
    VerifyCa,
    /// TLS, the server's chain and name verified.
    VerifyFull,
}

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// The first host that answers.
    #[default]
    Any,
    /// A host that accepts writes (the primary).
    ReadWrite,
    /// A host in read-only mode (a standby).
    ReadOnly,
    /// A standby if one answers, else any host.
    PreferStandby,
}

fn default_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 6432)))
}
fn default_mount() -> String {
    "database".into()
}
fn default_login_mount() -> String {
    "kubernetes".into()
}
fn default_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_max_prepared_statements() -> usize {
    200
}
fn default_pool_size() -> usize {
    20
}
fn default_max_client_conn() -> usize {
    1000
}
fn default_server_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_query_wait_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_client_login_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_identity_cache() -> Duration {
    Duration::from_secs(60)
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9187))
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A duration in the broker's grammar ([`Ttl`]: seconds, `30s`, `5m`, `1h30m`, …).
fn default_unix_socket_mode() -> u32 {
    0o777
}

/// A file mode written in octal, e.g. `"0770"`.
fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unix_socket_mode {text:?} is not a file mode in octal (e.g. \"0770\")"
            ))
        })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ttl::deserialize(d).map(Ttl::as_duration)
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The YAML is not a proxy configuration.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ProxyConfig {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        ProxyConfig::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<ProxyConfig, String> {
        let config: ProxyConfig = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.listen.is_none() && self.unix_socket_dir.is_none() {
            return Err("nothing to listen on: set listen, unix_socket_dir or both".into());
        }
        if self.pool_size == 0 {
            return Err("pool_size must be at least 1".into());
        }
        if self.max_client_conn == 0 {
            return Err("max_client_conn must be at least 1".into());
        }
        if matches!(self.auth, ClientAuth::Sidecar { .. })
            && let Some(addr) = self.listen
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "a sidecar serves its own pod only: listen on loopback (e.g. 127.0.0.1:{}), not {addr}",
                addr.port()
            ));
        }
        if let ClientAuth::Identity { logins } = &self.auth
            && logins.is_empty()
        {
            return Err(
                "auth.identity.logins is empty: name at least one auth mount and login \
                 role (e.g. {mount: kubernetes, role: app})"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = ProxyConfig::parse(
            "address: http://127.0.0.1:8200\nauth: { identity: { logins: [{mount: kubernetes, role: app}] } }\n",
        )
        .unwrap();
        assert_eq!(config.pool_mode, PoolMode::Session);
        assert_eq!(config.pool_size, 20);
        assert_eq!(config.unix_socket_mode, 0o777);
        assert_eq!(config.listen, default_listen());
        assert_eq!(config.upstream.sslmode, SslMode::Prefer);
        for (text, error) in [
            (
                "address: x\nauth: { identity: { logins: [] } }\n",
                "auth.identity.logins is empty: name at least one auth mount and login role (e.g. {mount: kubernetes, role: app})",
            ),
            (
                "address: x\nlisten: null\nauth: { sidecar: { role: app } }\n",
                "nothing to listen on: set listen, unix_socket_dir or both",
            ),
            (
                "address: x\npool_size: 0\nauth: { sidecar: { role: app } }\n",
                "pool_size must be at least 1",
            ),
        ] {
            assert_eq!(ProxyConfig::parse(text).unwrap_err(), error);
        }
        let mode = ProxyConfig::parse(
            "address: x\nunix_socket_mode: \"0999\"\nauth: { sidecar: { role: app } }\n",
        )
        .unwrap_err();
        assert_eq!(
            mode.lines().next(),
            Some(
                "error: line 2 column 19: unix_socket_mode \"0999\" is not a file mode in octal \
                 (e.g. \"0770\")"
            )
        );
        let unknown = ProxyConfig::parse(
            "address: x\nauth: { sidecar: { role: app } }\npool_mod: transaction\n",
        )
        .unwrap_err();
        assert!(unknown.contains("pool_mod"), "{unknown}");
    }
}
