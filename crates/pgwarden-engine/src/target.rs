//! A target database reached through one connection definition: the parsed connection
//! settings and a small pool of administrative connections.

use crate::error::{EngineError, describe};
use crate::iam::IamPassword;
use crate::tls::{Transport, take_tls_params};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use pgwarden_core::{AdminAuth, ConnectionDef};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::{Config, NoTls};

/// Most administrative connections pgwarden keeps open to one target.
const POOL_SIZE: usize = 16;
/// How long to wait for a connection before calling the target unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a target database is, as clients need it (no credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (or Unix socket directory).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// Every `host:port` of a URL naming several (primary and replicas), in its order; empty
    /// for one host.
    pub hosts: Vec<String>,
}

/// A target database and the administrative connections pgwarden uses on it.
pub struct Target {
    pub(crate) name: String,
    pub(crate) config: Config,
    /// How administrative connections are opened.
    connector: AdminConnect,
    pub(crate) pool: Pool,
    /// Preset group setups already applied since start-up (group, preset, schemas).
    pub(crate) groups_ready: tokio::sync::Mutex<HashSet<String>>,
}

/// Parses `def.connection_url`, filling `{{username}}`/`{{password}}` (percent-encoded) and
/// any missing user or password from the definition.
fn parse_config(def: &ConnectionDef) -> Result<(Config, Transport), EngineError> {
    let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let invalid = |reason: String| EngineError::InvalidUrl {
        connection: def.name.clone(),
        reason,
    };
    let url = def
        .connection_url
        .trim()
        .replace("{{username}}", &encode(&def.username))
        .replace("{{password}}", &encode(def.password.expose_secret()));
    let (url, transport) = take_tls_params(&url).map_err(invalid)?;
    let mut config: Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| EngineError::InvalidUrl {
                connection: def.name.clone(),
                reason: describe(&e),
            })?;
    if config.get_user().is_none() {
        config.user(&def.username);
    }
    if config.get_password().is_none() && def.auth == AdminAuth::Password {
        config.password(def.password.expose_secret());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("pgwarden");
    if config.get_hosts().len() > 1 {
        // Primary and replicas: statements go to whichever host takes writes now, found
        // again on every new connection after a failover.
        config.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    config.ssl_mode(match transport {
        Transport::Plain => tokio_postgres::config::SslMode::Disable,
        Transport::Tls(_) => tokio_postgres::config::SslMode::Require,
    });
    Ok((config, transport))
}

/// Opens administrative connections: over the target's transport, with a fresh RDS IAM token
/// as the password when the target uses one, and with the next password too while the
/// administrator's password is being rotated.
#[derive(Clone)]
struct AdminConnect {
    transport: Transport,
    /// The token source when the administrator signs in with RDS IAM (`auth: rds_iam`).
    iam: Option<Arc<IamPassword>>,
    /// The administrator's password since `rotate-root` changed it (the configured one until
    /// then), and the next one to try while a rotation runs.
    passwords: Arc<parking_lot::Mutex<RotatedPasswords>>,
}

/// How many other passwords a connection refused during `rotate-root` tries before failing.
const MAX_PASSWORD_RETRIES: usize = 4;

/// The passwords a `rotate-root` gives a target while it runs and after.
#[derive(Default)]
struct RotatedPasswords {
    /// Replaces the configured password.
    current: Option<SecretString>,
    /// Tried when the current one is refused.
    next: Option<SecretString>,
    /// Counts the changes to the two, so that a refused connection knows to look again.
    changes: u64,
}

impl AdminConnect {
    /// Connects with `config` (its password, the one `rotate-root` set, or the IAM token),
    /// then with the other known passwords if it is refused while a rotation runs.
    async fn open(
        &self,
        config: &Config,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        let mut config = config.clone();
        if let Some(iam) = &self.iam {
            iam.apply(&mut config);
        }
        let mut seen = {
            let passwords = self.passwords.lock();
            if let Some(current) = &passwords.current {
                config.password(current.expose_secret());
            }
            passwords.changes
        };
        let mut outcome = self.open_once(&config).await;
        // Refused: a rotation may have changed the password while this connection was being
        // opened (perhaps more than once, and the server may have checked it just before the
        // change). Try the one being set, then the one in force: one that was not just
        // refused, or either if they changed meanwhile; a few rounds at most.
        for _ in 0..MAX_PASSWORD_RETRIES {
            let refused = matches!(&outcome, Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD));
            if !refused {
                break;
            }
            let just_refused = config.get_password().map(<[u8]>::to_vec);
            let another = {
                let passwords = self.passwords.lock();
                let changed = std::mem::replace(&mut seen, passwords.changes) != passwords.changes;
                [&passwords.next, &passwords.current]
                    .into_iter()
                    .flatten()
                    .find(|p| {
                        changed || just_refused.as_deref() != Some(p.expose_secret().as_bytes())
                    })
                    .cloned()
            };
            let Some(password) = another else { break };
            config.password(password.expose_secret());
            outcome = self.open_once(&config).await;
        }
        outcome
    }

    async fn open_once(
        &self,
        config: &Config,
    ) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error> {
        match &self.transport {
            Transport::Plain => connect_with(config, NoTls).await,
            Transport::Tls(tls) => connect_with(config, tls.clone()).await,
        }
    }
}

impl deadpool_postgres::Connect for AdminConnect {
    fn connect(
        &self,
        config: &Config,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<
                        (tokio_postgres::Client, JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let config = config.clone();
        Box::pin(async move {
            // The pool's connections run the fast revocation: its statements are prepared
            // once (the separate connections, to a standby or another database, never do).
            let (client, task) = self.open(&config).await?;
            client
                .batch_execute(&crate::users::prepare_revocation())
                .await?;
            Ok((client, task))
        })
    }
}

/// A pool of connections with `config` through `connect`, for connection `name`.
fn build_pool(name: &str, config: Config, connect: &AdminConnect) -> Result<Pool, EngineError> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = Manager::from_connect(config, connect.clone(), manager_config);
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT.saturating_mul(2)))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| EngineError::InvalidUrl {
            connection: name.to_string(),
            reason: e.to_string(),
        })
}

/// Connects with `tls` and drives the connection in the background.
async fn connect_with<T>(
    config: &Config,
    tls: T,
) -> Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    let task = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "administrative connection ended");
        }
    });
    Ok((client, task))
}

impl Target {
    /// Prepares a target from its definition; connects lazily.
    pub fn new(def: &ConnectionDef) -> Result<Target, EngineError> {
        let (config, transport) = parse_config(def)?;
        let iam = match &def.auth {
            AdminAuth::Password => None,
            AdminAuth::RdsIam { region } => Some(Arc::new(IamPassword::new(
                def,
                region.as_deref(),
                &config,
                matches!(transport, Transport::Tls(_)),
            )?)),
        };
        let connector = AdminConnect {
            transport,
            iam,
            passwords: Default::default(),
        };
        let pool = build_pool(&def.name, config.clone(), &connector)?;
        Ok(Target {
            name: def.name.clone(),
            config,
            connector,
            pool,
            groups_ready: Default::default(),
        })
    }

    /// The pool of connections to this database (for the state store, which uses a target's
    /// URL and TLS handling for its own database).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// A second pool to this database whose sessions run with `setting` (`name=value`, as
    /// libpq's `options=-c name=value`).
    pub fn pool_with(&self, setting: &str) -> Result<Pool, EngineError> {
        let mut config = self.config.clone();
        let options = match config.get_options() {
            Some(existing) => format!("{existing} -c {setting}"),
            None => format!("-c {setting}"),
        };
        config.options(&options);
        build_pool(&self.name, config, &self.connector)
    }

    /// Where clients reach this database: host, port and database name from the connection
    /// URL, and every host when it names several.
    pub fn endpoint(&self) -> Endpoint {
        let hosts = self.hosts();
        let (host, port) = hosts
            .first()
            .cloned()
            .unwrap_or_else(|| ("localhost".to_string(), 5432));
        Endpoint {
            host,
            port,
            database: self.config.get_dbname().unwrap_or_default().to_string(),
            hosts: if hosts.len() > 1 {
                hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The cluster this connection reaches and whom as: its administrator and its hosts.
    /// Connections with the same one see the same sessions with the same rights, whatever
    /// their database.
    pub fn cluster(&self) -> String {
        format!(
            "{}@{}",
            self.config.get_user().unwrap_or_default(),
            self.server()
        )
    }

    /// The server this connection reaches, as its sorted `host:port` list: every connection
    /// with the same one shares its roles, whatever their database or administrator.
    pub fn server(&self) -> String {
        let mut hosts: Vec<String> = self
            .hosts()
            .iter()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect();
        hosts.sort();
        hosts.join(",")
    }

    /// Every host of the URL with its port (one port may serve them all), in order.
    pub(crate) fn hosts(&self) -> Vec<(String, u16)> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let name = match host {
                    tokio_postgres::config::Host::Tcp(host) => host.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                };
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                (name, port)
            })
            .collect()
    }

    /// A separate administrative connection to one host of a multi-host URL, whatever its role.
    pub(crate) async fn connect_to_host(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio_postgres::Client, EngineError> {
        let mut config = Config::new();
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.config.get_password() {
            config.password(password);
        }
        config
            .dbname(self.config.get_dbname().unwrap_or_default())
            .host(host)
            .port(port)
            .application_name("pgwarden")
            .ssl_mode(self.config.get_ssl_mode())
            .connect_timeout(CONNECT_TIMEOUT);
        self.connect_separately(&config, format!("host {host}:{port}"))
            .await
    }

    /// A connection with `config` over this target's transport, outside the pool; `what`
    /// names it in errors.
    async fn connect_separately(
        &self,
        config: &Config,
        what: String,
    ) -> Result<tokio_postgres::Client, EngineError> {
        self.refresh_token().await?;
        self.connector
            .open(config)
            .await
            .map(|(client, _)| client)
            .map_err(|e| EngineError::Unreachable {
                connection: format!("{} ({what})", self.name),
                reason: self.connect_failure(&e),
            })
    }

    /// Why connecting failed, with what to check when an RDS IAM token was refused.
    fn connect_failure(&self, error: &tokio_postgres::Error) -> String {
        use tokio_postgres::error::SqlState;
        let reason = describe(error);
        let refused = error.code().is_some_and(|code| {
            *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *code == SqlState::INVALID_PASSWORD
        });
        match &self.connector.iam {
            Some(iam) if refused => {
                iam.forget();
                format!("{reason}; {}", crate::iam::REFUSED_HINT)
            }
            _ => reason,
        }
    }

    /// While `password` is set, a connection refused with the current password tries it too:
    /// the administrator's next password, from just before `ALTER ROLE` sets it until
    /// [`Target::use_password`] makes it the current one, so no connection fails in between.
    pub fn try_next_password(&self, password: Option<SecretString>) {
        let mut passwords = self.connector.passwords.lock();
        passwords.next = password;
        passwords.changes = passwords.changes.wrapping_add(1);
    }

    /// Signs in with `password` from now on (the administrator's password was changed):
    /// every holder of this target, however long it has held it, uses the new one.
    pub fn use_password(&self, password: SecretString) {
        let mut passwords = self.connector.passwords.lock();
        passwords.current = Some(password);
        passwords.next = None;
        passwords.changes = passwords.changes.wrapping_add(1);
    }

    /// Signs a new RDS IAM token when the target uses one and the last is due for renewal, so
    /// connections opened next carry a valid one.
    async fn refresh_token(&self) -> Result<(), EngineError> {
        if let Some(iam) = &self.connector.iam {
            iam.token().await?;
        }
        Ok(())
    }

    /// An administrative connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, EngineError> {
        self.refresh_token().await?;
        self.pool.get().await.map_err(|e| EngineError::Unreachable {
            connection: self.name.clone(),
            reason: match &e {
                deadpool_postgres::PoolError::Backend(inner) => self.connect_failure(inner),
                other => pgwarden_core::chain(other),
            },
        })
    }

    /// A separate administrative connection to another database on the same server.
    pub(crate) async fn connect_to(
        &self,
        database: &str,
    ) -> Result<tokio_postgres::Client, EngineError> {
        let mut config = self.config.clone();
        config.dbname(database);
        self.connect_separately(&config, format!("database {database:?}"))
            .await
    }

    /// Connects once and runs `SELECT 1`, to check a definition when it is written.
    pub async fn verify(&self) -> Result<(), EngineError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(crate::error::sql(format!(
                "verifying connection {:?}",
                self.name
            )))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn def(url: &str) -> ConnectionDef {
        ConnectionDef {
            name: "appdb".into(),
            connection_url: url.into(),
            username: "admin".into(),
            password: SecretString::from("p@ss:/word"),
            allowed_roles: vec![],
            verify_connection: false,
            auth: Default::default(),
        }
    }

    #[test]
    fn placeholders_are_filled_and_encoded() {
        let (config, _) = parse_config(&def(
            "postgresql://{{username}}:{{password}}@db.example:6432/app?sslmode=disable",
        ))
        .unwrap();
        assert_eq!(config.get_user(), Some("admin"));
        assert_eq!(config.get_password(), Some(&b"p@ss:/word"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(config.get_ports(), &[6432]);
        let target = Target::new(&def(
            "postgresql://{{username}}:{{password}}@db.example:6432/app",
        ))
        .unwrap();
        assert_eq!(
            target.endpoint(),
            Endpoint {
                host: "db.example".into(),
                port: 6432,
                database: "app".into(),
                hosts: Vec::new(),
            }
        );
        // Several hosts: each with its port (one port may serve them all), writes go to the
        // host that takes them.
        let target = Target::new(&def(
            "postgresql://{{username}}:{{password}}@a.example,b.example:6433/app",
        ))
        .unwrap();
        assert_eq!(
            target.endpoint().hosts,
            vec!["a.example:5432".to_string(), "b.example:6433".to_string()]
        );
        assert_eq!(
            target.config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn missing_credentials_come_from_the_definition() {
        let (config, _) = parse_config(&def("postgresql://db.example/app")).unwrap();
        assert_eq!(config.get_user(), Some("admin"));
        assert_eq!(config.get_password(), Some(&b"p@ss:/word"[..]));
    }

    #[test]
    fn bad_urls_are_named() {
        let err = parse_config(&def("postgresql://h/db?frobnicate=1"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("connection \"appdb\": invalid connection_url: "),
            "{err}"
        );
    }

    #[test]
    fn rds_iam_needs_one_host_and_tls_unless_plaintext_is_asked_for() {
        let iam = |url: &str| {
            let mut def = def(url);
            def.auth = AdminAuth::RdsIam {
                region: Some("eu-west-1".into()),
            };
            Target::new(&def).err().map(|e| e.to_string())
        };
        assert_eq!(
            iam("postgresql://a.example,b.example/app?sslmode=require"),
            Some(
                "connection \"appdb\": invalid connection_url: auth rds_iam signs a token for \
                 one host name, and the URL names 2; use the cluster's endpoint"
                    .into()
            )
        );
        assert_eq!(
            iam("postgresql://db.example/app"),
            Some(
                "connection \"appdb\": invalid connection_url: auth rds_iam sends its token as \
                 a password: add sslmode=verify-full (or sslmode=disable to send it in plaintext \
                 on purpose)"
                    .into()
            )
        );
        assert_eq!(iam("postgresql://db.example/app?sslmode=disable"), None);
        assert_eq!(iam("postgresql://db.example/app?sslmode=verify-full"), None);
        // No password of the definition is used: the token fills it when connecting.
        let mut def = def("postgresql://db.example/app?sslmode=disable");
        def.auth = AdminAuth::RdsIam { region: None };
        let (config, _) = parse_config(&def).unwrap();
        assert_eq!(config.get_password(), None);
    }
}
